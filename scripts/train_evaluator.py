from tsmflow.evaluation.evaluator import train_evaluator
from tsmflow.workflow import setup

setup(snakemake)
print(train_evaluator(snakemake.params.cfg, snakemake.params.resolution, snakemake.output.model,
                      vae_dir=snakemake.input.vae))
