"""Reference statistics for FID (and the features for precision/recall), once per dataset and feature space."""
import numpy as np

from tsmflow.data.io import DataError
from tsmflow.evaluation.evaluator import load_evaluator
from tsmflow.evaluation.fid import folder_features, save_stats
from tsmflow.workflow import setup

setup(snakemake)
space = snakemake.wildcards.feature_space
model = load_evaluator(snakemake.input.model) if space in ("shapes", "patch") else None
feats = folder_features(model, f"{snakemake.input.data}/images", feature_space=space,
                        inception_weights=snakemake.params.inception_weights).astype(np.float64)
if len(feats) < 2:
    raise DataError(f"{snakemake.input.data}/images: FID needs at least 2 images, found {len(feats)}")
save_stats(snakemake.output.stats, feats.mean(0), np.cov(feats, rowvar=False), len(feats), feature_space=space,
           features=feats if snakemake.params.keep_features else None)
n = len(feats)
print(f"reference stats ({space}): {n} images")
