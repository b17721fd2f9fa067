# Helpers shared by all rules: config validation, paths, wildcard constraints, resources.
# Paths come from the functions here, never from string concatenation in rules.

import os
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")

validate(config, schema="../config/schema.yaml")
if abs(sum(config["data"]["n_objects_p"]) - 1) > 1e-6:
    raise ValueError("config key data.n_objects_p must sum to 1, got " f"{config['data']['n_objects_p']}")

# scripts import the library from src/ whether or not it is pip-installed (conda envs, cluster nodes)
_pythonpath = [str(Path(workflow.basedir) / "src"), *filter(None, [os.getenv("PYTHONPATH")])]
os.environ.update(PYTHONPATH=os.pathsep.join(_pythonpath))

RESULTS = "results"
SPLITS = ["train", "reference"]
BACKBONES = list(config["backbones"])
CATEGORIES = ["color", "shape", "texture", "spatial", "non_spatial", "complex"]


wildcard_constraints:
    split="|".join(SPLITS),
    backbone="|".join(BACKBONES),


def get_split_dir(split):
    return f"{RESULTS}/data/{split}"


def get_compbench_files():
    return {f"{c}_{s}": f"{RESULTS}/data/compbench/{c}_{s}.txt" for c in CATEGORIES for s in ("train", "val")}


def get_model_dir(name):
    return f"{RESULTS}/models/{name}"


def get_base_dir(backbone):
    return f"{RESULTS}/models/base/{backbone}"


def get_log(rule, *wildcards):
    return f"{RESULTS}/logs/{rule}/{'_'.join(wildcards) or rule}.log"


def get_benchmark(rule, *wildcards):
    return f"{RESULTS}/benchmarks/{rule}/{'_'.join(wildcards) or rule}.tsv"


def gpu_resources():
    """Resources of a GPU job; the slurm profile turns `gpu` into a GPU request."""
    return {"gpu": config["gpus_per_job"]}


def get_final_outputs():
    return [
        f"{RESULTS}/foundation.md",
        f"{RESULTS}/data/coverage.md",
        f"{RESULTS}/plots/training_curves.png",
        f"{RESULTS}/vae/reconstruction.png",
        *[f"{RESULTS}/samples/base/{b}.png" for b in BACKBONES],
    ]
