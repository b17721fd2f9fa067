from pathlib import Path

from tsmflow.reporting.plots import training_curves
from tsmflow.workflow import setup

setup(snakemake)
curves = {"text encoder (CLIP)": Path(snakemake.input.text_encoder) / "loss.csv",
          "VAE": Path(snakemake.input.vae) / "loss.csv"}
curves.update({f"denoiser: {Path(d).name}": Path(d) / "loss.csv" for d in snakemake.input.base})
training_curves(curves, snakemake.output[0])
