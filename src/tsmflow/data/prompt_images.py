"""Stage `generate_prompt_images`: the domain-adaptation data, by T2I-CompBench's GORS recipe.

For every CompBench-mini *training* prompt the pre-trained base model generates
N images; the validated evaluator scores them; images whose score reaches the
category's reward threshold are kept, and the reward becomes the per-sample
loss weight of fine-tuning. The result is an ordinary dataset directory
(``images/<category>/samples/<prompt>_<idx>.png`` + ``labels.jsonl`` with caption,
category and reward), so `encode_latents` caches it like any other split.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..evaluation.scoring import score_folder
from ..sampling.folders import compbench_folder
from .io import DataError, atomic_dir, read_prompts, write_json, write_labels


def select(scores: pd.DataFrame, cfg: dict, positions: dict[str, dict[str, int]] | None = None) -> pd.DataFrame:
    """The kept rows, with reward = score / 100 in [0, 1]. `cfg` is the config's `gors` block.

    Recipe `mini`: a row is kept if its score reaches its category's threshold (percent). Recipe `t2i_compbench`
    (its GORS code): a prompt's threshold is the first of its category's two if the prompt's first line in the train
    file (`positions`: {category: {prompt: line}}) is before `tier_split`, else the second; a row is kept if its
    score is above it. Its rows carry reward_loss "mean": the loss is then the batch mean of reward * mse, not
    normalised by the rewards' sum."""
    thresholds, recipe = cfg["threshold"], cfg.get("recipe", "mini")
    missing = set(scores["category"]) - set(thresholds)
    if missing:
        raise ValueError(f"gors.threshold has no entry for categories {sorted(missing)}")
    if recipe == "mini":
        keep = scores[scores["score"] >= scores["category"].map(thresholds)].copy()
    elif recipe == "t2i_compbench":
        if positions is None:
            raise ValueError("gors.recipe t2i_compbench needs each prompt's line in its train file")
        line = [positions[c][p] for c, p in zip(scores["category"], scores["prompt"])]
        limit = [thresholds[c][0 if n < cfg["tier_split"] else 1] for c, n in zip(scores["category"], line)]
        keep = scores[scores["score"].to_numpy() > limit].copy()
        keep["reward_loss"] = "mean"
    else:
        raise ValueError(f"gors.recipe must be mini or t2i_compbench, not {recipe!r}")
    keep["reward"] = keep["score"] / 100.0
    return keep


def first_lines(prompt_files: dict[str, str]) -> dict[str, dict[str, int]]:
    """{category: {prompt: the 0-based line where it first occurs}}, as T2I-CompBench's GORS code finds it."""
    out = {}
    for category, path in prompt_files.items():
        out[category] = {}
        for n, p in enumerate(read_prompts(path)):
            out[category].setdefault(p, n)
    return out


def generate_prompt_images(backbone, scorer, prompt_files: dict[str, str], cfg: dict, sampling: dict,
                           resolution: int, out_dir) -> dict:
    """prompt_files: category -> its *_train.txt. scorer: `score_images(images, prompts, category)` (the
    miniature's evaluator, or T2I-CompBench's scorers). cfg: the config's `gors` block."""
    with atomic_dir(out_dir) as tmp:
        tmp = Path(tmp)
        compbench_folder(backbone, prompt_files, tmp / "images", cfg["images_per_prompt"], cfg["seed"],
                         sampling["steps"], sampling["guidance_scale"], solver=sampling["solver"],
                         precision=sampling.get("precision", "fp32"))
        scores = score_folder(scorer, tmp / "images", resolution)
        scores.to_csv(tmp / "scores.csv", index=False)
        keep = select(scores, cfg, first_lines(prompt_files))
        if keep.empty:
            raise DataError(f"GORS kept no image: every score is below gors.threshold {cfg['threshold']}; "
                            "lower the thresholds or raise gors.images_per_prompt")
        write_labels(tmp / "labels.jsonl", [
            {"file": f"images/{r.file}", "caption": r.prompt, "category": r.category, "reward": r.reward,
             "resolution": resolution, **({"reward_loss": r.reward_loss} if "reward_loss" in keep else {})}
            for r in keep.itertuples()])
        summary = {
            "recipe": cfg.get("recipe", "mini"), "generated": len(scores), "kept": len(keep),
            "per_category": {c: {"generated": int((scores["category"] == c).sum()),
                                 "kept": int((keep["category"] == c).sum()),
                                 "threshold": cfg["threshold"][c],
                                 "mean_score": float(scores.loc[scores["category"] == c, "score"].mean())}
                             for c in sorted(scores["category"].unique())},
        }
        write_json(tmp / "summary.json", summary)
    return summary
