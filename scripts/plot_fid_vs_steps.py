"""FID against training steps, one line per series: further training (DMP Table 3; step 0 = the pre-trained
model) or a distilled student (its snapshots; the teacher at its own sampler as a dashed line)."""
from collections import defaultdict

from tsmflow.reporting.plots import metric_vs_setting
from tsmflow.reporting.tables import load_run_metrics
from tsmflow.workflow import setup

setup(snakemake)
metrics = load_run_metrics(dict(snakemake.input.items()))
points = snakemake.params.points
series, kinds = defaultdict(list), {p["kind"] for p in points if p["kind"] != "base"}
for p in points:
    if p["kind"] != "base":
        series[p["series"]].append((p["step"], metrics[p["run"]]["fid"]))
base = next((p for p in points if p["kind"] == "base"), None)
baseline = None
if base is not None and kinds == {"finetune"}:  # further training starts from the pre-trained model
    for pts in series.values():
        pts.append((0, metrics[base["run"]]["fid"]))
elif base is not None:  # a student starts from the teacher, but samples in its own few steps
    baseline = metrics[base["run"]]["fid"]
space = next(iter(metrics.values()))["fid_feature_space"]
xlabel = "further-training steps" if kinds == {"finetune"} else "training steps (student updates)"
metric_vs_setting(series, xlabel, f"FID ({space} features)", snakemake.output.plot, snakemake.params.title,
                  baseline=baseline, baseline_label=base["label"] if baseline is not None else "")
