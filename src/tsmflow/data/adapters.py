"""Readers for the real datasets the TSM, DeMe and DMP papers use. Each is configured by a path.

Every adapter reads a dataset in the format it is published in. It returns the simple
records the workflow already uses: dicts with ``file`` (an image path) and ``caption``
(or ``prompt`` and ``idx``), like the lines of a rendered split's ``labels.jsonl``.
Nothing is downloaded. A missing path, an empty file, bad JSON or a malformed name
raises DataError, and the message names the file.

T2I-CompBench (Huang et al., 2023; github.com/Karine-Huang/T2I-CompBench)
    Prompts: the repository's ``examples/dataset/`` folder. It has one prompt per line
    in ``<category>_train.txt`` and ``<category>_val.txt`` for color, shape, texture,
    spatial, non_spatial and complex. The folder's other files (``color.txt``,
    ``color_val_seen.txt``, ``complex_val_action.txt``, ...) are not read.
    Generated images: the official evaluators (BLIPvqa_eval, UniDet_eval, CLIPScore_eval,
    3_in_1_eval) read ``<out_dir>/samples/<prompt>_<6-digit idx>.png``, with one out_dir per
    category; its generator numbers the images of a folder with one running counter (the
    evaluators' question_id) and writes ``<prompt>-grid-NNNNN.png`` beside ``samples/``.
    This project writes ``<out>/<category>/samples/`` the same way (sampling/folders.py).
    Folders whose images lie directly in them are read too.

COCO 2014 captions (FID-30K, as in the papers' zero-shot FID)
    ``annotations/captions_val2014.json`` has ``images: [{id, file_name, ...}]`` and
    ``annotations: [{image_id, id, caption}]``, with 5 to 7 captions per image. The
    ``val2014/`` folder holds ``COCO_val2014_<12-digit id>.jpg``. Images are drawn by a
    seeded permutation. Each drawn image contributes one caption.

LAION-style image-text data (post-pretraining)
    (a) img2dataset's "files" output: ``<name>.jpg|jpeg|png|webp`` with a sibling
        ``<name>.txt`` caption, possibly in numbered sub-folders.
    (b) webdataset tar shards (img2dataset's "webdataset" output):
        ``<key>.jpg`` + ``<key>.txt`` (+ ``<key>.json``). Consecutive members that share
        a key form one sample, as in webdataset's ``tar_file_iterator``. The shards are
        read with the standard library's ``tarfile`` in streaming mode.
"""
from __future__ import annotations

import io
import logging
import os
import re
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .grammar import CATEGORIES
from .io import DataError, atomic_dir, load_image, open_rgb, read_json, read_prompts, save_png, write_labels, write_lines

log = logging.getLogger(__name__)

COMPBENCH_SPLITS = ("train", "val")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def _clean_caption(text: str) -> str:
    # Captions become lines of a prompt file. COCO has captions with embedded newlines
    # and trailing spaces, so collapse all whitespace.
    return " ".join(text.split())


def _names(paths) -> str:
    """Name at most ten files in a message, then say how many more there are."""
    names = [Path(p).name for p in paths]
    more = f" and {len(names) - 10} more" if len(names) > 10 else ""
    return ", ".join(names[:10]) + more


# ---------------------------------------------------------------- T2I-CompBench

