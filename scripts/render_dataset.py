from tsmflow.data.render import render_split
from tsmflow.workflow import setup

setup(snakemake)
render_split(snakemake.output.split, snakemake.params.n, snakemake.params.seed,
             snakemake.params.resolution, snakemake.params.data)
