"""Stage `train_expert`: TSM's fostering stage, one LoRA expert per timestep interval.

Expert i of a set with n intervals is a fresh LoRA (zero B) on the denoiser's
attention projections and the text encoder's q/v projections, trained with
t drawn from interval i only. n=1 is vanilla LoRA. Each expert is its own job.
"""
from __future__ import annotations

from pathlib import Path

import torch
from accelerate.utils import set_seed
from safetensors.torch import load_file

from ..adapters.experts import interval_bounds
from ..expert_sets import ExpertSet
from ..adapters.lora import LoraSpec, adapter_parameters, add_lora, save_lora
from ..data.io import DataError, read_labels, write_json
from ..models.backbone import Backbone
from .loop import TrainConfig, infinite_batches, resumable_output, seeded, train
from .objectives import DiffusionObjective, UniformTimesteps


def load_task_data(latents_path, labels_path) -> tuple[dict, dict]:
    """Cached latents + captions, and where labels carry a GORS reward, a per-sample loss factor: "weight" (the loss
    is the reward-weighted mean) or, for rows with reward_loss "mean" (T2I-CompBench's GORS), "reward" (the loss
    is the batch mean of reward * mse)."""
    lat = load_file(str(latents_path))
    labels = read_labels(labels_path)
    if len(labels) != len(lat["mean"]):
        raise DataError(f"{latents_path}: {len(lat['mean'])} latents but {len(labels)} labels in {labels_path}")
    tensors = {"latent_mean": lat["mean"], "latent_std": lat["std"]}
    if all("reward" in r for r in labels):
        forms = {r.get("reward_loss", "weighted_mean") for r in labels}
        if len(forms) > 1 or not forms <= {"weighted_mean", "mean"}:
            raise DataError(f"{labels_path}: reward_loss must be one of weighted_mean, mean for all rows, "
                            f"found {sorted(forms)}")
        key = "reward" if forms == {"mean"} else "weight"
        tensors[key] = torch.tensor([float(r["reward"]) for r in labels])
    return tensors, {"caption": [r["caption"] for r in labels]}


def lora_spec(lora_cfg: dict, rank: int) -> LoraSpec:
    return LoraSpec(rank=rank, alpha=lora_cfg["alpha_over_rank"] * rank,
                    denoiser_targets=lora_cfg["denoiser_targets"],
                    text_encoder_targets=lora_cfg["text_encoder_targets"], dropout=lora_cfg.get("dropout", 0.0))


def model_params(backbone: Backbone) -> int:
    """Denoiser + text encoder parameters, LoRA excluded (the denominator of TSM Table 9's percentage)."""
    models = [backbone.denoiser, *backbone.text_encoders]
    return sum(p.numel() for m in models for n, p in m.named_parameters() if "lora_" not in n)


def freeze(backbone: Backbone) -> None:
    for m in [backbone.denoiser, *backbone.text_encoders]:
        m.requires_grad_(False)


def train_expert(backbone: Backbone, es: ExpertSet, interval: int, lora_cfg: dict, latents_path, labels_path,
                 out_dir) -> dict:
    """Train expert `interval` of expert set `es` on `backbone` (the pre-trained base) and save it.

    The LoRA trains at `lora_cfg["train"]`'s lr and weight decay; with `text_encoder_train`, the text encoders'
    LoRA at its own (TSM Sup. A gives SD3 one per model)."""
    T = backbone.num_train_timesteps
    lo, hi = interval_bounds(interval, es.n, T)
    spec = lora_spec(lora_cfg, es.rank)
    freeze(backbone)
    name = es.adapter_name(interval)
    tcfg = TrainConfig.from_dict({**seeded(lora_cfg["train"], es.seed, interval), "steps": es.steps})
    set_seed(tcfg.seed)  # peft's random A init too: a rerun gives the same expert
    params = add_lora(backbone, name, spec)
    if lora_cfg.get("text_encoder_train"):
        te = lora_cfg["text_encoder_train"]
        text = [p for m in backbone.text_encoders for p in adapter_parameters(m, name)]
        params = [{"params": adapter_parameters(backbone.denoiser, name)},
                  {"params": text, "lr": te["lr"], "weight_decay": te["weight_decay"]}]
    tensors, extra = load_task_data(latents_path, labels_path)
    objective = DiffusionObjective(backbone, timesteps=UniformTimesteps(lo, hi),
                                   caption_dropout=lora_cfg["caption_dropout"],
                                   train_text_encoder=bool(spec.text_encoder_targets))
    with resumable_output(out_dir) as (tmp, ckpt):
        stats = train(objective, params, infinite_batches(tensors, tcfg.batch_size, tcfg.seed, extra=extra),
                      tcfg, tmp / "loss.csv", desc=f"{es.name} expert {interval}",
                      checkpoint=ckpt / "train.safetensors")
        save_lora(tmp, backbone, name, spec, extra={"expert_set": es.name, "interval": interval,
                                                    "t_range": [lo, hi], "num_train_timesteps": T})
        stats.update(expert_set=es.name, interval=interval, t_range=[lo, hi], train_samples=len(extra["caption"]),
                     weighted=("weight" in tensors or "reward" in tensors), model_params=model_params(backbone), family=backbone.family)
        write_json(Path(tmp) / "stats.json", stats)
    return stats
