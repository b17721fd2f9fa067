"""Real DAG: a run's FID against the COCO reference statistics (clean-fid, Inception features)."""
from tsmflow.data.io import write_json
from tsmflow.evaluation.fid import fid_from_stats, folder_stats, load_stats
from tsmflow.workflow import setup

setup(snakemake)
mu, sigma, n = folder_stats(None, snakemake.input.images, feature_space="inception",
                           inception_weights=snakemake.params.inception_weights)
ref = load_stats(snakemake.input.reference)
fid = fid_from_stats(mu, sigma, ref["mu"], ref["sigma"])
write_json(snakemake.output.fid, {"fid": fid, "feature_space": "inception", "n_samples": n, "n_reference": ref["n"]})
print(f"FID (inception) = {fid:.3f} from {n} samples vs {ref['n']} reference images")
