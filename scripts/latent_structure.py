"""DMP Table 5: structural statistics of the final latents a run's FID samples decode from, and for a DMP run
its gate's temporal and spatial biases (DMP Fig. 7, from the activation data its plot rule saved)."""
from pathlib import Path

import numpy as np

from safetensors.numpy import load_file

from tsmflow.data.io import DataError, write_json
from tsmflow.evaluation.structure import activation_bias, offdiag_stats
from tsmflow.sampling.folders import LATENTS
from tsmflow.workflow import setup

setup(snakemake)
inp, p = snakemake.input, snakemake.params
path = Path(inp.fid_samples) / LATENTS
if not path.is_file():
    raise DataError(f"{path}: no latents (evaluate_run keeps them only for runs of latent_structure tables)")
latents = load_file(str(path))["latents"]
if p.n_latents > len(latents):
    raise DataError(f"{path}: {p.n_latents} latents asked, only {len(latents)} saved")
stats = {"run": snakemake.wildcards.run, **offdiag_stats(latents[: p.n_latents])}
if "activation" in inp.keys():
    with np.load(inp.activation) as z:
        stats.update(activation_bias(z["weights"]))
write_json(snakemake.output.stats, stats)
print(stats)