def compbench_prompt_files(folder) -> dict[str, dict[str, Path]]:
    """The ``<category>_{train,val}.txt`` files in a prompt folder: {category: {split: path}}."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: T2I-CompBench prompt folder not found")
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(folder.glob("*.txt")):
        # "non_spatial_val" contains "_" too, so split at the last underscore
        category, _, split = path.stem.rpartition("_")
        if category and split in COMPBENCH_SPLITS:
            found.setdefault(category, {})[split] = path
    return found


def read_compbench_prompts(folder, categories: Sequence[str] = CATEGORIES,
                           splits: Sequence[str] = COMPBENCH_SPLITS) -> dict[str, dict[str, list[str]]]:
    """The prompts of each category and split: {category: {split: [prompt, ...]}}."""
    folder = Path(folder)
    found = compbench_prompt_files(folder)
    out: dict[str, dict[str, list[str]]] = {}
    for cat in categories:
        for split in splits:
            path = folder / f"{cat}_{split}.txt"
            if not path.is_file():
                have = ", ".join(f"{c}_{s}.txt" for c in found for s in found[c]) or "none"
                raise DataError(f"{path}: prompt file not found for category {cat!r} (the folder has: {have})")
            out.setdefault(cat, {})[split] = read_prompts(path)  # an empty file raises, naming it
    return out


def parse_compbench_name(path) -> tuple[str, int]:
    """``<prompt>_<6-digit idx>.png`` -> (prompt, idx). T2I-CompBench names its images this way."""
    path = Path(path)
    prompt, _, idx = path.stem.rpartition("_")
    if path.suffix != ".png" or not prompt or len(idx) != 6 or not idx.isdigit():
        raise DataError(f"{path}: not named <prompt>_<6-digit index>.png")
    return prompt, int(idx)


GRID_NAME = re.compile(r".+-grid-\d+\.png")  # T2I-CompBench's generator writes these beside samples/


def read_compbench_images(folder) -> list[dict]:
    """The generated images of one category, as {prompt, idx, file} records in index order, the order
    T2I-CompBench's evaluators sort them in (by the number after the last underscore).

    ``folder`` is either T2I-CompBench's out_dir, whose images are in ``samples/`` and whose
    ``<prompt>-grid-NNNNN.png`` grids lie beside it, or a folder that holds the images itself.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found")
    samples = folder / "samples"
    if samples.is_dir():
        beside = [p for p in folder.glob("*.png") if not GRID_NAME.fullmatch(p.name)]
        if beside:
            # If the images are in both places, we cannot tell which set is meant.
            raise DataError(f"{folder}: has images both beside samples/ ({_names(beside)}) and in it; only "
                            "<prompt>-grid-NNNNN.png grids may lie beside samples/")
        folder = samples
    # The official evaluators list every file in samples/, so a stray file breaks them
    # too. Anything that is not named like an image of this layout is an error.
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    if not files:
        raise DataError(f"{folder}: no generated images")
    records = [dict(zip(("prompt", "idx"), parse_compbench_name(p)), file=str(p)) for p in files]
    return sorted(records, key=lambda r: (r["idx"], r["file"]))


def read_compbench_run(root, categories: Sequence[str] = CATEGORIES) -> dict[str, list[dict]]:
    """Every category folder under ``root``: {category: [{category, prompt, idx, file}, ...]}."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    out = {}
    for cat in categories:
        if not (root / cat).is_dir():
            have = ", ".join(sorted(p.name for p in root.iterdir() if p.is_dir())) or "none"
            raise DataError(f"{root / cat}: no image folder for category {cat!r} (found: {have})")
        out[cat] = [{"category": cat, **r} for r in read_compbench_images(root / cat)]
    return out


# ---------------------------------------------------------------- COCO 2014 captions

def read_coco_captions(annotations, image_dir) -> list[dict]:
    """Every caption in a COCO captions json: {file, caption, image_id, caption_id}.

    The records are ordered by image id and then by caption id, so they do not depend
    on the order of the json.
    """
    annotations, image_dir = Path(annotations), Path(image_dir)
    data = read_json(annotations)  # a missing file or bad JSON raises, naming the file
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise DataError(f"{annotations}: not a COCO captions file (needs 'images' and 'annotations' lists)")
    files: dict[int, str] = {}
    for n, im in enumerate(data["images"]):
        try:
            image_id, name = int(im["id"]), im["file_name"]
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{annotations}: images[{n}] lacks id/file_name ({e!r})") from e
        if image_id in files:  # two files under one id: which one its captions describe is unknown
            raise DataError(f"{annotations}: image id {image_id} appears twice in 'images' "
                            f"({files[image_id]} and {name})")
        files[image_id] = name
    records, caption_ids = [], set()
    for n, a in enumerate(data["annotations"]):
        try:
            image_id, caption_id, text = int(a["image_id"]), int(a["id"]), _clean_caption(a["caption"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise DataError(f"{annotations}: annotations[{n}] lacks image_id/id/caption ({e!r})") from e
        if image_id not in files:
            raise DataError(f"{annotations}: caption {caption_id} refers to image {image_id}, "
                            "which is not in 'images'")
        if caption_id in caption_ids:
            raise DataError(f"{annotations}: annotation id {caption_id} appears twice in 'annotations' "
                            f"(the second at annotations[{n}])")
        caption_ids.add(caption_id)
        if not text:
            raise DataError(f"{annotations}: caption {caption_id} (image {image_id}) is empty")
        records.append({"file": str(image_dir / files[image_id]), "caption": text, "image_id": image_id,
                        "caption_id": caption_id})
    if not records:
        raise DataError(f"{annotations}: no captions")
    return sorted(records, key=lambda r: (r["image_id"], r["caption_id"]))


def coco_subsample(records: list[dict], n: int, seed: int, caption: str = "first") -> list[dict]:
    """``n`` distinct images drawn by a seeded permutation, with one caption each.

    The draw is a prefix of one permutation of the sorted image ids. So for the same seed,
    the first 10K of a 30K draw are the 10K draw.
    ``caption="first"`` keeps the caption with the lowest annotation id, which does not
    depend on the seed. ``"random"`` picks one with a generator seeded by
    (seed, image_id), so an image's caption does not depend on ``n`` either.
    """
    if caption not in ("first", "random"):
        raise ValueError(f"caption must be 'first' or 'random', not {caption!r}")
    by_image: dict[int, list[dict]] = {}
    for r in sorted(records, key=lambda r: (r["image_id"], r["caption_id"])):
        by_image.setdefault(r["image_id"], []).append(r)
    ids = sorted(by_image)
    if n > len(ids):
        raise ValueError(f"asked for {n} images, but only {len(ids)} have captions")
    order = np.random.default_rng(seed).permutation(len(ids))[:n]
    out = []
    for i in order:
        caps = by_image[ids[i]]
        pick = 0 if caption == "first" else int(np.random.default_rng([seed, ids[i]]).integers(len(caps)))
        out.append(caps[pick])
    return out


def check_images_exist(records: list[dict], folder) -> None:
    """Raise DataError naming every image of ``records`` that is missing from ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found")
    missing = [r["file"] for r in records if not Path(r["file"]).is_file()]
    if missing:
        raise DataError(f"{folder}: {len(missing)} of {len(records)} images are missing: {_names(missing)}")


