"""Stage `generate_prompt_images`: the domain-adaptation data, by T2I-CompBench's GORS recipe.

For every CompBench-mini *training* prompt the pre-trained base model generates
N images; the validated evaluator scores them; images whose score reaches the
category's reward threshold are kept, and the reward becomes the per-sample
loss weight of fine-tuning. The result is an ordinary dataset directory
(``images/<category>/<prompt>_<idx>.png`` + ``labels.jsonl`` with caption,
category and reward), so `encode_latents` caches it like any other split.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..evaluation.scoring import score_folder
from ..sampling.folders import compbench_folder
from .io import DataError, atomic_dir, write_json, write_labels


def select(scores: pd.DataFrame, thresholds: dict[str, float]) -> pd.DataFrame:
    """Rows at or above their category's threshold (percent); reward = score / 100 in [0, 1]."""
    missing = set(scores["category"]) - set(thresholds)
    if missing:
        raise ValueError(f"gors.threshold has no entry for categories {sorted(missing)}")
    keep = scores[scores["score"] >= scores["category"].map(thresholds)].copy()
    keep["reward"] = keep["score"] / 100.0
    return keep


def generate_prompt_images(backbone, evaluator, prompt_files: dict[str, str], cfg: dict, sampling: dict,
                           resolution: int, out_dir) -> dict:
    """prompt_files: category -> its *_train.txt. cfg: the config's `gors` block."""
    with atomic_dir(out_dir) as tmp:
        tmp = Path(tmp)
        compbench_folder(backbone, prompt_files, tmp / "images", cfg["images_per_prompt"], cfg["seed"],
                         sampling["steps"], sampling["guidance_scale"], solver=sampling["solver"],
                         precision=sampling.get("precision", "fp32"))
        scores = score_folder(evaluator, tmp / "images", resolution)
        scores.to_csv(tmp / "scores.csv", index=False)
        keep = select(scores, cfg["threshold"])
        if keep.empty:
            raise DataError(f"GORS kept no image: every score is below gors.threshold {cfg['threshold']}; "
                            "lower the thresholds or raise gors.images_per_prompt")
        write_labels(tmp / "labels.jsonl", [
            {"file": f"images/{r.file}", "caption": r.prompt, "category": r.category, "reward": r.reward,
             "resolution": resolution}
            for r in keep.itertuples()])
        summary = {
            "generated": len(scores), "kept": len(keep),
            "per_category": {c: {"generated": int((scores["category"] == c).sum()),
                                 "kept": int((keep["category"] == c).sum()),
                                 "threshold": cfg["threshold"][c],
                                 "mean_score": float(scores.loc[scores["category"] == c, "score"].mean())}
                             for c in sorted(scores["category"].unique())},
        }
        write_json(tmp / "summary.json", summary)
    return summary
