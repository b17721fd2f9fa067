"""DMP's structural-bias analysis (its appendix G): how alike a model's samples are, and where its prompts act.

- Table 5: N final latents of one model, flattened; the off-diagonal entries of their (N, N) Pearson correlation
  matrix and of their cosine-similarity matrix, each summarised by max, min, mean and std (population std over
  the N (N - 1) ordered pairs; the paper does not say which). Lower means: less alike samples.
- Fig. 7: a DMP gate's prompt weights (timesteps x blocks x prompt positions, as `MixtureOfPrompts.activation_map`
  gives them): averaged over timesteps per position (temporal bias) and over positions per timestep (spatial
  bias), summarised by their spread, mean over blocks.
"""
from __future__ import annotations

import numpy as np

STATS = ("max", "min", "mean", "std")


def offdiag_stats(latents: np.ndarray) -> dict:
    """{correlation,similarity}_{max,min,mean,std} of N latents' off-diagonal pairs, and n_latents."""
    x = np.asarray(latents, dtype=np.float64).reshape(len(latents), -1)
    if len(x) < 2:
        raise ValueError(f"structural statistics need at least 2 latents, got {len(x)}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any() or (x.std(axis=1) == 0).any():
        raise ValueError("a constant latent has no correlation or cosine similarity")
    off = ~np.eye(len(x), dtype=bool)
    out = {"n_latents": int(len(x))}
    for name, m in (("correlation", np.corrcoef(x)), ("similarity", (x / norms) @ (x / norms).T)):
        v = m[off]
        out.update({f"{name}_{s}": float(getattr(np, s)(v)) for s in STATS})
    return out


def activation_bias(weights: np.ndarray) -> dict:
    """Spread of the temporal bias (each position's weight averaged over timesteps) and of the spatial bias (each
    timestep's weight averaged over positions); `weights` is (n_t, n_blocks, N_max), NaN past a block's N_i."""
    w = np.asarray(weights, dtype=np.float64)
    temporal = np.nanmean(w, axis=0)  # (blocks, positions)
    spatial = np.nanmean(w, axis=2)  # (timesteps, blocks)
    return {"temporal_bias_std": float(np.mean(np.nanstd(temporal, axis=1))),
            "spatial_bias_std": float(np.mean(np.nanstd(spatial, axis=0)))}
