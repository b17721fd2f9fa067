"""Real DAG: cache the VAE latents and captions of the post-pretraining image-text data."""
from tsmflow.realscale import encode_image_text
from tsmflow.workflow import setup

setup(snakemake)
p, o = snakemake.params, snakemake.output
print(encode_image_text(p.spec, p.data, o.latents, o.labels))
