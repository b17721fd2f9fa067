"""Standard errors shared by the evaluation, the tables and the claims page (numpy and pandas only: table jobs
import this without torch)."""
from __future__ import annotations

import numpy as np
import pandas as pd


def mean_se(ses) -> float:
    """SE of the mean of independent estimates (categories scored on disjoint prompt sets) from their SEs."""
    ses = list(ses)
    return float(np.sqrt(sum(se ** 2 for se in ses)) / len(ses))


def clustered_mean(df: pd.DataFrame, value: str, cluster: str = "prompt") -> dict:
    """Mean of `value` with a standard error that treats `cluster` (prompts) as the sampling
    unit: images of one prompt are not independent draws of the category."""
    means = df.groupby(cluster)[value].mean()
    n = len(means)
    se = float(means.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return {"mean": float(df[value].mean()), "se": se, "n_images": int(len(df)), "n_prompts": int(n)}
