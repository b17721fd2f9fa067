from tsmflow.data.io import write_json
from tsmflow.reporting.plots import image_pairs
from tsmflow.training.vae import evaluate_vae
from tsmflow.workflow import setup

setup(snakemake)
metrics, images, recs = evaluate_vae(snakemake.input.data, snakemake.input.vae, snakemake.params.eval_n)
print(metrics)
write_json(snakemake.output.metrics, metrics)
image_pairs(images, recs, snakemake.output.figure, n=min(12, len(images)))
