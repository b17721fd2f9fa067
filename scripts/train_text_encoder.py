from tsmflow.training.text_encoder import train_text_encoder
from tsmflow.workflow import setup

setup(snakemake)
print(train_text_encoder(snakemake.input.data, snakemake.params.cfg, snakemake.output.model))
