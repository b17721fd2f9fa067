"""The GORS images' latents: the miniature's VAE, or a paper model's own."""
from tsmflow.data.image_text import encode_labelled_images
from tsmflow.training.vae import encode_latents
from tsmflow.workflow import setup

setup(snakemake)
spec = snakemake.params.backbone
if spec["family"] == "mini":
    encode_latents(snakemake.input.data, snakemake.input.vae, snakemake.output.latents)
else:
    print(encode_labelled_images(spec, snakemake.input.data, snakemake.output.latents))
