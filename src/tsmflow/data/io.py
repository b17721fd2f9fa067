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
    if staging.exists() and not (key_file.is_file() and key_file.read_text(encoding="utf-8") == key):
        shutil.rmtree(staging)
    staging.mkdir(parents=True, exist_ok=True)
    if not key_file.is_file():
        with atomic_path(key_file) as tmp:
            tmp.write_text(key, encoding="utf-8")
    yield staging
    key_file.unlink()
    if path.exists():
        shutil.rmtree(path)
    os.replace(staging, path)


def write_json(path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_json(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from e


def save_png(path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def read_text(path) -> str:
    """A text file as UTF-8 whatever the locale (T2I-CompBench's prompts have "piñata" and "café")."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from e


# PIL's errors for unreadable files; DecompressionBombError (an image over 2x Image.MAX_IMAGE_PIXELS) is none of them
IMAGE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB. 16-bit grayscale (PIL mode I;16, or I from older readers) is scaled by 1/257: PIL's own
    convert("RGB") clips it at 255, so a 16-bit PNG comes out nearly white."""
    if im.mode.startswith("I;16") or im.mode == "I":
        a = np.asarray(im, dtype=np.float64)
        if im.mode.startswith("I;16") or a.max() > 255:
            a = a / 257.0
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode == "F":  # float images: [0, 1] if they fit in it, else 8-bit units
        a = np.asarray(im, dtype=np.float64)
        a = a * 255.0 if np.nanmax(a) <= 1.0 else a
        return Image.fromarray(np.clip(np.rint(np.nan_to_num(a)), 0, 255).astype(np.uint8), "L").convert("RGB")
    return im.convert("RGB")


def open_rgb(source, name=None) -> Image.Image:
    """Decode an image file (a path or a binary file object) to 8-bit RGB now, so a truncated file fails here
    and not in a training step. Any failure raises DataError naming `name` (default: the path)."""
    name = source if name is None else name
    try:
        with Image.open(source) as im:
            im.load()
            return to_rgb(im)
    except IMAGE_ERRORS as e:
        raise DataError(f"{name}: unreadable image ({type(e).__name__}: {e})") from e


def load_image(path, resolution: int | None = None) -> np.ndarray:
    """Load an RGB image as uint8 (H, W, 3); corrupt, oversized or mis-sized files raise DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image not found")
    arr = np.asarray(open_rgb(path))
    if resolution is not None and arr.shape[:2] != (resolution, resolution):
        raise DataError(f"{path}: image is {arr.shape[1]}x{arr.shape[0]}, expected {resolution}x{resolution}")
    return arr


def read_prompts(path) -> list[str]:
    """Read a T2I-CompBench prompt file (one prompt per line)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: prompt file not found")
    prompts = [ln.strip() for ln in read_text(path).splitlines() if ln.strip()]
    if not prompts:
        raise DataError(f"{path}: prompt file is empty")
    return prompts


def write_lines(path, lines: list[str]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{ln}\n" for ln in lines), encoding="utf-8")


def write_labels(path, records: list[dict]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, sort_keys=True) + "\n")


def read_labels(path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: labels file not found")
    out = []
    for n, ln in enumerate(read_text(path).splitlines(), 1):
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
