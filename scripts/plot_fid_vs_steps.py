"""DMP Table 3 as a plot: FID against further-training steps, one line per method (step 0 = pre-trained)."""
from collections import defaultdict

from tsmflow.reporting.plots import metric_vs_setting
from tsmflow.reporting.tables import load_run_metrics
from tsmflow.workflow import setup

setup(snakemake)
metrics = load_run_metrics(dict(snakemake.input.items()))
runs, finetunes = snakemake.params.runs, snakemake.params.finetunes
series, base = defaultdict(list), None
for row in snakemake.params.decl["rows"]:
    spec = runs[row["run"]]
    if spec["method"] == "base":
        base = metrics[row["run"]]["fid"]
    elif spec["method"] == "finetune":
        f = finetunes[spec["finetune"]]
        series[row.get("series", spec["finetune"])].append((spec.get("step") or f["steps"], metrics[row["run"]]["fid"]))
if base is not None:
    for pts in series.values():
        pts.append((0, base))
space = next(iter(metrics.values()))["fid_feature_space"]
metric_vs_setting(series, "further-training steps", f"FID ({space} features)", snakemake.output.plot,
                  snakemake.params.decl["title"])