def coco_fid_prompts(annotations, image_dir, n: int, seed: int, caption: str = "first",
                     check_images: bool = True) -> list[dict]:
    """FID-30K's prompts: ``n`` COCO images with one caption each, checked to exist on disk."""
    records = read_coco_captions(annotations, image_dir)
    n_images = len({r["image_id"] for r in records})
    if n > n_images:
        raise DataError(f"{annotations}: asked for {n} images, but only {n_images} have captions")
    chosen = coco_subsample(records, n, seed, caption)
    if check_images:
        check_images_exist(chosen, image_dir)
    return chosen


def write_coco_prompts(records: list[dict], prompt_file, reference_list) -> None:
    """Write the chosen captions to a prompt file for sampling, one per line, and their
    image paths to ``reference_list``: the FID reference set. Line i of each file is record i."""
    write_lines(prompt_file, [r["caption"] for r in records])
    write_lines(reference_list, [str(r["file"]) for r in records])


def coco_reference_folder(records: list[dict], out_dir, resolution: int | None = None) -> None:
    """A folder that clean-fid can take as its reference set: one PNG per record, plus labels.jsonl.

    With ``resolution``, each image is center-cropped to a square and resized to
    ``resolution`` x ``resolution`` with bicubic filtering (PIL's ``ImageOps.fit``). This
    is how COCO is prepared for FID-30K at the model's resolution. With ``None`` the
    folder holds symbolic links to the original files.
    """
    with atomic_dir(out_dir) as tmp:
        labels = []
        for r in records:
            src = Path(r["file"])
            if resolution is None:
                name = src.name
                if not src.is_file():
                    raise DataError(f"{src}: image not found")
                os.symlink(src.resolve(), tmp / name)
            else:
                name = src.with_suffix(".png").name
                image = Image.fromarray(load_image(src))  # a corrupt file raises, naming it
                fitted = ImageOps.fit(image, (resolution, resolution), method=Image.Resampling.BICUBIC)
                save_png(tmp / name, np.asarray(fitted))
            labels.append({"file": name, "caption": r["caption"], "image_id": r.get("image_id")})
        write_labels(tmp / "labels.jsonl", labels)


# ---------------------------------------------------------------- LAION-style image-text data

