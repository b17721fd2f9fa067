"""A paper model's post-pretraining data: VAE latents and captions, cached once (`data.image_text`)."""
from tsmflow.data.image_text import encode_image_text
from tsmflow.workflow import setup

setup(snakemake)
p, o = snakemake.params, snakemake.output
print(encode_image_text(p.spec, p.data, o.latents, o.data))
