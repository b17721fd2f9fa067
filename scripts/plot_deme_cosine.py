"""DeMe supplement Fig. 1: cosine similarity between the range models' task vectors (written by the search)."""
import pandas as pd

from tsmflow.reporting.plots import cosine_heatmap
from tsmflow.workflow import setup

setup(snakemake)
cos = pd.read_csv(f"{snakemake.input.merged}/cosine.csv", index_col=0)
cosine_heatmap(cos, snakemake.output.plot, f"DeMe task vectors, {snakemake.wildcards.deme_set}")
