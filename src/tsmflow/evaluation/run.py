"""One run's evaluation: FID of its sample folder, CompBench-mini scores, and the metrics.json that tables read.

The rule `evaluate_run` does all of it in one process, with one load of the run's model and the evaluator:
on the miniature a fresh interpreter's imports cost more than scoring (bench/results/job_overhead.md).
"""
from __future__ import annotations

import pandas as pd

from ..reporting.tables import trainable_summary
from .evaluator import Detector
from .fid import fid_from_stats, folder_stats, load_stats


def fid_record(model: Detector | None, folder, reference, feature_space: str, validated: bool) -> dict:
    """FID of an image folder against cached reference stats, with both sample counts."""
    mu, sigma, n = folder_stats(model, folder, feature_space=feature_space)
    ref = load_stats(reference)
    fid = fid_from_stats(mu, sigma, ref["mu"], ref["sigma"])
    return {"fid": fid, "feature_space": feature_space, "n_samples": n, "n_reference": ref["n"],
            "evaluator_validated": validated}


def run_metrics(run: str, spec: dict, fid: dict, scores: pd.DataFrame | None, trained_stats: list[dict]) -> dict:
    """CompBench-mini per category (%, with image counts; none for FID-only runs), FID with its sample count,
    the run's config, and its trainable parameters."""
    metrics = {}
    validated = fid.get("evaluator_validated", True)
    if scores is not None:
        by_cat = scores.groupby("category")["score"]
        metrics = {cat: float(s.mean()) for cat, s in by_cat}
        metrics.update({f"n_images_{cat}": int(len(s)) for cat, s in by_cat})
        validated = validated and bool(scores["evaluator_validated"].all())
    metrics.update(evaluator_validated=validated, fid=fid["fid"], fid_n_samples=fid["n_samples"],
                   fid_feature_space=fid["feature_space"], run=run, **{f"config_{k}": v for k, v in spec.items()})
    metrics.update(trainable_summary(spec, trained_stats))
    return metrics
