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


RUNS = config["runs"]
TABLES = config["tables"]
for _run, _spec in RUNS.items():
    if _spec["backbone"] not in BACKBONES:
        raise ValueError(f"config key runs.{_run}.backbone: {_spec['backbone']!r} is not in backbones")
for _table, _decl in TABLES.items():
    for _row in _decl["rows"]:
        for _r in _row.get("runs") or [_row["run"]]:
            if _r not in RUNS:
                raise ValueError(f"config key tables.{_table}.rows: run {_r!r} is not declared under runs")


wildcard_constraints:
    split="|".join(SPLITS),
    backbone="|".join(BACKBONES),
    run="|".join(RUNS),
    table="|".join(TABLES),
    feature_space="shapes|inception",


def get_split_dir(split):
    return f"{RESULTS}/data/{split}"


def get_compbench_files():
    return {f"{c}_{s}": f"{RESULTS}/data/compbench/{c}_{s}.txt" for c in CATEGORIES for s in ("train", "val")}


def get_model_dir(name):
    return f"{RESULTS}/models/{name}"


def get_base_dir(backbone):
    return f"{RESULTS}/models/base/{backbone}"


def get_run_path(run, name):
    return f"{RESULTS}/runs/{run}/{name}"


def get_run_model_inputs(wildcards):
    """What a run's sampler loads: the base denoiser, or (later stages) its adapters too."""
    spec = RUNS[wildcards.run]
    inputs = {"vae": get_model_dir("vae"), "text_encoder": get_model_dir("text_encoder")}
    if spec["method"] == "base":
        inputs["model"] = get_base_dir(spec["backbone"])
    else:
        raise ValueError(f"config key runs.{wildcards.run}.method: unknown method {spec['method']!r}")
    return inputs


def get_fid_reference():
    return f"{RESULTS}/evaluator/fid_reference_{config['evaluation']['fid']['feature_space']}.npz"


def get_table_runs(table):
    return list(dict.fromkeys(r for row in TABLES[table]["rows"] for r in (row.get("runs") or [row["run"]])))


def get_table_metrics(wildcards):
    return {run: get_run_path(run, "metrics.json") for run in get_table_runs(wildcards.table)}


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
        f"{RESULTS}/evaluator/validation.md",
        *[f"{RESULTS}/tables/{t}.{ext}" for t in TABLES for ext in ("csv", "md", "tex")],
        *[f"{RESULTS}/plots/{t}_{p}.png" for t in TABLES for p in ("categories", "fid")],
        *[get_run_path(r, "grid.png") for t in TABLES for r in get_table_runs(t)],
        f"{RESULTS}/data/coverage.md",
        f"{RESULTS}/plots/training_curves.png",
        f"{RESULTS}/vae/reconstruction.png",
        *[f"{RESULTS}/samples/base/{b}.png" for b in BACKBONES],
    ]