class BadSamples:
    """What a reader does with a sample it cannot use: an empty caption (img2dataset writes "" for a null one)
    or an image that does not decode. With ``skip=False`` it raises DataError naming the sample. With
    ``skip=True`` the sample is skipped, named and counted by reason; `check` then fails only if more than
    ``max_fraction`` of the samples seen were skipped. A structural fault (no caption file, no image in a
    sample, an unreadable shard) always raises: it is a broken dataset, not a bad sample.
    """

    def __init__(self, skip: bool = False, max_fraction: float = 0.0):
        if not 0.0 <= max_fraction <= 1.0:
            raise ValueError(f"max_fraction must be in [0, 1], not {max_fraction}")
        self.skip, self.max_fraction = skip, max_fraction
        self.reset()

    @classmethod
    def from_config(cls, cfg: dict | None) -> BadSamples:
        """From config `backbones.<name>.data.bad_samples` ({skip, max_fraction}); absent: raise on any."""
        cfg = cfg or {}
        return cls(bool(cfg.get("skip", False)), float(cfg.get("max_fraction", 0.0)))

    def reset(self) -> None:
        self.seen, self.skipped = 0, []

    def good(self) -> None:
        self.seen += 1

    def bad(self, name: str, reason: str, message: str) -> None:
        """A sample that cannot be used: raise `message`, or record it as skipped."""
        self.seen += 1
        if not self.skip:
            raise DataError(message)
        self.skipped.append({"sample": name, "reason": reason, "error": message})
        log.warning("skipped %s (%s): %s", name, reason, message)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.skipped:
            out[s["reason"]] = out.get(s["reason"], 0) + 1
        return out

    def check(self, where: str) -> None:
        """Raise if more than max_fraction of the samples seen were skipped (all of them, whatever max_fraction)."""
        n = len(self.skipped)
        if n and (n == self.seen or n > self.max_fraction * self.seen):
            first = ", ".join(s["sample"] for s in self.skipped[:5])
            raise DataError(f"{where}: {n} of {self.seen} samples were skipped ({self.counts()}; first: {first}), "
                            f"more than bad_samples.max_fraction={self.max_fraction}")


