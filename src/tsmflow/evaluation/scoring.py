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


def score_folder(evaluator, folder, resolution: int) -> pd.DataFrame:
    """One row per image: category, prompt, idx (T2I-CompBench's question_id), file (relative to `folder`), score
    (percent). `folder` holds one folder per category, in either layout `read_compbench_images` reads."""
    rows = []
    folder = Path(folder)
    cats = sorted(p for p in folder.iterdir() if p.is_dir())
    if not cats:
        raise DataError(f"{folder}: no category folders to score")
    for cat in tqdm(cats, desc="scoring", mininterval=2.0):
        records = read_compbench_images(cat)
        images = np.stack([load_image(r["file"], resolution) for r in records])
        scores = score_images(evaluator, images, [r["prompt"] for r in records], cat.name)
        rows += [{"category": cat.name, "prompt": r["prompt"], "idx": r["idx"],
                  "file": Path(r["file"]).relative_to(folder).as_posix(), "score": 100.0 * s}
                 for r, s in zip(records, scores)]
    return pd.DataFrame(rows)
