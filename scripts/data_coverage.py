from pathlib import Path

from tsmflow.data.io import read_labels, read_prompts, write_lines
from tsmflow.data.render import coverage_report
from tsmflow.workflow import setup

setup(snakemake)
prompts = {Path(p).name: read_prompts(p) for p in snakemake.input.prompts}
text = coverage_report(read_labels(f"{snakemake.input.data}/labels.jsonl"), prompts, snakemake.params.rare_pairs)
write_lines(snakemake.output[0], text.splitlines())
