from tsmflow.reporting.tables import build_table, load_run_metrics, write_table
from tsmflow.workflow import setup

setup(snakemake)
metrics = load_run_metrics(dict(snakemake.input.items()))
df = build_table(snakemake.params.decl, metrics)
write_table(df, snakemake.params.decl, snakemake.output.csv, snakemake.output.md, snakemake.output.tex)
print(df.to_markdown(index=False))
