"""Where the workflow writes what it trains, relative to its working directory (torch-free: the Snakefile reads it).

One layout at every scale: a real backbone's experts and runs sit beside the miniature's, named by the backbone.
"""
RESULTS = "results"


def model_dir(name: str) -> str:
    return f"{RESULTS}/models/{name}"


def base_dir(backbone: str) -> str:
    return f"{RESULTS}/models/base/{backbone}"


def expert_dir(expert_set: str, interval) -> str:
    return f"{RESULTS}/experts/{expert_set}/expert{interval}"


def run_path(run: str, name: str) -> str:
    return f"{RESULTS}/runs/{run}/{name}"


def finetune_dir(name: str) -> str:
    """A further-training job's output: the denoiser (full, scratch) and/or its DMP patch."""
    return f"{RESULTS}/finetune/{name}"


def snapshot_dir(job_dir, step: int) -> str:
    """A snapshot a training job (finetune, distill_student) saved at `step`, inside its output."""
    return f"{job_dir}/step{step}"


def deme_range_dir(deme_set: str, i) -> str:
    return f"{RESULTS}/deme/{deme_set}/range{i}"


def deme_merged_dir(deme_set: str) -> str:
    return f"{RESULTS}/deme/{deme_set}/merged"
