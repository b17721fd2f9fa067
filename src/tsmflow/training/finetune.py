"""Stages `train_full`, `train_dmp`, `train_scratch` and `deme_finetune_range`: further training of a
pre-trained denoiser, or (DMP Table 6) training one from scratch.

- full fine-tuning: every denoiser weight trains (DMP's "+ Fine-tuning" baseline);
- DMP / prompt tuning: the denoiser is frozen, only prompts (and the gate) train,
  with DMP's prompt balancing losses (`adapters/dmp.py`);
- from scratch: a freshly initialised denoiser of the backbone's architecture trains, with a DMP patch
  attached and training alongside it (`with_dmp`) or alone;
- a DeMe range model: full fine-tuning (or a LoRA, merged back into the weights) on one
  timestep range, with out-of-range timesteps at probability p and the consistency
  loss to the frozen pre-trained model.

All write a diffusers model directory (or a DMP adapter) plus `stats.json` and
`loss.csv`. `snapshots` saves the same at intermediate steps under `step<k>/`, so
FID can be reported over further-training iterations (DMP Table 3) from one job.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn as nn
from accelerate import PartialState
from accelerate.utils import set_seed

from ..adapters.dmp import DMPConfig, add_dmp, importance_loss, load_loss, save_dmp
from ..adapters.experts import interval_bounds
from ..adapters.lora import LoraSpec, add_lora, lora_layers
from ..data.io import write_json
from ..models.backbone import Backbone, text_dims
from ..models.mini import build_denoiser, build_scheduler
from .experts import freeze, load_task_data, model_params
from .loop import (TrainConfig, checked_snapshots, infinite_batches, keep_snapshots, resumable_output,
                   snapshot_saver, train)
from .objectives import DiffusionObjective, RangeTimesteps


def save_denoiser(backbone: Backbone, out_dir, denoiser: nn.Module | None = None) -> None:
    """A diffusers model dir with the training scheduler beside it, loadable by `load_mini_backbone`."""
    (denoiser or backbone.denoiser).save_pretrained(out_dir)
    backbone.noise_scheduler.save_pretrained(Path(out_dir) / "scheduler")


def full_weights(backbone: Backbone) -> list[nn.Parameter]:
    """Every denoiser weight, made trainable in fp32: AdamW updates on half-precision weights (a paper model's
    pipeline loads in fp16) would round away, and DeMe's task vectors are differences of these weights."""
    backbone.denoiser.float().requires_grad_(True)
    return list(backbone.denoiser.parameters())


def _run(objective, params, tensors, extra, tcfg: TrainConfig, out_dir, desc: str, save, snapshots=(),
         info: dict | None = None) -> dict:
    """Train, saving `save(dir)` at every snapshot step and at the end, into an atomic output dir.

    stats.json gets the training stats plus `info`."""
    snapshots = checked_snapshots(snapshots, tcfg.steps, desc)
    with resumable_output(out_dir) as (tmp, ckpt):
        stats = train(objective, params, infinite_batches(tensors, tcfg.batch_size, tcfg.seed, extra=extra),
                      tcfg, tmp / "loss.csv", desc=desc, checkpoint=ckpt / "train.safetensors",
                      on_step=snapshot_saver(snapshots, ckpt, save))
        keep_snapshots(snapshots, ckpt, tmp)
        if PartialState().is_main_process:  # the others' tmp is scratch
            save(tmp)
        stats.update(train_samples=len(extra["caption"]), snapshots=snapshots, **(info or {}))
        write_json(tmp / "stats.json", stats)
    return stats


def full_finetune(backbone: Backbone, cfg: dict, latents_path, labels_path, out_dir, caption_dropout: float) -> dict:
    """Every denoiser weight trains on the task data, over all timesteps."""
    tcfg = TrainConfig.from_dict({**cfg["train"], "steps": cfg["steps"]})
    set_seed(tcfg.seed)
    freeze(backbone)
    params = full_weights(backbone)
    tensors, extra = load_task_data(latents_path, labels_path)
    objective = DiffusionObjective(backbone, caption_dropout=caption_dropout)
    return _run(objective, params, tensors, extra, tcfg, out_dir, "full fine-tuning",
                lambda d: save_denoiser(backbone, d), cfg.get("snapshots", ()),
                {"method": "full", "model_params": model_params(backbone)})


class BalancedObjective(nn.Module):
    """DMP: the denoising loss plus the prompt balancing losses on the gates of the same forward."""

    def __init__(self, base: DiffusionObjective, dmp: nn.Module, importance: float, load: float):
        super().__init__()
        self.base, self.dmp = base, dmp
        self.importance, self.load = importance, load

    def forward(self, batch: dict) -> torch.Tensor:
        loss = self.base(batch)
        gates = self.dmp.last_gates
        if gates and self.importance:
            loss = loss + self.importance * importance_loss(gates)
        if gates and self.load:
            loss = loss + self.load * load_loss(gates)  # a count: adds a constant, no gradient (see dmp.py)
        return loss


