"""One run's metrics.json: CompBench-mini per category (%, unless the run is FID-only), FID with its sample
count, trainable parameters."""
import pandas as pd

from tsmflow.data.io import read_json, write_json
from tsmflow.reporting.tables import trainable_summary
from tsmflow.workflow import setup

setup(snakemake)
fid = read_json(snakemake.input.fid)
metrics = {}
validated = fid.get("evaluator_validated", True)
if "scores" in snakemake.input.keys():
    scores = pd.read_csv(snakemake.input.scores)
    metrics = {cat: float(g["score"].mean()) for cat, g in scores.groupby("category")}
    metrics.update({f"n_images_{cat}": int(len(g)) for cat, g in scores.groupby("category")})
    validated = validated and bool(scores["evaluator_validated"].all())
metrics.update(evaluator_validated=validated, fid=fid["fid"], fid_n_samples=fid["n_samples"], fid_feature_space=fid["feature_space"],
               run=snakemake.wildcards.run, **{f"config_{k}": v for k, v in snakemake.params.run.items()})
metrics.update(trainable_summary(snakemake.params.run,
                                 [read_json(f"{d}/stats.json") for d in snakemake.input.trained]))
write_json(snakemake.output.metrics, metrics)
print(metrics)
