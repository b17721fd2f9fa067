"""The claims page: every claim declared in config, the paper's numbers, ours over seeds, and a verdict."""
from tsmflow.reporting.claims import build_claims, write_claims
from tsmflow.reporting.tables import load_run_metrics
from tsmflow.workflow import setup

setup(snakemake)
df = build_claims(snakemake.params.claims, load_run_metrics(dict(snakemake.input.items())))
write_claims(df, snakemake.output.csv, snakemake.output.md)
print(df.to_markdown(index=False))
