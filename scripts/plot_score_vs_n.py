from tsmflow.reporting.plots import score_vs_n
from tsmflow.reporting.tables import load_run_metrics
from tsmflow.workflow import setup

setup(snakemake)
score_vs_n(snakemake.params.decl, load_run_metrics(dict(snakemake.input.items())), snakemake.output.plot)
