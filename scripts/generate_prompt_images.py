"""GORS data: base-model images for the CompBench training prompts, scored and filtered (T2I-CompBench's recipe)."""
from pathlib import Path

from tsmflow.data.prompt_images import generate_prompt_images
from tsmflow.evaluation.scoring import load_compbench_scorer
from tsmflow.models.backbone import load_backbone
from tsmflow.workflow import setup

setup(snakemake)
p = snakemake.params
bb = load_backbone(p.backbone, snakemake.input)
# the miniature's evaluator is refused here if it failed validation, before any sampling
scorer, _ = load_compbench_scorer(p.scorer, snakemake.input, p.require_validated, device=bb.device)
files = {Path(f).stem.removesuffix("_train"): f for f in snakemake.input.prompts}
print(generate_prompt_images(bb, scorer, files, p.gors, p.sampling, p.resolution, snakemake.output.data))
