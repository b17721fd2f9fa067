"""DeMe supplement Fig. 2: FID of the merged model against the number of ranges N and the probability p."""
from tsmflow.reporting.plots import deme_sensitivity_series, metric_vs_setting
from tsmflow.reporting.tables import load_run_metrics
from tsmflow.workflow import setup

setup(snakemake)
metrics = load_run_metrics(dict(snakemake.input.items()))
runs, sets = snakemake.params.runs, snakemake.params.deme_sets
points, base = [], None
for row in snakemake.params.decl["rows"]:
    run = row["run"]
    spec = runs[run]
    if spec["method"] == "base":
        base = metrics[run]["fid"]
    elif spec["method"] == "deme_merged":
        d = sets[spec["deme"]]
        points.append((d["n"], d["p"], metrics[run]["fid"]))
space = next(iter(metrics.values()))["fid_feature_space"]
metric_vs_setting(deme_sensitivity_series(points), "N (number of ranges) or p (out-of-range probability)",
                  f"FID ({space} features)", snakemake.output.plot, snakemake.params.decl["title"], base,
                  "pre-trained")
