from pathlib import Path

from tsmflow.data.render import write_compbench
from tsmflow.workflow import setup

setup(snakemake)
out_dir = Path(snakemake.output[0]).parent
write_compbench(out_dir, snakemake.params.compbench, snakemake.params.data)
