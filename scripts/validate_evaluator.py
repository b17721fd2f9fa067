"""Validate the evaluator on held-out rendered scenes and their VAE reconstructions; the report is
written whether it passes or not."""
from pathlib import Path

from tsmflow.data.io import read_prompts, write_json, write_lines
from tsmflow.evaluation.evaluator import load_evaluator
from tsmflow.evaluation.validation import format_validation_markdown, validate_evaluator
from tsmflow.training.vae import load_vae, reconstruct
from tsmflow.workflow import setup

setup(snakemake)
p = snakemake.params
prompts = {Path(f).stem.removesuffix("_val"): read_prompts(f) for f in snakemake.input.prompts}
vae = load_vae(snakemake.input.vae)
report = validate_evaluator(load_evaluator(snakemake.input.model), p.cfg, p.resolution, prompts,
                            seed=p.cfg["validation"]["seed"], reconstruct=lambda x: reconstruct(vae, x),
                            junk_threshold=p.junk_threshold)
write_lines(snakemake.output.report, format_validation_markdown(report).splitlines())
write_json(snakemake.output.status, report)
print("evaluator validation:", "PASSED" if report["passed"] else "FAILED")
for f in report["failures"]:
    print("  -", f)
