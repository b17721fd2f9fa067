"""The real DAG (rules/real.smk): post-pretraining of a paper backbone, from its `config/backbones/*.yaml` spec.

TSM's post-pretraining task (Sec. 4.2, Sup. A and C.1) on a real model: LoRA experts trained on LAION-style
image-text data, assembled by a router, and scored by FID-30K on COCO2014 captions (TSM Table 12). The runs:

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

import numpy as np
import torch
from accelerate import PartialState
from diffusers import AutoencoderKL
from PIL import Image, ImageOps
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .adapters.lora import adapter_parameters
from .config import ConfigError
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
from .models.backbone import FAMILIES, Backbone, load_backbone, pretrained_kwargs
from .runs import attach_run_adapters
from .training import experts

TASK = "post"  # expert-set task: post-pretraining on general image-text data
ADAMW_BETAS = (0.9, 0.999)  # what loop.train uses when no param group sets its own
PAPER_ROWS = {"pixart_alpha": {"base": "PixArt-α", "tsm2": "PixArt-α + TSM"}}  # TSM Table 12
FAMILY_LABEL = {"sd15": "SD1.5", "sd2": "SD2", "pixart_alpha": "PixArt-α", "sd3": "SD3"}


# ---------------------------------------------------------------- what a spec trains


def _sets(spec: dict) -> tuple[ExpertSet, list[ExpertSet], ExpertSet]:
    """(core set, context sets, the vanilla LoRA with the core's parameter count)."""
    arch = FAMILIES[spec["family"]][1]
    r, steps, n_core = spec["lora"]["rank"], spec["optim"]["steps"], spec["tsm"]["core"]
    core = ExpertSet(arch, TASK, n_core, r, steps)
    context = [ExpertSet(arch, TASK, n, r, steps) for n in spec["tsm"]["context"]]
    return core, context, ExpertSet(arch, TASK, 1, r * n_core, steps)


def expert_sets(spec: dict) -> dict[str, ExpertSet]:
    """Every expert set the spec trains, by name: one training job per interval of each."""
    core, context, lora = _sets(spec)
    return {es.name: es for es in [core, *context, lora]}


def runs(spec: dict) -> dict[str, dict]:
    """The runs (rows of the table), in the miniature's run format (`runs.attach_run_adapters` loads them)."""
    core, context, lora = _sets(spec)
    out = {"base": {"method": "base"}}
    for es in [c for c in context if c.n == 1] + [lora]:
        out[f"lora_r{es.rank}"] = {"method": "lora", "experts": es.name}
    out["tsm1"] = {"method": "tsm1", "experts": core.name}
    out["tsm2"] = {"method": "tsm2", "core": core.name, "context": [c.name for c in context],
                   **spec.get("router", {})}
    return out


def train_config(spec: dict) -> dict:
    """`loop.TrainConfig` keys from Sup. A: global batch = batch_size (split over GPUs) x grad_accum."""
    o = spec["optim"]
    accum = o.get("grad_accum", 1)
    if o["global_batch_size"] % accum:
        raise ConfigError(f"optim.global_batch_size={o['global_batch_size']} is not a multiple of "
                          f"optim.grad_accum={accum}")
    return {"steps": o["steps"], "batch_size": o["global_batch_size"] // accum, "grad_accum": accum,
            "lr": o["denoiser"]["lr"], "weight_decay": o["denoiser"]["weight_decay"],
            "warmup_steps": o.get("warmup_steps", 0), "max_grad_norm": o.get("max_grad_norm", 1.0),
            "checkpoint_every": spec.get("checkpoint_every", 100), "seed": spec.get("seed", 0)}


def lora_config(spec: dict) -> dict:
    """The miniature's `lora:` block, from the spec (alpha scales with rank: alpha = r in Sup. A)."""
    lo = spec["lora"]
    return {"alpha_over_rank": lo["alpha"] / lo["rank"], "denoiser_targets": lo["denoiser_target_modules"],
            "text_encoder_targets": lo["text_encoder_target_modules"],
            "caption_dropout": spec.get("caption_dropout", 0.1), "train": train_config(spec)}


def optimizer_groups(backbone: Backbone, adapter: str, spec: dict) -> list[dict]:
    """AdamW groups of one adapter: denoiser LoRA and text-encoder LoRA, each with Sup. A's own lr and decay."""
    o = spec["optim"]
    text = [p for m in backbone.text_encoders for p in adapter_parameters(m, adapter)]
    return [{"params": adapter_parameters(backbone.denoiser, adapter), "lr": o["denoiser"]["lr"],
             "weight_decay": o["denoiser"]["weight_decay"], "betas": tuple(o["betas"])},
            {"params": text, "lr": o["text_encoder"]["lr"], "weight_decay": o["text_encoder"]["weight_decay"],
             "betas": tuple(o["betas"])}]


def router_config(spec: dict) -> dict:
    """`training.assemble`'s router block: the assembling stage trains as long as fostering, at the denoiser's lr."""
    if tuple(spec["optim"]["betas"]) != ADAMW_BETAS:
        raise ConfigError(f"optim.betas={spec['optim']['betas']}: the router trains with AdamW betas {ADAMW_BETAS}")
    return {"train": train_config(spec)}


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


# ---------------------------------------------------------------- the table


def table_decl(spec: dict) -> dict:
    """The post-pretraining table, in `reporting.tables.build_table`'s format, beside TSM Table 12 where the
    paper has the backbone (PixArt-alpha only)."""
    name = FAMILY_LABEL[spec["family"]]
    labels = {"base": f"{name} (pre-trained)", "tsm1": f"{name} + TSM 1-stage", "tsm2": f"{name} + TSM 2-stage"}
    paper = PAPER_ROWS.get(spec["family"], {})
    rows = []
    for run, r in runs(spec).items():
        label = labels.get(run) or f"{name} + vanilla LoRA r{ExpertSet.parse(r['experts']).rank}"
        rows.append({"run": run, "label": label, **({"paper_row": paper[run]} if run in paper else {})})
    n = spec["fid"]["n_samples"]
    caption = (f"FID of {n} images sampled from COCO2014 val captions against the real val images, in clean-fid's "
               f"Inception features (lower is better). Trainable parameters as TSM Table 9 counts them. Data: "
               f"{spec['data']['train'].get('image_text_folder') or spec['data']['train'].get('shards')}.")
    decl = {"title": f"Post-pretraining {name}: FID on COCO2014", "rows": rows,
            "columns": ["fid", "trainable_params", "trainable_pct"]}
    if paper:
        decl.update(title=decl["title"] + " (TSM Table 12)", paper_table="tsm_table12")
        caption += (" Columns marked [TSM Table 12] are the paper's numbers (PixArt-α post-pretrained on "
                    "SAM-LLaVA-Captions10M, FID-30K), for reference only: not computed by this workflow.")
    decl["caption"] = caption
    return decl
