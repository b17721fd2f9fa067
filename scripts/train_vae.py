from tsmflow.training.vae import train_vae
from tsmflow.workflow import setup

setup(snakemake)
print(train_vae(snakemake.input.data, snakemake.params.cfg, snakemake.output.model))
