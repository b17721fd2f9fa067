"""Stage `pretrain_base`: pre-train a miniature denoiser on cached latents and captions.

This stands in for "the pre-trained model" of the papers: every fine-tuning
method later starts from the checkpoint written here.
"""
from __future__ import annotations

from pathlib import Path

from accelerate.utils import set_seed
from safetensors.torch import load_file

from ..data.io import DataError, read_labels, write_json
from ..models.backbone import load_mini_backbone, text_dims
from ..models.mini import build_denoiser, build_scheduler
from .loop import TrainConfig, infinite_batches, resumable_output, train
from .objectives import DiffusionObjective


def load_latents(latents_path, labels_path) -> tuple[dict, list[str]]:
    lat = load_file(str(latents_path))
    captions = [r["caption"] for r in read_labels(labels_path)]
    if len(captions) != len(lat["mean"]):
        raise DataError(f"{latents_path}: {len(lat['mean'])} latents but {len(captions)} labels in {labels_path}")
    return {"latent_mean": lat["mean"], "latent_std": lat["std"]}, captions


def pretrain_denoiser(arch: str, cfg: dict, latents_path, labels_path, vae_dir, text_dir, out_dir,
                      init_dir=None) -> dict:
    """`init_dir`: continue from that saved denoiser (its arch; cfg["arch"] is then unused) instead of fresh weights."""
    bb = load_mini_backbone(arch, init_dir, vae_dir, text_dir)
    c, s, _ = bb.latent_shape
    tcfg = TrainConfig.from_dict(cfg["train"])
    set_seed(tcfg.seed)  # the initial weights too: a rerun gives the same model
    if init_dir is None:
        bb.denoiser = build_denoiser(arch, cfg["arch"], c, s, *text_dims(bb))
    bb.noise_scheduler = build_scheduler(cfg["objective"], cfg["num_train_timesteps"])
    tensors, captions = load_latents(latents_path, labels_path)
    objective = DiffusionObjective(bb, caption_dropout=cfg["caption_dropout"])
    with resumable_output(out_dir) as (tmp, ckpt):
        stats = train(objective, bb.denoiser.parameters(),
                      infinite_batches(tensors, tcfg.batch_size, tcfg.seed, extra={"caption": captions}),
                      tcfg, tmp / "loss.csv", desc=f"pretrain {arch}", checkpoint=ckpt / "train.safetensors")
        bb.denoiser.save_pretrained(tmp)  # safetensors + config.json, loadable by diffusers
        bb.noise_scheduler.save_pretrained(Path(tmp) / "scheduler")
        stats.update(arch=arch, objective=cfg["objective"], params=sum(p.numel() for p in bb.denoiser.parameters()))
        write_json(Path(tmp) / "stats.json", stats)
    return stats
