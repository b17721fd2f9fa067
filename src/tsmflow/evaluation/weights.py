"""How a trained student's weights moved from its teacher's: norm against direction (WaDi Fig. 1, Table 2's NM, DM).

Each weight of two or more dimensions (Linear, convolution, ...) is read as one vector per output unit, as DoRA
and LoRaD do (its first dimension indexes them). Per layer, in percent:

- norm change NM: mean over units of | ||w'|| - ||w|| | / ||w||;
- direction change DM: mean over units of 1 - cos(w', w).

Every such weight of the denoiser counts, so an adapter that leaves a layer alone adds a zero there, as full
fine-tuning's untouched layers would.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn as nn


@torch.no_grad()
def weight_change(teacher: nn.Module, student: nn.Module) -> pd.DataFrame:
    """One row per weight: layer, units, norm_change and direction_change (%)."""
    ref = dict(teacher.named_parameters())
    rows = []
    for name, w in student.named_parameters():
        if w.ndim < 2:
            continue
        if name not in ref or ref[name].shape != w.shape:
            raise ValueError(f"student weight {name} {tuple(w.shape)} has no teacher weight of that shape")
        a, b = ref[name].detach().flatten(1).double(), w.detach().flatten(1).double()
        na, nb = a.norm(dim=1), b.norm(dim=1)
        keep = na > 0  # units that are all zero (zero-initialised outputs) have no direction
        cos = (a * b).sum(1)[keep] / (na[keep] * nb[keep]).clamp_min(1e-30)
        rows.append({"layer": name, "units": int(keep.sum()),
                     "norm_change": float(100 * ((nb - na).abs()[keep] / na[keep]).mean()) if keep.any() else 0.0,
                     "direction_change": float(100 * (1 - cos.clamp(-1, 1)).mean()) if keep.any() else 0.0})
    if not rows:
        raise ValueError("no weight of two or more dimensions to compare")
    return pd.DataFrame(rows)


def change_summary(df: pd.DataFrame) -> dict:
    """Mean and std over layers, as WaDi Fig. 1 gives them, with the layer count."""
    return {"norm_change": float(df["norm_change"].mean()), "norm_change_std": float(df["norm_change"].std(ddof=0)),
            "direction_change": float(df["direction_change"].mean()),
            "direction_change_std": float(df["direction_change"].std(ddof=0)), "weight_layers": int(len(df)),
            "direction_over_norm": float(df["direction_change"].mean() / max(df["norm_change"].mean(), 1e-12))}
