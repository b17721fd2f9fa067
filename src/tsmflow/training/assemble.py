"""Stages `assemble_router` (TSM's assembling stage) and `train_moe_lora` (its MoE-LoRA baseline).

Assembling: the fostered experts are loaded and frozen; only the routers
(FC and E of every LoRA layer) train, over all timesteps. MoE-LoRA: K fresh
experts and a softmax feature router train jointly over all timesteps.
"""
from __future__ import annotations

import json
from pathlib import Path

from accelerate.utils import set_seed
from safetensors.torch import save_file

from ..adapters.lora import add_lora, adapter_parameters, lora_parts, save_lora
from ..data.io import write_json
from ..models.backbone import Backbone
from ..runs import ROUTER_CONFIG, ROUTER_WEIGHTS, attach, build_mixture, load_expert_sets, lora_models, moe_mixture
from .experts import freeze, load_task_data, lora_spec, model_params
from .loop import TrainConfig, infinite_batches, resumable_output, seeded, train
from .objectives import DiffusionObjective


def _train_mixture(backbone, mixture, params, train_cfg: dict, caption_dropout: float, latents_path,
                   labels_path, tmp: Path, ckpt: Path, desc: str) -> dict:
    tensors, extra = load_task_data(latents_path, labels_path)
    tcfg = TrainConfig.from_dict(train_cfg)
    te_routed = any(k.startswith("text_encoder") for k in mixture.routers.keys()) or backbone.encode_per_step
    attach(backbone, mixture, te_routed)
    objective = DiffusionObjective(backbone, caption_dropout=caption_dropout, train_text_encoder=te_routed)
    stats = train(objective, params, infinite_batches(tensors, tcfg.batch_size, tcfg.seed, extra=extra),
                  tcfg, tmp / "loss.csv", desc=desc, checkpoint=ckpt / "train.safetensors")
    save_file({k: v.detach().contiguous().cpu() for k, v in mixture.state_dict().items()},
              str(tmp / ROUTER_WEIGHTS), metadata={"format": "pt"})
    stats.update(train_samples=len(extra["caption"]), model_params=model_params(backbone))
    return stats


def assemble_router(backbone: Backbone, spec: dict, expert_dirs, router_cfg: dict, caption_dropout: float,
                    latents_path, labels_path, out_dir) -> dict:
    freeze(backbone)
    scales = load_expert_sets(backbone, expert_dirs)
    models = lora_models(backbone, list(expert_dirs)[0])
    train_cfg = seeded(router_cfg["train"], spec.get("seed", 0))
    set_seed(train_cfg["seed"])  # the routers' initial weights too
    mixture = build_mixture(backbone, spec, scales, models)
    params = list(mixture.parameters())
    with resumable_output(out_dir) as (tmp, ckpt):
        stats = _train_mixture(backbone, mixture, params, train_cfg, caption_dropout, latents_path,
                               labels_path, tmp, ckpt, desc=f"assemble router ({spec.get('core')} + {spec['context']})")
        stats.update(core=spec.get("core"), context=list(spec["context"]),
                     router_input=spec.get("router_input", "both"), per_token=spec.get("per_token", False),
                     router_params=sum(p.numel() for p in params))
        (tmp / ROUTER_CONFIG).write_text(json.dumps(stats, indent=2))
        write_json(tmp / "stats.json", stats)
    return stats


def train_moe_lora(backbone: Backbone, spec: dict, lora_cfg: dict, latents_path, labels_path, out_dir) -> dict:
    freeze(backbone)
    lspec = lora_spec(lora_cfg, spec["rank"])
    names = [f"moe{k}" for k in range(spec["n_experts"])]
    train_cfg = {**seeded(lora_cfg["train"], spec.get("seed", 0)), "steps": spec["steps"]}
    set_seed(train_cfg["seed"])  # peft's random A init too: a rerun gives the same experts
    for name in names:
        add_lora(backbone, name, lspec)
    models = {k: m for k, (m, _) in lora_parts(backbone, lspec).items()}
    mixture = moe_mixture(backbone, models, names)
    # the mixture switched peft's own adapter path off (and with it requires_grad); experts train here
    experts = [p for m in models.values() for n in names for p in adapter_parameters(m, n)]
    for p in experts:
        p.requires_grad_(True)
    params = experts + list(mixture.parameters())
    with resumable_output(out_dir) as (tmp, ckpt):
        stats = _train_mixture(backbone, mixture, params, train_cfg, lora_cfg["caption_dropout"], latents_path,
                               labels_path, tmp, ckpt, desc=f"MoE-LoRA {spec['n_experts']}x r{spec['rank']}")
        for k, name in enumerate(names):
            (tmp / f"expert{k}").mkdir()
            save_lora(tmp / f"expert{k}", backbone, name, lspec, extra={"moe_expert": k})
        stats.update(n_experts=spec["n_experts"], rank=spec["rank"],
                     router_params=sum(p.numel() for p in mixture.parameters()),
                     expert_params=sum(p.numel() for p in experts))
        (tmp / ROUTER_CONFIG).write_text(json.dumps(stats, indent=2))
        write_json(tmp / "stats.json", stats)
    return stats
