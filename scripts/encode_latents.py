from tsmflow.training.vae import encode_latents
from tsmflow.workflow import setup

setup(snakemake)
encode_latents(snakemake.input.data, snakemake.input.vae, snakemake.output.latents)
