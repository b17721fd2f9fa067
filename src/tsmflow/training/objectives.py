"""Objectives (batch -> loss modules) and timestep samplers that plug into `loop.train`.

Later stages add a sampler or an objective here, not a loop: interval experts
sample t from their interval, DeMe mixes in out-of-range t, GORS weights the loss.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.backbone import Backbone


class UniformTimesteps:
    """t ~ U{lo, ..., hi-1}; (0, T) is ordinary training, a sub-range trains an interval expert."""

    def __init__(self, lo: int, hi: int):
        if not 0 <= lo < hi:
            raise ValueError(f"timestep range [{lo}, {hi}) is empty or negative")
        self.lo, self.hi = lo, hi

    def __call__(self, n: int, device) -> torch.Tensor:
        return torch.randint(self.lo, self.hi, (n,), device=device)


class RangeTimesteps:
    """DeMe's sampler: t from outside [lo, hi) with probability p_out, else uniform inside it.

    "Outside" means the rest of [0, T). We follow the supplement's definition of p (the probability
    of sampling beyond the model's range); one sentence of its sensitivity study reads it the other
    way round. p_out = 0 is range-only training.
    """

    def __init__(self, lo: int, hi: int, p_out: float, num_train_timesteps: int):
        if not 0 <= lo < hi <= num_train_timesteps:
            raise ValueError(f"timestep range [{lo}, {hi}) is not a non-empty part of [0, {num_train_timesteps})")
        if not 0 <= p_out <= 1:
            raise ValueError(f"out-of-range probability p={p_out} is not in [0, 1]")
        if p_out > 0 and hi - lo == num_train_timesteps:
            raise ValueError(f"p={p_out} > 0 but the range [{lo}, {hi}) covers every timestep: nothing is outside")
        self.lo, self.hi, self.p_out, self.T = lo, hi, p_out, num_train_timesteps

    def __call__(self, n: int, device) -> torch.Tensor:
        inside = torch.randint(self.lo, self.hi, (n,), device=device)
        if self.p_out == 0:
            return inside
        # uniform over the T - (hi - lo) timesteps outside: draw an index, then skip over the range
        k = torch.randint(0, self.T - (self.hi - self.lo), (n,), device=device)
        outside = torch.where(k < self.lo, k, k + (self.hi - self.lo))
        return torch.where(torch.rand(n, device=device) < self.p_out, outside, inside)


def noisy_and_target(scheduler, objective: str, x0, noise, t):
    """Forward process and regression target for eps / v / rectified-flow objectives."""
    if objective == "flow":
        s = (t.float() / scheduler.config.num_train_timesteps).view(-1, 1, 1, 1)
        return (1 - s) * x0 + s * noise, noise - x0
    xt = scheduler.add_noise(x0, noise, t)
    if objective == "v":
        return xt, scheduler.get_velocity(x0, noise, t)
    return xt, noise


def predicted_x0(scheduler, objective: str, xt, pred, t):
    """The clean sample a prediction implies at timestep t: the inverse of `noisy_and_target` (per sample t)."""
    if objective == "flow":
        s = (t.float() / scheduler.config.num_train_timesteps).view(-1, 1, 1, 1)
        return xt - s * pred
    abar = scheduler.alphas_cumprod.to(xt.device)[t].float().view(-1, 1, 1, 1)
    if objective == "v":
        return abar.sqrt() * xt - (1 - abar).sqrt() * pred
    return (xt - (1 - abar).sqrt() * pred) / abar.sqrt()


class DiffusionObjective(nn.Module):
    """Denoising loss on cached latents with caption dropout (for classifier-free guidance).

    batch: "latent_mean", "latent_std" (scaled latents' posterior), "caption" (list of str),
    optional "weight" (per-sample weights of a weighted mean, e.g. a GORS reward) or "reward" (a per-sample
    factor of an ordinary mean: T2I-CompBench's GORS loss mean(reward * mse)).
    With a `teacher` (a frozen copy of the pre-trained denoiser), the loss adds DeMe's consistency
    term `consistency_weight * ||pred - teacher_pred||^2` (supplement Eq. 9), weighted per sample alike.
    """

    def __init__(self, backbone: Backbone, timesteps=None, caption_dropout: float = 0.1,
                 train_text_encoder: bool = False, teacher: nn.Module | None = None,
                 consistency_weight: float = 1.0):
        super().__init__()
        self.denoiser = backbone.denoiser
        self.text_encoders = nn.ModuleList(backbone.text_encoders)
        # routers are modules too: registering them lets accelerate place and wrap them
        self.routers = nn.ModuleList([r for r in backbone.routers if isinstance(r, nn.Module)])
        self.backbone = backbone
        self.timesteps = timesteps or UniformTimesteps(0, backbone.num_train_timesteps)
        self.caption_dropout = caption_dropout
        self.train_text_encoder = train_text_encoder
        # a plain attribute, not a submodule: its weights stay out of state_dict() and .train()
        self.__dict__["teacher"] = teacher.requires_grad_(False).eval() if teacher is not None else None
        self.consistency_weight = consistency_weight

    def forward(self, batch: dict) -> torch.Tensor:
        mean, std = batch["latent_mean"], batch["latent_std"]
        x0 = mean + std * torch.randn_like(mean)
        captions = [("" if torch.rand(()) < self.caption_dropout else c) for c in batch["caption"]]
        t = self.timesteps(x0.shape[0], x0.device)
        self.backbone.route(t)  # before encoding: text-encoder experts depend on t too
        with torch.set_grad_enabled(self.train_text_encoder and torch.is_grad_enabled()):
            cond = self.backbone.encode(captions)
        noise = torch.randn_like(x0)
        xt, target = noisy_and_target(self.backbone.noise_scheduler, self.backbone.objective, x0, noise, t)
        pred = self.backbone.predict(xt, t, cond, denoiser=self.denoiser)
        per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if self.teacher is not None:
            if next(self.teacher.parameters()).device != xt.device:
                self.teacher.to(xt.device)  # not a submodule, so accelerate does not place it
            with torch.no_grad():
                ref = self.backbone.predict(xt, t, cond, denoiser=self.teacher)
            per_sample = per_sample + self.consistency_weight * F.mse_loss(
                pred.float(), ref.float(), reduction="none").mean(dim=(1, 2, 3))
        if "reward" in batch:
            return (per_sample * batch["reward"]).mean()
        w = batch.get("weight")
        if w is None:
            return per_sample.mean()
        return (per_sample * w).sum() / w.sum().clamp_min(1e-8)


class VAEObjective(nn.Module):
    """Reconstruction MSE plus a small KL to the unit Gaussian, as in SD's VAE (minus the GAN)."""

    def __init__(self, vae, kl_weight: float):
        super().__init__()
        self.vae, self.kl_weight = vae, kl_weight

    def forward(self, batch: dict) -> torch.Tensor:
        x = batch["pixels"]
        post = self.vae.encode(x).latent_dist
        rec = self.vae.decode(post.sample()).sample
        return F.mse_loss(rec, x) + self.kl_weight * post.kl().mean() / x[0].numel()
