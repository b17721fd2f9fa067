"""The real DAG (rules/real.smk): post-pretraining of a paper backbone, from its `config/backbones/*.yaml` spec.

TSM's post-pretraining task (Sec. 4.2, Sup. A and C.1) on a real model: LoRA experts trained on LAION-style
image-text data, assembled by a router, and scored by FID-30K on COCO2014 captions (TSM Table 12). The runs
(planned, without torch, by `backbone_spec`):

- ``base``: the pre-trained pipeline;
- ``lora_r<r>``: vanilla LoRA, one expert over all timesteps. Every n=1 context scale of TSM is one (the
  paper's vanilla LoRA at r=4 is TSM's context expert); ``lora_r<n*r>`` has as many parameters as n core experts;
- ``tsm1``: the n core experts, each active on its interval;
- ``tsm2``: core + context experts and the router (TSM 2-stage).

Everything here reuses the miniature's pieces (expert sets, LoRA, router, loop, sampler, clean-fid): only the
backbone (a diffusers pipeline), the data (cached VAE latents of real images) and the hyper-parameters differ.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from accelerate import PartialState
from diffusers import AutoencoderKL
from PIL import Image, ImageOps
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .adapters.lora import adapter_parameters
from . import backbone_spec
from .backbone_spec import lora_config
from .config import ConfigError, load_backbone_config
from .data.adapters import (
    TarShards,
    check_images_exist,
    coco_reference_folder,
    coco_subsample,
    read_coco_captions,
    read_image_text_folder,
)
from .data.io import DataError, atomic_path, read_labels, write_labels
from .expert_sets import ExpertSet
from .models.backbone import Backbone, load_backbone, pretrained_kwargs
from .runs import attach_run_adapters
from .training import experts



# ---------------------------------------------------------------- optimizer groups


def optimizer_groups(backbone: Backbone, adapter: str, spec: dict) -> list[dict]:
    """AdamW groups of one adapter: denoiser LoRA and text-encoder LoRA, each with Sup. A's own lr and decay."""
    o = spec["optim"]
    text = [p for m in backbone.text_encoders for p in adapter_parameters(m, adapter)]
    return [{"params": adapter_parameters(backbone.denoiser, adapter), "lr": o["denoiser"]["lr"],
             "weight_decay": o["denoiser"]["weight_decay"], "betas": tuple(o["betas"])},
            {"params": text, "lr": o["text_encoder"]["lr"], "weight_decay": o["text_encoder"]["weight_decay"],
             "betas": tuple(o["betas"])}]


# ---------------------------------------------------------------- loading


def device() -> torch.device:
    return PartialState().device  # this process's GPU under accelerate launch, else cuda:0 or cpu


def load_real_backbone(spec: dict, run: dict | None = None, inputs=None, to_device: bool = False) -> Backbone:
    """The spec's pipeline as a Backbone, with a run's trained adapters attached; moved to the GPU if asked.

    Training leaves placement to accelerate, except the VAE: the pipeline encodes prompts on the VAE's device.
    """
    bb = load_backbone(spec)
    # the sampler's latent size comes from the VAE config, whose sample_size need not be the model's
    # resolution (VAEs are shared between models): sample at the spec's resolution
    bb.vae.register_to_config(sample_size=spec["resolution"])
    if run is not None:
        attach_run_adapters(bb, run, inputs)
    dev = device()
    if to_device:
        bb.to(dev)
        for r in bb.routers:
            if isinstance(r, torch.nn.Module):
                r.to(dev)
    else:
        bb.vae.to(dev)
    return bb


def run_fingerprint(spec: dict, run: dict, trained_dirs: list) -> str:
    """What a run's samples depend on: the spec (which names the pre-trained weights), the run, and the
    bytes of every file it trained. A sampling job resumes only work with the same fingerprint."""
    h = hashlib.sha256(json.dumps([spec, run], sort_keys=True, default=str).encode())
    for d in trained_dirs:
        for f in sorted(p for p in Path(d).rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(d)}\0".encode())
            h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


# ---------------------------------------------------------------- data


def image_text_pairs(data: dict):
    """(key, RGB image, caption) of the post-pretraining data: an image-text folder or webdataset shards."""
    limit = data.get("max_images")
    if "image_text_folder" in data:
        records = read_image_text_folder(data["image_text_folder"])
        for r in records[:limit]:
            try:
                with Image.open(r["file"]) as im:
                    image = im.convert("RGB")
            except OSError as e:
                raise DataError(f"{r['file']}: unreadable image ({e})") from e
            yield r["file"], image, r["caption"]
        return
    for n, (key, image, caption) in enumerate(TarShards(data["shards"])):
        if limit is not None and n >= limit:
            return
        yield key, image, caption


