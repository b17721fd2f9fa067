"""The CLIP scorer: a second tiny CLIP on the pre-training renders, its own seed (evaluation.clip)."""
from tsmflow.training.text_encoder import train_clip_scorer
from tsmflow.workflow import setup

setup(snakemake)
i = snakemake.input
print(train_clip_scorer(i.data, snakemake.params.cfg, snakemake.output.model, i.heldout))
