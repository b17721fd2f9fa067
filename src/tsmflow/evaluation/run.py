"""One run's evaluation: FID of its sample folder, CompBench-mini scores, and the metrics.json that tables read.

The rule `evaluate_run` does all of it in one process, with one load of the run's model and the evaluator:
on the miniature a fresh interpreter's imports cost more than scoring (bench/results/job_overhead.md).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..data.io import DataError
from ..reporting.tables import trainable_summary
from .evaluator import Detector
from .fid import bootstrap_fid, fid_from_stats, folder_features, load_stats, precision_recall
from .stats import clustered_mean


def fid_record(model: Detector | None, folder, reference, feature_space: str, validated: bool,
               n_boot: int = 200, seed: int = 0, inception_weights=None) -> dict:
    """FID of an image folder against cached reference stats, with both sample counts and a bootstrap SE over
    the samples (the reference stats are fixed; n_boot=0 leaves the SE out)."""
    feats = folder_features(model, folder, feature_space=feature_space,
                            inception_weights=inception_weights).astype(np.float64)
    if len(feats) < 2:
        raise DataError(f"{folder}: FID needs at least 2 images, found {len(feats)}")
    ref = load_stats(reference)
    boot = bootstrap_fid(feats, ref["mu"], ref["sigma"], n_boot=max(n_boot, 2), seed=seed) if n_boot else None
    fid = boot["fid"] if boot else fid_from_stats(feats.mean(0), np.cov(feats, rowvar=False), ref["mu"], ref["sigma"])
    # reference stats written before the features were kept have none: then no precision/recall
    prc = precision_recall(feats, ref["features"]) if "features" in ref else {}
    return {"fid": fid, "fid_se": boot["se"] if boot else None, "fid_n_boot": n_boot,
            "feature_space": feature_space, "n_samples": len(feats), "n_reference": ref["n"],
            "evaluator_validated": validated, **prc}


def run_metrics(run: str, spec: dict, fid: dict, scores: pd.DataFrame | None, trained_stats: list[dict],
                sampling: dict | None = None) -> dict:
    """CompBench-mini per category (%, with image and prompt counts and a standard error that treats prompts as
    the sampling unit; none for FID-only runs), FID with its sample count and bootstrap SE, the CLIP score of the
    same samples where evaluated (fid["clip"]), the run's config, its
    trainable parameters, and its NFEs: a student's steps, or the sampler's `steps` (a CFG step's two branches
    share one batched call, counted once)."""
    metrics = {}
    validated = fid.get("evaluator_validated", True)
    if scores is not None:
        for cat, g in scores.groupby("category"):
            m = clustered_mean(g, "score")
            se = m["se"] if np.isfinite(m["se"]) else None  # one prompt: no SE (and no NaN in the JSON)
            metrics.update({cat: m["mean"], f"{cat}_se": se, f"n_images_{cat}": m["n_images"],
                            f"n_prompts_{cat}": m["n_prompts"]})
        validated = validated and bool(scores["evaluator_validated"].all())
    metrics.update(evaluator_validated=validated, fid=fid["fid"], fid_se=fid.get("fid_se"),
                   fid_n_samples=fid["n_samples"], fid_feature_space=fid["feature_space"], run=run,
                   **{k: fid[k] for k in ("precision", "recall", "prc_neighborhood") if k in fid},
                   **({"patch_fid": fid["patch"]["fid"], "patch_fid_se": fid["patch"]["fid_se"]} if "patch" in fid
                      else {}),
                   **fid.get("clip", {}),
                   **{f"config_{k}": v for k, v in spec.items()})
    metrics.update(trainable_summary(spec, trained_stats))
    if sampling and "steps" in sampling:
        metrics["nfe"] = sampling["steps"]
    if spec["method"] == "distill":  # its cost and how its weights moved (WaDi Table 2, Fig. 1)
        st = trained_stats[0]  # a routed (TSM) student is not one merged denoiser: no weight change
        metrics.update(nfe=st["nfe"], **{k: st[k] for k in ("norm_change", "norm_change_std", "direction_change",
                                                             "direction_change_std", "weight_layers") if k in st},
                       train_wall_s=st["wall_s"])
    return metrics
