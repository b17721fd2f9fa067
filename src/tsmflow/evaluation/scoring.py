"""Scoring a run's image folders: CompBench-mini per image and per category, with the validation gate."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..data.io import DataError, load_image, read_json
from ..data.adapters import parse_compbench_name as parse_image_name  # T2I-CompBench naming
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
    """One row per image: category, prompt, idx, file, score (percent)."""
    rows = []
    cats = sorted(p for p in Path(folder).iterdir() if p.is_dir())
    if not cats:
        raise DataError(f"{folder}: no category folders to score")
    for cat in tqdm(cats, desc="scoring", mininterval=2.0):
        files = sorted(cat.glob("*.png"))
        if not files:
            raise DataError(f"{cat}: no images")
        names = [parse_image_name(f.name) for f in files]
        images = np.stack([load_image(f, resolution) for f in files])
        scores = score_images(evaluator, images, [p for p, _ in names], cat.name)
        rows += [{"category": cat.name, "prompt": p, "idx": i, "file": f"{cat.name}/{f.name}", "score": 100.0 * s}
                 for (p, i), f, s in zip(names, files, scores)]
    return pd.DataFrame(rows)

