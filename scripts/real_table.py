"""Real DAG: the post-pretraining table (FID and trainable parameters per run), beside TSM Table 12 where it applies."""
from tsmflow.data.io import read_json
from tsmflow.reporting.tables import build_table, trainable_summary, write_table
from tsmflow.workflow import setup

setup(snakemake)
p = snakemake.params
metrics = {}
for run, spec in p.runs.items():
    fid = read_json(p.fid[run])
    metrics[run] = {"fid": fid["fid"], "fid_n_samples": fid["n_samples"], "fid_feature_space": fid["feature_space"],
                    **trainable_summary(spec, [read_json(f"{d}/stats.json") for d in p.trained[run]])}
df = build_table(p.decl, metrics)
write_table(df, p.decl, snakemake.output.csv, snakemake.output.md, snakemake.output.tex)
print(df.to_markdown(index=False))
