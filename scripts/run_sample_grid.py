"""A run's sample grid: the first prompts of each category, first images, with their scores."""
import numpy as np
import pandas as pd

from tsmflow.data.io import load_image
from tsmflow.reporting.plots import sample_grid
from tsmflow.workflow import setup

setup(snakemake)
n_prompts, n_seeds = snakemake.params.prompts_per_category, snakemake.params.seeds
scores = pd.read_csv(snakemake.input.scores)
n_cols = min(n_seeds, int(scores.groupby(["category", "prompt"]).size().min()))
labels, images = [], []
for cat, g in scores.groupby("category", sort=False):
    for prompt in list(dict.fromkeys(g["prompt"]))[:n_prompts]:
        rows = g[g["prompt"] == prompt].sort_values("idx").head(n_cols)  # idx runs over the folder
        labels.append(f"[{cat}] {prompt}  (scores: {', '.join(f'{s:.0f}' for s in rows['score'])})")
        images += [load_image(f"{snakemake.input.images}/{f}") for f in rows["file"]]
sample_grid(np.stack(images), labels, n_cols, snakemake.output.grid, title=f"run {snakemake.wildcards.run}")
