"""A table's plots: CompBench-mini bars per category (output `bars`) or FID bars (output `fid`)."""
from tsmflow.reporting.plots import category_bars, fid_bars
from tsmflow.reporting.tables import load_run_metrics
from tsmflow.workflow import setup

setup(snakemake)
decl = snakemake.params.decl
metrics = load_run_metrics(dict(snakemake.input.items()))
if "bars" in snakemake.output.keys():
    category_bars(decl, metrics, snakemake.output.bars)
if "fid" in snakemake.output.keys():
    fid_bars(decl, metrics, snakemake.output.fid)
