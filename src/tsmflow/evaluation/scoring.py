"""Scoring a run's image folders: CompBench-mini per image and per category, with the validation gate."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..data.io import DataError, load_image, read_json
from ..data.adapters import read_compbench_images  # T2I-CompBench's naming and layout
from .compbench import score_images


class UnvalidatedEvaluatorError(RuntimeError):
    pass


def check_validated(status_path, required: bool) -> bool:
    """Refuse to score with an evaluator that failed its validation, unless the config allows it."""
    status = read_json(status_path)
    if not status.get("passed") and required:
        raise UnvalidatedEvaluatorError(
            f"the evaluator failed validation ({status_path}; see validation.md beside it). "
            "Scores from it would be meaningless. To score anyway, set "
            "evaluation.require_validated_evaluator: false; metrics are then flagged evaluator_validated=false.")
    return bool(status.get("passed"))


class MiniScorer:
    """The miniature's evaluator behind the scorer interface: `score_images(images, prompts, category)` in [0, 1]."""

    def __init__(self, evaluator):
        self.evaluator = evaluator

    def score_images(self, images: np.ndarray, prompts: list[str], category: str) -> list[float]:
        return score_images(self.evaluator, images, prompts, category)


def load_compbench_scorer(params: dict, inputs, require_validated: bool = True, device="cpu"):
    """(scorer, validated) from a rule's `scorer` param (rules/common.smk `get_scorer`): the miniature's evaluator
    (inputs.evaluator), refused if it failed its validation (inputs.validation) unless `require_validated` is off;
    or T2I-CompBench's scorers, loaded by the model ids in the param."""
    if params["kind"] == "mini":
        from .evaluator import load_evaluator
        validated = check_validated(inputs.validation, require_validated)
        return MiniScorer(load_evaluator(inputs.evaluator)), validated
    from .t2i_compbench import load_scorer
    return load_scorer({k: v for k, v in params.items() if k != "kind"}, device), True


def score_folder(scorer, folder, resolution: int, chunk: int = 256) -> pd.DataFrame:
    """One row per image: category, prompt, idx (T2I-CompBench's question_id), file (relative to `folder`), score
    (percent). `folder` holds one folder per category, in either layout `read_compbench_images` reads. Images load
    `chunk` at a time: a paper model's GORS folder holds thousands of 512-px images."""
    rows = []
    folder = Path(folder)
    cats = sorted(p for p in folder.iterdir() if p.is_dir())
    if not cats:
        raise DataError(f"{folder}: no category folders to score")
    for cat in tqdm(cats, desc="scoring", mininterval=2.0):
        records = read_compbench_images(cat)
        for i in range(0, len(records), chunk):
            part = records[i:i + chunk]
            images = np.stack([load_image(r["file"], resolution) for r in part])
            scores = scorer.score_images(images, [r["prompt"] for r in part], cat.name)
            rows += [{"category": cat.name, "prompt": r["prompt"], "idx": r["idx"],
                      "file": Path(r["file"]).relative_to(folder).as_posix(), "score": 100.0 * s}
                     for r, s in zip(part, scores)]
    return pd.DataFrame(rows)
