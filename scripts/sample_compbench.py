"""CompBench-mini images of a run: <out>/<category>/<prompt>_<6-digit idx>.png, fixed seeds."""
from pathlib import Path

from tsmflow.runs import load_run_backbone
from tsmflow.sampling.folders import compbench_folder
from tsmflow.workflow import setup

setup(snakemake)
cfg, ev = snakemake.params.sampling, snakemake.params.evaluation
bb = load_run_backbone(snakemake.params.run, snakemake.input)
files = {Path(f).stem.removesuffix("_val"): f for f in snakemake.input.prompts}
compbench_folder(bb, files, snakemake.output.images, ev["images_per_prompt"], ev["seed"], cfg["steps"],
                 cfg["guidance_scale"], solver=cfg["solver"])
