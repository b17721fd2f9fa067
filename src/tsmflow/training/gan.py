"""DMD2's GAN phase for `distill_student`: a realism classifier on the fake score's bottleneck features.

The fake score's denoiser doubles as the discriminator's trunk: a forward hook takes the output of its bottleneck
(the UNet's mid block; the middle block of a transformer: DiT, MM-DiT) at a noised input, and a small head turns it
into one logit per sample. Real latents come from the data the backbone was trained on, each with its own caption.
The fake-score phase adds `fake_weight` x the classifier loss (real against the student's samples) and trains the
head with the fake adapter; the student phase adds `student_weight` x the non-saturating generator loss, whose
gradient reaches the student through the (not stepped) fake score. Both inputs are noised to a random t below
`max_t` first, as DMD2's "diffusion GAN" does, so the classifier sees what the fake score is trained on.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GanSpec:
    """Config `students.<name>.gan`: the two loss weights (DMD2's SD1.5 recipe: 1e-3, 1e-2) and the classifier's
    noise range (as a fraction of the schedule; DMD2: the whole schedule)."""
    student_weight: float = 1e-3
    fake_weight: float = 1e-2
    max_t: float = 1.0

    def __post_init__(self):
        if self.student_weight < 0 or self.fake_weight <= 0 or not 0 < self.max_t <= 1:
            raise ValueError(f"gan: needs student_weight >= 0, fake_weight > 0 and 0 < max_t <= 1, got {self}")


def bottleneck(denoiser: nn.Module) -> nn.Module:
    """The module whose output the classifier reads: a UNet's mid block, else the middle transformer block."""
    if getattr(denoiser, "mid_block", None) is not None:
        return denoiser.mid_block
    blocks = getattr(denoiser, "transformer_blocks", None)
    if blocks:
        return blocks[len(blocks) // 2]
    raise ValueError(f"{type(denoiser).__name__} has neither a mid_block nor transformer_blocks for the GAN head")


class FeatureTap:
    """A forward hook that keeps the last output of `module` (the image stream where a block returns a pair)."""

    def __init__(self, module: nn.Module):
        self.out: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self._keep)

    def _keep(self, _module, _inputs, out):
        self.out = out[-1] if isinstance(out, tuple) else out

    def take(self) -> torch.Tensor:
        if self.out is None:
            raise RuntimeError("the GAN head's bottleneck hook saw no forward pass")
        out, self.out = self.out, None
        return out

    def remove(self) -> None:
        self.handle.remove()


class RealismHead(nn.Module):
    """One logit per sample from bottleneck features: (B, C, H, W) maps through a strided conv, (B, N, D) tokens
    through a layer norm; either is then averaged over positions and read by a two-layer MLP."""

    def __init__(self, feature_shape: tuple[int, ...]):
        super().__init__()
        if len(feature_shape) == 3:
            c = feature_shape[0]
            self.trunk = nn.Sequential(nn.Conv2d(c, c, 3, stride=2, padding=1), nn.GroupNorm(min(32, c), c), nn.SiLU())
            self.pool = (2, 3)
        elif len(feature_shape) == 2:
            c = feature_shape[1]
            self.trunk = nn.LayerNorm(c)
            self.pool = (1,)
        else:
            raise ValueError(f"GAN head: bottleneck features of shape {feature_shape} are neither maps nor tokens")
        self.mlp = nn.Sequential(nn.Linear(c, c), nn.SiLU(), nn.Linear(c, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.trunk(features.float()).mean(dim=self.pool)).squeeze(-1)


def classifier_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The classifier's logistic loss: real samples towards 1, the student's towards 0."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The non-saturating generator loss: the student's samples towards "real"."""
    return F.softplus(-fake_logits).mean()
