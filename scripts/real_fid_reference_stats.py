"""Real DAG: Inception statistics of the COCO reference folder, computed once for every run's FID."""
from tsmflow.evaluation.fid import folder_stats, save_stats
from tsmflow.workflow import setup

setup(snakemake)
mu, sigma, n = folder_stats(None, snakemake.input.reference, feature_space="inception",
                           inception_weights=snakemake.params.inception_weights)
save_stats(snakemake.output.stats, mu, sigma, n, feature_space="inception")
print(f"reference stats (inception): {n} images")
