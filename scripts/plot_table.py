from tsmflow.reporting.plots import category_bars, fid_bars
from tsmflow.reporting.tables import load_run_metrics
from tsmflow.workflow import setup

setup(snakemake)
decl = snakemake.params.decl
metrics = load_run_metrics(dict(snakemake.input.items()))
category_bars(decl, metrics, snakemake.output.bars)
fid_bars(decl, metrics, snakemake.output.fid)
