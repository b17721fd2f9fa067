"""DeMe supplement Fig. 2: FID of the merged model against the number of ranges N and the probability p."""
from collections import defaultdict

from tsmflow.reporting.plots import metric_vs_setting
from tsmflow.reporting.tables import load_run_metrics
from tsmflow.workflow import setup

setup(snakemake)
metrics = load_run_metrics(dict(snakemake.input.items()))
runs, sets = snakemake.config["runs"], snakemake.params.deme_sets
series, base = defaultdict(list), None
for row in snakemake.params.decl["rows"]:
    run = row["run"]
    spec = runs[run]
    if spec["method"] == "base":
        base = metrics[run]["fid"]
    elif spec["method"] == "deme_merged":
        d = sets[spec["deme"]]
        series[f"N (p={d['p']})"].append((d["n"], metrics[run]["fid"]))
        series[f"p (N={d['n']})"].append((d["p"], metrics[run]["fid"]))
# a line needs two points: keep the sweeps, drop the single-point series the other sweep leaves behind
series = {k: v for k, v in series.items() if len(v) > 1}
space = next(iter(metrics.values()))["fid_feature_space"]
metric_vs_setting(series, "N (number of ranges) or p (out-of-range probability)", f"FID ({space} features)",
                  snakemake.output.plot, snakemake.params.decl["title"], base, "pre-trained")
