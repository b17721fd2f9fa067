"""A real backbone's data: its post-pretraining image-text data as cached VAE latents, and the COCO2014 FID set.

TSM's post-pretraining task (Sec. 4.2, Sup. A and C.1) on a paper model: LoRA experts trained on LAION-style
image-text data (`encode_image_text` caches it in the layout the miniature's task data has), scored by FID-30K on
COCO2014 val captions against the real val images (`coco_fid_set`, a reference folder like a miniature split).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..config import ConfigError
from ..models.backbone import device, pretrained_kwargs
from .adapters import (
    BadSamples,
    TarShards,
    check_images_exist,
    coco_reference_folder,
    coco_subsample,
    read_coco_captions,
    read_image_text_folder,
)
from .io import DataError, atomic_dir, atomic_path, open_rgb, read_labels, write_labels

log = logging.getLogger(__name__)
SKIPPED = "skipped.jsonl"  # beside labels.jsonl: every sample the encoding skipped, and why


def image_text_pairs(data: dict, bad: BadSamples):
    """(key, RGB image, caption) of the post-pretraining data: an image-text folder or webdataset shards.
    Samples that cannot be used go to `bad` (config `data.bad_samples`)."""
    limit = data.get("max_images")
    if "image_text_folder" in data:
        for r in read_image_text_folder(data["image_text_folder"], bad, limit):
            try:
                image = open_rgb(r["file"])
            except DataError as e:
                bad.bad(r["file"], "unreadable image", str(e))
                continue
            bad.good()
            yield r["file"], image, r["caption"]
        return
    for n, (key, image, caption) in enumerate(TarShards(data["shards"], bad)):
        if limit is not None and n >= limit:
            return
        yield key, image, caption


def _pixels(images: list[Image.Image], resolution: int) -> torch.Tensor:
    """Center-crop to a square and resize (as diffusers' trainers prepare images), in [-1, 1]."""
    arrays = [np.asarray(ImageOps.fit(im, (resolution, resolution), method=Image.Resampling.BICUBIC))
              for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1


@torch.no_grad()
def _encode(spec: dict, items, latents_path, batch_size: int) -> list[dict]:
    """Cache the scaled VAE posterior (mean, std) of each (key, RGB image, caption) of `items`, in order, at the
    spec's resolution; returns the {file, caption} records of what was encoded."""
    from diffusers import AutoencoderKL
    # the VAE alone: the text encoders and denoiser (SD3's T5: ~10 GB) are not needed to encode images
    vae = AutoencoderKL.from_pretrained(spec["pretrained"], subfolder="vae", **pretrained_kwargs(spec))
    vae.requires_grad_(False).eval().to(device())
    cfg = vae.config
    shift = getattr(cfg, "shift_factor", None) or 0.0
    means, stds, labels, batch = [], [], [], []

    def flush():
        x = _pixels([im for _, im, _ in batch], spec["resolution"]).to(vae.device, vae.dtype)
        d = vae.encode(x).latent_dist
        means.append(((d.mean - shift) * cfg.scaling_factor).cpu())
        stds.append((d.std * cfg.scaling_factor).cpu())
        labels.extend({"file": key, "caption": caption} for key, _, caption in batch)
        batch.clear()

    for item in tqdm(items, desc="encoding", mininterval=10.0):
        batch.append(item)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if labels:
        with atomic_path(latents_path) as tmp:
            save_file({"mean": torch.cat(means).contiguous(), "std": torch.cat(stds).contiguous()}, str(tmp),
                      metadata={"n": str(len(labels)), "scaling_factor": str(cfg.scaling_factor),
                                "shift_factor": str(shift)})
    return labels


def encode_image_text(spec: dict, data: dict, latents_path, data_dir, batch_size: int = 32) -> dict:
    """Cache the scaled VAE posterior (mean, std) of every training image, and its caption, once.

    Prompts are not cached: the text encoders' LoRA trains, so their embeddings change every step. The cache has
    the VAE's dtype (fp16 on a cluster); `data_dir/labels.jsonl` has the captions, as a miniature split's.
    """
    bad = BadSamples.from_config(data.get("bad_samples"))
    labels = _encode(spec, image_text_pairs(data, bad), latents_path, batch_size)
    where = data.get("image_text_folder") or data.get("shards")
    if bad.skipped:
        log.warning("%s: skipped %d of %d samples: %s", where, len(bad.skipped), bad.seen, bad.counts())
    bad.check(str(where))
    if not labels:
        raise DataError(f"{where}: no training images")
    with atomic_dir(data_dir) as tmp:
        write_labels(Path(tmp) / "labels.jsonl", labels)
        write_labels(Path(tmp) / SKIPPED, bad.skipped)
    with safe_open(str(latents_path), "pt") as f:  # its shape, without reading a cache of many GB
        latent_shape = f.get_slice("mean").get_shape()[1:]
    return {"n": len(labels), "latent_shape": latent_shape, "seen": bad.seen, "skipped": bad.counts()}


def encode_labelled_images(spec: dict, data_dir, latents_path, batch_size: int = 32) -> dict:
    """A labelled image folder's latents (a paper model's GORS images), in the order of its labels.jsonl."""
    data_dir = Path(data_dir)
    labels = read_labels(data_dir / "labels.jsonl")
    items = ((r["file"], open_rgb(data_dir / r["file"]), r["caption"]) for r in labels)
    encoded = _encode(spec, items, latents_path, batch_size)
    return {"n": len(encoded)}


def coco_fid_set(coco: dict, n_samples: int, out_dir) -> dict:
    """FID-30K's reference folder: `images/` with coco.n_reference val images (null: all), and labels.jsonl.

    The images are drawn by one seeded permutation, so the first n_samples of them (their captions are the
    prompts a run's FID samples answer) are the n_samples draw itself.
    """
    records = read_coco_captions(coco["annotations"], coco["images"])
    n_images = len({r["image_id"] for r in records})
    n_ref = coco.get("n_reference") or n_images
    if n_samples > n_ref:
        raise ConfigError(f"evaluation.fid.n_samples={n_samples} exceeds the {n_ref} reference images "
                          "(coco.n_reference)")
    if n_ref > n_images:
        raise DataError(f"{coco['annotations']}: coco.n_reference={n_ref}, but only {n_images} images have captions")
    chosen = coco_subsample(records, n_ref, coco.get("seed", 0))
    check_images_exist(chosen, coco["images"])
    with atomic_dir(out_dir) as tmp:
        coco_reference_folder(chosen, Path(tmp) / "images", resolution=coco.get("resolution", 512))
        (Path(tmp) / "images" / "labels.jsonl").rename(Path(tmp) / "labels.jsonl")
    return {"n_reference": n_ref, "n_prompts": n_samples}
