from tsmflow.data.io import write_json
from tsmflow.evaluation.evaluator import load_evaluator
from tsmflow.evaluation.fid import fid_from_stats, folder_stats, load_stats
from tsmflow.evaluation.scoring import check_validated
from tsmflow.workflow import setup

setup(snakemake)
space = snakemake.params.feature_space
validated = True
if space in ("shapes", "patch"):
    validated = check_validated(snakemake.input.validation, snakemake.params.require_validated)
model = load_evaluator(snakemake.input.model) if space in ("shapes", "patch") else None
mu, sigma, n = folder_stats(model, snakemake.input.images, feature_space=space)
ref = load_stats(snakemake.input.reference)
fid = fid_from_stats(mu, sigma, ref["mu"], ref["sigma"])
write_json(snakemake.output.fid, {"fid": fid, "feature_space": space, "n_samples": n, "n_reference": ref["n"],
                                  "evaluator_validated": validated})
print(f"FID ({space}) = {fid:.3f} from {n} samples vs {ref['n']} reference images")
