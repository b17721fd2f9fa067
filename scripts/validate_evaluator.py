"""Validate the evaluator on held-out rendered scenes; the report is written whether it passes or not."""
from pathlib import Path

from tsmflow.data.io import read_prompts, write_json, write_lines
from tsmflow.evaluation.evaluator import load_evaluator
from tsmflow.evaluation.validation import format_validation_markdown, validate_evaluator
from tsmflow.workflow import setup

setup(snakemake)
prompts = {Path(f).stem.removesuffix("_val"): read_prompts(f) for f in snakemake.input.prompts}
report = validate_evaluator(load_evaluator(snakemake.input.model), snakemake.config["evaluator"],
                            snakemake.config["resolution"], prompts, seed=snakemake.config["evaluator"]["validation"]["seed"])
write_lines(snakemake.output.report, format_validation_markdown(report).splitlines())
write_json(snakemake.output.status, report)
print("evaluator validation:", "PASSED" if report["passed"] else "FAILED")
