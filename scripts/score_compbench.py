from tsmflow.data.io import atomic_path
from tsmflow.evaluation.evaluator import load_evaluator
from tsmflow.evaluation.scoring import check_validated, score_folder
from tsmflow.workflow import setup

setup(snakemake)
validated = check_validated(snakemake.input.validation, snakemake.params.require_validated)
df = score_folder(load_evaluator(snakemake.input.model), snakemake.input.images, snakemake.params.resolution)
df["evaluator_validated"] = validated
print(df.groupby("category")["score"].agg(["mean", "count"]))
with atomic_path(snakemake.output.scores) as tmp:
    df.to_csv(tmp, index=False)
