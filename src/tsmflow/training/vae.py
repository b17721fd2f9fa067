"""Stages `train_vae`, `encode_latents` and `evaluate_vae` for the miniature's AutoencoderKL."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from accelerate.utils import set_seed
from diffusers import AutoencoderKL
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..data.io import atomic_path, load_dataset, write_json
from ..models.mini import build_vae
from .loop import TrainConfig, infinite_batches, resumable_output, to_pixels, train
from .objectives import VAEObjective


@torch.no_grad()
def posterior(vae: AutoencoderKL, pixels: torch.Tensor, batch_size: int = 256):
    means, stds = [], []
    for i in range(0, len(pixels), batch_size):
        d = vae.encode(pixels[i:i + batch_size]).latent_dist
        means.append(d.mean)
        stds.append(d.std)
    return torch.cat(means), torch.cat(stds)


def train_vae(data_dir, cfg: dict, out_dir) -> dict:
    images, _ = load_dataset(data_dir)
    pixels = to_pixels(images)
    tcfg = TrainConfig.from_dict(cfg["train"])
    set_seed(tcfg.seed)  # the initial weights too: a rerun gives the same model
    vae = build_vae(cfg["arch"], images.shape[1])
    with resumable_output(out_dir) as (tmp, ckpt):
        stats = train(VAEObjective(vae, cfg["kl_weight"]), vae.parameters(),
                      infinite_batches({"pixels": pixels}, tcfg.batch_size, tcfg.seed), tcfg,
                      tmp / "loss.csv", desc="vae", checkpoint=ckpt / "train.safetensors")
        vae.eval()
        # SD's recipe: scale latents to unit variance so the noise schedule fits them
        mean, _ = posterior(vae, pixels[: cfg.get("scale_estimate_n", 2000)])
        vae.register_to_config(scaling_factor=float(1.0 / mean.std()))
        vae.save_pretrained(tmp)
        stats["params"] = sum(p.numel() for p in vae.parameters())
        stats["scaling_factor"] = vae.config.scaling_factor
        write_json(Path(tmp) / "stats.json", stats)
    return stats


def encode_latents(data_dir, vae_dir, out_path) -> None:
    """Cache the scaled posterior (mean, std) of every training image once."""
    images, labels = load_dataset(data_dir)
    vae = load_vae(vae_dir)
    mean, std = posterior(vae, to_pixels(images))
    s = vae.config.scaling_factor
    with atomic_path(out_path) as tmp:
        save_file({"mean": (mean * s).contiguous(), "std": (std * s).contiguous()}, tmp,
                  metadata={"n": str(len(labels)), "scaling_factor": str(s)})


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: np.ndarray, batch_size: int = 256, progress: bool = False) -> np.ndarray:
    """uint8 (N, H, W, 3) images through the VAE (posterior mean, then decoder), as uint8 again.

    This is what a perfect denoiser's sample looks like to anything that reads pixels."""
    recs = []
    for i in tqdm(range(0, len(images), batch_size), desc="vae reconstruction", mininterval=2.0,
                  disable=not progress):
        x = to_pixels(images[i:i + batch_size]).to(vae.device, vae.dtype)
        r = vae.decode(vae.encode(x).latent_dist.mean).sample.float()
        recs.append(((r.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(recs) if recs else np.zeros_like(images)


def load_vae(vae_dir) -> AutoencoderKL:
    return AutoencoderKL.from_pretrained(vae_dir, use_safetensors=True).eval()


@torch.no_grad()
def evaluate_vae(data_dir, vae_dir, n: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """Reconstruction error on held-out images: MSE in [0,1] pixel units and PSNR."""
    images, _ = load_dataset(data_dir)
    images = images[:n]
    rec = reconstruct(load_vae(vae_dir), images, progress=True)
    err = (rec.astype(np.float64) - images.astype(np.float64)) / 255.0
    mse = float((err**2).mean())
    per_image = (err**2).mean(axis=(1, 2, 3))
    return ({"n_images": len(images), "mse": mse, "psnr_db": float(10 * np.log10(1.0 / mse)),
             "mae": float(np.abs(err).mean()), "mse_p95": float(np.percentile(per_image, 95))},
            images, rec)
