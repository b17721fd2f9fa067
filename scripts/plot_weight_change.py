"""WaDi Fig. 1 for a table's distilled students: per-layer norm and direction change against the teacher."""
import pandas as pd

from tsmflow.reporting.plots import weight_change_layers
from tsmflow.workflow import setup

setup(snakemake)
labels = snakemake.params.labels
changes = {labels[run]: pd.read_csv(f"{d}/weight_change.csv") for run, d in snakemake.input.items()}
weight_change_layers(changes, snakemake.output.plot, snakemake.params.title)
