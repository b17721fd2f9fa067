"""Reading and writing datasets, prompt files and checkpoints, with errors that name the problem.

Every writer goes through a temporary file and an atomic rename, so an
interrupted job never leaves a file that looks complete.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


class DataError(ValueError):
    """Bad input data: the message names the file and what is wrong with it."""


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temp path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield a temp directory beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a job killed by SIGKILL cannot clean up; its rerun (Snakemake runs one job per output) does
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; outputs should be as readable as any other
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


@contextmanager
def resumable_dir(path: str | os.PathLike, key: str):
    """Like `atomic_dir`, but a failed or killed block leaves its work in `.<name>.partial` for a rerun.

    The rerun gets that work back only if it passes the same `key` (what produced it: model, settings,
    inputs); otherwise the work is discarded, so a folder is never completed by a different model.
    """
    path = Path(path)
    staging = path.parent / f".{path.name}.partial"
    key_file = staging / ".resume_key"
    if staging.exists() and not (key_file.is_file() and key_file.read_text() == key):
        shutil.rmtree(staging)
    staging.mkdir(parents=True, exist_ok=True)
    if not key_file.is_file():
        with atomic_path(key_file) as tmp:
            tmp.write_text(key)
    yield staging
    key_file.unlink()
    if path.exists():
        shutil.rmtree(path)
    os.replace(staging, path)


def write_json(path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from e


def save_png(path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def load_image(path, resolution: int | None = None) -> np.ndarray:
    """Load an RGB image as uint8 (H, W, 3); corrupt or mis-sized files raise DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image not found")
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"{path}: unreadable image ({e})") from e
    if resolution is not None and arr.shape[:2] != (resolution, resolution):
        raise DataError(f"{path}: image is {arr.shape[1]}x{arr.shape[0]}, expected {resolution}x{resolution}")
    return arr


def read_prompts(path) -> list[str]:
    """Read a T2I-CompBench prompt file (one prompt per line)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: prompt file not found")
    prompts = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if not prompts:
        raise DataError(f"{path}: prompt file is empty")
    return prompts


def write_lines(path, lines: list[str]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{ln}\n" for ln in lines))


def write_labels(path, records: list[dict]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            for r in records:
                f.write(json.dumps(r, sort_keys=True) + "\n")


def read_labels(path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: labels file not found")
    out = []
    for n, ln in enumerate(path.read_text().splitlines(), 1):
        if not ln.strip():
            continue
        try:
            out.append(json.loads(ln))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: not valid JSON ({e})") from e
    if not out:
        raise DataError(f"{path}: no labelled images")
    return out


def load_dataset(root) -> tuple[np.ndarray, list[dict]]:
    """A rendered split: (uint8 images (N, H, W, 3), label records in the same order)."""
    root = Path(root)
    labels = read_labels(root / "labels.jsonl")
    res = labels[0]["resolution"]
    images = np.stack([load_image(root / r["file"], res) for r in labels])
    return images, labels
