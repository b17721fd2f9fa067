"""GORS data: base-model images for the CompBench-mini training prompts, scored and filtered."""
from pathlib import Path

from tsmflow.data.prompt_images import generate_prompt_images
from tsmflow.evaluation.evaluator import load_evaluator
from tsmflow.evaluation.scoring import check_validated
from tsmflow.models.backbone import load_mini_backbone
from tsmflow.workflow import setup

setup(snakemake)
p = snakemake.params
check_validated(snakemake.input.validation, p.require_validated)
bb = load_mini_backbone(snakemake.wildcards.backbone, snakemake.input.model, snakemake.input.vae,
                        snakemake.input.text_encoder)
files = {Path(f).stem.removesuffix("_train"): f for f in snakemake.input.prompts}
print(generate_prompt_images(bb, load_evaluator(snakemake.input.evaluator), files, p.gors, p.sampling,
                             p.resolution, snakemake.output.data))
