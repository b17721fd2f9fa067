# Helpers of the real DAG (a backbone spec, config/backbones/*.yaml, is the config): validation, paths,
# wildcard constraints, resources. What the spec trains comes from tsmflow.backbone_spec (no torch: parsing
# stays light).

import os
import sys
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")

validate(config, schema="../config/backbone_schema.yaml")

# scripts import the library from src/ whether or not it is pip-installed (conda envs, cluster nodes)
_pythonpath = [str(Path(workflow.basedir) / "src"), *filter(None, [os.getenv("PYTHONPATH")])]
os.environ.update(PYTHONPATH=os.pathsep.join(_pythonpath))
sys.path.insert(0, _pythonpath[0])

from tsmflow import backbone_spec  # noqa: E402
from tsmflow.data.adapters import check_data_paths  # noqa: E402

RESULTS = backbone_spec.results_dir(config)
EXPERT_SETS = backbone_spec.expert_sets(config)
RUNS = backbone_spec.runs(config)
TABLE = backbone_spec.table_decl(config)
backbone_spec.train_config(config)  # a batch that does not split into grad_accum micro-batches fails here
if config["fid"]["n_samples"] > (config["fid"].get("n_reference") or config["fid"]["n_samples"]):
    raise ValueError(f"config key fid.n_samples={config['fid']['n_samples']} exceeds fid.n_reference")
check_data_paths(config["data"])  # placeholder paths fail here, in a dry run too
INCEPTION_WEIGHTS = config["fid"].get("inception_weights")
FID_SAMPLING = {k: v for k, v in config["fid"].items() if k != "inception_weights"}  # what sampling reads
if INCEPTION_WEIGHTS and not os.path.isfile(INCEPTION_WEIGHTS):
    raise ValueError(f"config key fid.inception_weights: {INCEPTION_WEIGHTS} is not a file")
if not INCEPTION_WEIGHTS and config.get("local_files_only"):
    raise ValueError("config key fid.inception_weights: an offline spec (local_files_only: true) needs a local copy "
                     "of clean-fid's Inception weights, inception-2015-12-05.pt (clean-fid would download it)")

# what loading the pipeline needs (sampling, encoding): other keys changing must not rerun those jobs
LOAD_KEYS = ["family", "pretrained", "revision", "variant", "dtype", "local_files_only", "resolution"]
LOAD_SPEC = {k: config[k] for k in LOAD_KEYS if k in config}
# what training needs: everything but the data paths (their outputs carry them) and the evaluation
TRAIN_SPEC = {k: v for k, v in config.items() if k not in ("data", "fid", "gpus_per_job", "accelerate_launch")}


wildcard_constraints:
    expert_set="|".join(EXPERT_SETS),
    interval=r"\d+",
    run="|".join(RUNS),


def get_train_data():
    return {"latents": f"{RESULTS}/data/train_latents.safetensors", "labels": f"{RESULTS}/data/train_labels.jsonl"}


def get_coco_reference():
    return f"{RESULTS}/coco_reference"


def get_coco_reference_stats():
    return f"{RESULTS}/coco_reference_inception.npz"


def get_expert_dir(expert_set, interval):
    return backbone_spec.expert_dir(config, expert_set, interval)


def get_run_path(run, name):
    return backbone_spec.run_path(config, run, name)


def get_table(ext):
    return f"{RESULTS}/tables/post_pretraining.{ext}"


def get_expert_inputs(wildcards):
    n = EXPERT_SETS[wildcards.expert_set].n
    if int(wildcards.interval) >= n:
        raise ValueError(f"expert set {wildcards.expert_set} has intervals 0..{n - 1}, not {wildcards.interval}")
    return get_train_data()


def _run_experts(run):
    return backbone_spec.run_inputs(config, run)["experts"]


def get_router_inputs(wildcards):
    if RUNS[wildcards.run]["method"] != "tsm2":
        raise ValueError(f"run {wildcards.run!r} is a {RUNS[wildcards.run]['method']} run; only tsm2 has a router")
    return {**get_train_data(), "experts": _run_experts(wildcards.run)}


def get_run_model_inputs(wildcards):
    """What a run's sampler loads besides the pipeline: its experts and router (named as runs.py expects)."""
    return backbone_spec.run_inputs(config, wildcards.run)


def get_run_trained_dirs(run):
    """Every directory a run trained (each with a stats.json): its trainable parameters."""
    router = backbone_spec.run_inputs(config, run).get("router")
    return _run_experts(run) + ([router] if router else [])


def get_log(rule, *wildcards):
    return f"{RESULTS}/logs/{rule}/{'_'.join(wildcards) or rule}.log"


def get_benchmark(rule, *wildcards):
    return f"{RESULTS}/benchmarks/{rule}/{'_'.join(wildcards) or rule}.tsv"


def gpu_resources():
    """Resources of a GPU job; the slurm profile turns `gpu` into a GPU request."""
    return {"gpu": config.get("gpus_per_job", 1)}


def get_final_outputs():
    return [get_table(ext) for ext in ("csv", "md", "tex")]