def train_dmp(backbone: Backbone, cfg: dict, latents_path, labels_path, out_dir, caption_dropout: float) -> dict:
    """DMP (or prompt tuning, gate "none"): only prompts and gate train; the denoiser stays frozen."""
    tcfg = TrainConfig.from_dict({**cfg["train"], "steps": cfg["steps"]})
    set_seed(tcfg.seed)
    freeze(backbone)
    dcfg = DMPConfig(**cfg.get("dmp", {}))
    dmp = add_dmp(backbone, dcfg)
    tensors, extra = load_task_data(latents_path, labels_path)
    objective = BalancedObjective(DiffusionObjective(backbone, caption_dropout=caption_dropout), dmp,
                                  cfg.get("importance_weight", 0.0), cfg.get("load_weight", 0.0))
    # DMP Table 1: the patch's parameters against the denoiser's own (the paper counts the denoiser only)
    sizes = {"denoiser_params": sum(p.numel() for p in backbone.denoiser.parameters()),
             "added_params": sum(p.numel() for p in dmp.parameters())}
    return _run(objective, list(dmp.parameters()), tensors, extra, tcfg, out_dir, f"dmp ({dcfg.gate} gate)",
                lambda d: save_dmp(d, dmp), cfg.get("snapshots", ()),
                {"method": "dmp", "model_params": model_params(backbone), **sizes})


def train_scratch(backbone: Backbone, cfg: dict, arch_cfg: dict, latents_path, labels_path, out_dir,
                  caption_dropout: float) -> dict:
    """DMP Table 6: pre-train a fresh denoiser (`arch_cfg`: the backbone's config block) on the task data, with
    DMP attached from the first step and trained with it (`with_dmp`, prompt balancing as train_dmp) or alone.
    Saves the denoiser (and the patch) at the end and at every snapshot."""
    tcfg = TrainConfig.from_dict({**cfg["train"], "steps": cfg["steps"]})
    set_seed(tcfg.seed)  # the initial weights too: with and without DMP start from the same denoiser
    c, s, _ = backbone.latent_shape
    backbone.denoiser = build_denoiser(backbone.arch, arch_cfg["arch"], c, s, *text_dims(backbone))
    backbone.noise_scheduler = build_scheduler(arch_cfg["objective"], arch_cfg["num_train_timesteps"])
    params = list(backbone.denoiser.parameters())
    objective, dmp = DiffusionObjective(backbone, caption_dropout=caption_dropout), None
    info = {"method": "scratch", "with_dmp": bool(cfg.get("with_dmp")),
            "denoiser_params": sum(p.numel() for p in params)}
    if cfg.get("with_dmp"):
        dmp = add_dmp(backbone, DMPConfig(**cfg.get("dmp", {})))
        params += list(dmp.parameters())
        objective = BalancedObjective(objective, dmp, cfg.get("importance_weight", 0.0), cfg.get("load_weight", 0.0))

    def save(d):
        save_denoiser(backbone, d)
        if dmp is not None:
            save_dmp(d, dmp)

    tensors, extra = load_task_data(latents_path, labels_path)
    info["model_params"] = model_params(backbone)
    return _run(objective, params, tensors, extra, tcfg, out_dir, f"from scratch{' + DMP' if dmp else ''}", save,
                cfg.get("snapshots", ()), info)


def merged_lora_denoiser(backbone: Backbone, base: nn.Module, name: str) -> nn.Module:
    """A copy of `base` with adapter `name`'s delta B A * scale added to its weights (a plain model again)."""
    merged = copy.deepcopy(base)
    modules = dict(merged.named_modules())
    with torch.no_grad():
        for key, layer in lora_layers(backbone.denoiser).items():
            modules[key].weight += layer.get_delta_weight(name).to(modules[key].weight.dtype)
    return merged


def train_range_model(backbone: Backbone, cfg: dict, n: int, i: int, latents_path, labels_path, out_dir,
                      caption_dropout: float) -> dict:
    """DeMe: fine-tune a copy of the pre-trained denoiser on timestep range i of n (supplement Eq. 9).

    t is drawn from the range, or from outside it with probability p; the loss adds
    `consistency_weight` * ||eps_theta_i - eps_theta||^2 to the frozen pre-trained model.
    variant "full" trains every weight (the paper); "lora" trains a rank-r LoRA on the
    denoiser's attention projections, merged into the weights when saved, so it matches
    TSM's trainable parameters and everything downstream still sees a plain model.
    """
    T = backbone.num_train_timesteps
    lo, hi = interval_bounds(i, n, T)
    tcfg = TrainConfig.from_dict({**cfg["train"], "steps": cfg["steps"], "seed": cfg["train"].get("seed", 0) + i})
    set_seed(tcfg.seed)
    freeze(backbone)
    teacher = copy.deepcopy(backbone.denoiser).eval()
    if cfg.get("variant", "full") == "lora":
        spec = LoraSpec(rank=cfg["rank"], alpha=float(cfg["rank"]), denoiser_targets=cfg["lora_targets"],
                        text_encoder_targets=[])
        params = add_lora(backbone, "deme", spec)

        def save(d):
            save_denoiser(backbone, d, merged_lora_denoiser(backbone, teacher, "deme"))
    else:  # the teacher above keeps the pipeline's precision
        params = full_weights(backbone)

        def save(d):
            save_denoiser(backbone, d)
    tensors, extra = load_task_data(latents_path, labels_path)
    objective = DiffusionObjective(backbone, timesteps=RangeTimesteps(lo, hi, cfg["p"], T),
                                   caption_dropout=caption_dropout, teacher=teacher,
                                   consistency_weight=cfg["consistency_weight"])
    return _run(objective, params, tensors, extra, tcfg, out_dir, f"DeMe range {i}/{n} [{lo}, {hi})", save,
                info={"range": [lo, hi], "index": i, "n": n, "p": cfg["p"], "variant": cfg.get("variant", "full"),
                      "model_params": model_params(backbone)})