def _read_caption(path: Path) -> str:
    try:
        return _clean_caption(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: caption is not UTF-8 ({e})") from e


def read_image_text_folder(folder, bad: BadSamples | None = None, limit: int | None = None) -> list[dict]:
    """Each image in ``folder`` and its sub-folders, with its sibling ``.txt`` caption, as {file, caption}, in
    path order; with ``limit``, the first ``limit`` of them that have a caption.

    Images are not decoded here. A set with millions of images is opened later, by
    whatever loads each batch. An empty caption goes to ``bad`` (default: raise).
    """
    bad = BadSamples() if bad is None else bad
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: image-text folder not found")
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    records = []
    for img in images:
        if limit is not None and len(records) >= limit:
            break
        txt = img.with_suffix(".txt")
        if not txt.is_file():
            raise DataError(f"{img}: no caption file {txt.name} beside it")
        caption = _read_caption(txt)
        if caption:
            records.append({"file": str(img), "caption": caption})
        else:
            bad.bad(str(img), "empty caption", f"{txt}: caption file is empty")
    return records


def _expand_braces(pattern: str) -> list[str]:
    """Expand ``{000000..000003}`` (a zero-padded numeric range) and ``{a,b}`` (alternatives),
    as webdataset's braceexpand does. Several groups may follow each other, but they may not nest."""
    start = pattern.find("{")
    if start < 0:
        if "}" in pattern:
            raise DataError(f"{pattern}: unbalanced braces in shard pattern")
        return [pattern]
    end = pattern.find("}", start)
    if end < 0 or "{" in pattern[start + 1:end]:
        raise DataError(f"{pattern}: unbalanced or nested braces in shard pattern")
    body = pattern[start + 1:end]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.groups()
        # Pad to the widest bound when either bound has a leading zero.
        width = max(len(lo), len(hi)) if lo.startswith("0") or hi.startswith("0") else 0
        step = 1 if int(hi) >= int(lo) else -1
        items = [str(i).zfill(width) for i in range(int(lo), int(hi) + step, step)]
    else:
        items = body.split(",")
    head, tail = pattern[:start], pattern[end + 1:]
    return [head + item + rest for item in items for rest in _expand_braces(tail)]


def expand_shards(shards: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Shard paths from a list of paths or a brace pattern such as ``shards/{000000..000003}.tar``.

    Every shard must exist, and the error names the ones that do not.
    """
    specs = [shards] if isinstance(shards, (str, os.PathLike)) else list(shards)
    paths = [Path(p) for s in specs for p in _expand_braces(str(s))]
    if not paths:
        raise DataError("no tar shards given")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"{missing[0]}: tar shard not found ({len(missing)} of {len(paths)} missing: "
                        f"{_names(missing)})")
    return paths


def check_image_text_paths(train: dict, where: str) -> None:
    """Every path a paper model's post-pretraining data (config `backbones.<name>.data`) names exists: checked as
    the DAG is built, so a dry run with placeholder paths fails at once, naming the key, not its jobs later."""
    if "image_text_folder" in train and not Path(train["image_text_folder"]).is_dir():
        raise DataError(f"config key {where}.image_text_folder: {train['image_text_folder']} is not a directory")
    if "shards" in train:
        try:
            expand_shards(train["shards"])
        except DataError as e:
            raise DataError(f"config key {where}.shards: {e}") from e


def check_t2i_compbench_paths(t2i: dict, where: str = "t2i_compbench") -> None:
    """T2I-CompBench's prompt folder (config `t2i_compbench.prompts`) has every category's train and val file,
    checked as the DAG is built."""
    try:
        read_compbench_prompts(t2i["prompts"])
    except DataError as e:
        raise DataError(f"config key {where}.prompts: {e}") from e


def check_coco_paths(coco: dict, where: str = "coco") -> None:
    """COCO2014 val's captions file and image folder (config `coco`) exist, checked as the DAG is built."""
    if not Path(coco["annotations"]).is_file():
        raise DataError(f"config key {where}.annotations: {coco['annotations']} is not a file")
    if not Path(coco["images"]).is_dir():
        raise DataError(f"config key {where}.images: {coco['images']} is not a directory")


def _tar_samples(shard: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) for each sample. This is webdataset's grouping: the key is the
    member path up to the first dot of its base name, and the extension is the rest, in lower case."""
    key, files = None, {}
    try:
        with tarfile.open(shard, "r|*") as tar:  # streaming: shards are read once, front to back
            for member in tar:
                if not member.isreg():
                    continue
                dirname, _, base = member.name.rpartition("/")
                if base.startswith("__") and base.endswith("__"):
                    continue  # webdataset's metadata members
                stem, dot, ext = base.partition(".")
                if not dot or not stem:
                    continue  # webdataset skips names without an extension too
                k = f"{dirname}/{stem}" if dirname else stem
                if k != key:
                    if files:
                        yield key, files
                    key, files = k, {}
                ext = ext.lower()
                if ext in files:
                    raise DataError(f"{shard}: sample {k!r} has two {ext!r} members")
                files[ext] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{shard}: unreadable tar shard ({e})") from e
    if files:
        yield key, files


class TarShards:
    """Iterate over (key, RGB PIL image, caption) from webdataset tar shards, in the order of the shards.

    An empty caption or a corrupt image goes to ``bad`` (default: raise DataError naming the shard and the key);
    skipped samples are named ``"<shard name>:<key>"``, and the count restarts at each pass. A sample without a
    caption member always raises. ``<key>.json`` metadata is read past.
    """

    def __init__(self, shards: str | os.PathLike | Sequence[str | os.PathLike], bad: BadSamples | None = None):
        self.shards = expand_shards(shards)
        self.bad = BadSamples() if bad is None else bad

    def __iter__(self) -> Iterator[tuple[str, Image.Image, str]]:
        self.bad.reset()
        for shard in self.shards:
            for key, files in _tar_samples(shard):
                ext = next((s[1:] for s in IMAGE_SUFFIXES if s[1:] in files), None)
                if ext is None:
                    raise DataError(f"{shard}: sample {key!r} has no image (members: {', '.join(sorted(files))})")
                if "txt" not in files:
                    raise DataError(f"{shard}: sample {key!r} has no caption ({key}.txt)")
                try:
                    caption = _clean_caption(files["txt"].decode("utf-8"))
                except UnicodeDecodeError as e:
                    raise DataError(f"{shard}: {key}.txt: caption is not UTF-8 ({e})") from e
                if not caption:
                    self.bad.bad(f"{shard.name}:{key}", "empty caption", f"{shard}: {key}.txt: caption is empty")
                    continue
                try:
                    image = open_rgb(io.BytesIO(files[ext]), name=f"{shard}: {key}.{ext}")
                except DataError as e:
                    self.bad.bad(f"{shard.name}:{key}", "unreadable image", str(e))
                    continue
                self.bad.good()
                yield key, image, caption
