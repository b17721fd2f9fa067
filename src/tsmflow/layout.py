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