def _pixels(images: list[Image.Image], resolution: int) -> torch.Tensor:
    """Center-crop to a square and resize (as diffusers' trainers prepare images), in [-1, 1]."""
    arrays = [np.asarray(ImageOps.fit(im, (resolution, resolution), method=Image.Resampling.BICUBIC))
              for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1


@torch.no_grad()
def encode_image_text(spec: dict, data: dict, latents_path, labels_path, batch_size: int = 32) -> dict:
    """Cache the scaled VAE posterior (mean, std) of every training image, and its caption, once.

    Prompts are not cached: the text encoders' LoRA trains, so their embeddings change every step.
    The cache has the VAE's dtype (fp16 on a cluster) and the layout `training.experts.load_task_data` reads.
    """
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

    for item in tqdm(image_text_pairs(data), desc="encoding", mininterval=10.0):
        batch.append(item)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if not labels:
        raise DataError(f"no training images in {data}")
    with atomic_path(latents_path) as tmp:
        save_file({"mean": torch.cat(means).contiguous(), "std": torch.cat(stds).contiguous()}, str(tmp),
                  metadata={"n": str(len(labels)), "scaling_factor": str(cfg.scaling_factor),
                            "shift_factor": str(shift)})
    write_labels(labels_path, labels)
    return {"n": len(labels), "latent_shape": list(means[0].shape[1:])}


def coco_fid_set(coco: dict, fid: dict, out_dir) -> dict:
    """FID-30K's reference folder: n_reference COCO val images (all by default), one caption each.

    The images are drawn by one seeded permutation, so the first n_samples of them (their captions are
    the prompts that `sample_fid` reads) are the n_samples draw itself.
    """
    records = read_coco_captions(coco["annotations"], coco["images"])
    n_images = len({r["image_id"] for r in records})
    n_ref = fid.get("n_reference") or n_images
    if fid["n_samples"] > n_ref:
        raise ConfigError(f"fid.n_samples={fid['n_samples']} exceeds the {n_ref} reference images")
    if n_ref > n_images:
        raise DataError(f"{coco['annotations']}: fid.n_reference={n_ref}, but only {n_images} images have captions")
    chosen = coco_subsample(records, n_ref, fid.get("seed", 0))
    check_images_exist(chosen, coco["images"])
    coco_reference_folder(chosen, out_dir, resolution=fid.get("reference_resolution", 512))
    return {"n_reference": n_ref, "n_prompts": fid["n_samples"]}


def fid_prompts(reference_dir, n: int) -> list[str]:
    captions = [r["caption"] for r in read_labels(Path(reference_dir) / "labels.jsonl")]
    if n > len(captions):
        raise DataError(f"{reference_dir}: fid.n_samples={n} exceeds its {len(captions)} captions")
    return captions[:n]


# ---------------------------------------------------------------- training


def train_expert(backbone: Backbone, spec: dict, es: ExpertSet, interval: int, latents_path, labels_path,
                 out_dir) -> dict:
    """TSM fostering (`training.experts.train_expert`), with the text encoders' LoRA in its own AdamW group."""
    return experts.train_expert(backbone, es, interval, lora_config(spec), latents_path, labels_path, out_dir,
                                param_groups=lambda bb, name: optimizer_groups(bb, name, spec),
                                info={"family": spec["family"]})




# ---------------------------------------------------------------- using a trained run outside the DAG


def load_run(spec, run: str, workdir=".", to_device: bool = True) -> Backbone:
    """A run the real DAG trained, ready to sample: the spec's pipeline with the run's experts (and router).

    `spec` is a `config/backbones/*.yaml` path or its dict, `workdir` the directory the DAG ran in. Then
    ``sampling.sample.generate(bb, prompts, seeds, steps=50, guidance_scale=7.5)`` gives uint8 images.
    """
    spec = spec if isinstance(spec, dict) else load_backbone_config(spec)
    runs = backbone_spec.runs(spec)
    if run not in runs:
        raise ConfigError(f"run {run!r} is not one of this spec's runs {sorted(runs)}")
    inputs = backbone_spec.run_inputs(spec, run)
    paths = {"experts": [Path(workdir, d) for d in inputs["experts"]],
             **({"router": Path(workdir, inputs["router"])} if "router" in inputs else {})}
    for d in paths["experts"] + ([paths["router"]] if "router" in paths else []):
        if not d.is_dir():
            raise DataError(f"{d}: not trained yet (run the DAG for {backbone_spec.run_path(spec, run, '')})")
    return load_real_backbone(spec, runs[run], SimpleNamespace(**paths), to_device=to_device)
