"""Reference statistics for FID, computed once per dataset and feature space."""
from tsmflow.evaluation.evaluator import load_evaluator
from tsmflow.evaluation.fid import folder_stats, save_stats
from tsmflow.workflow import setup

setup(snakemake)
space = snakemake.wildcards.feature_space
model = load_evaluator(snakemake.input.model) if space in ("shapes", "patch") else None
mu, sigma, n = folder_stats(model, f"{snakemake.input.data}/images", feature_space=space)
save_stats(snakemake.output.stats, mu, sigma, n, feature_space=space)
print(f"reference stats ({space}): {n} images")
