from tsmflow.evaluation.evaluator import train_evaluator
from tsmflow.workflow import setup

setup(snakemake)
print(train_evaluator(snakemake.config["evaluator"], snakemake.config["resolution"], snakemake.output.model))
