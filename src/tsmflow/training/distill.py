"""Stage `distill_student`: distribution-matching distillation of a pre-trained teacher into a few-step student.

One objective serves DMD2's few-step students and WaDi's one-step VSD student; only the student's adapter differs
(`adapter`: full, lora, dora or lorad). Three denoisers:

- the frozen teacher, the "real" score, queried with classifier-free guidance at `guidance_scale`;
- the fake score, initialised from the teacher with its own adapter, trained with the ordinary denoising loss on
  the student's samples, so it tracks the student's distribution;
- the student generator, initialised from the teacher.

The student's gradient is DMD's: at a noised student sample, the difference of the fake and real x0 predictions,
divided per sample by the mean |x0_student - x0_real| (DMD's normalisation). The two alternate as DMD2's two-timescale
rule: `fake_updates_per_student` fake steps, then one student step (`loop.train`'s phases). Image-free: the
batches hold prompts only, as WaDi.

A K-step student (timesteps t_0 > ... > t_{K-1}) samples by DMD2's rule: predict x0 at t_k, re-noise it to t_{k+1}
with fresh noise (`sampling.sample`'s "renoise" solver). Training simulates that chain: one k per batch, the steps
before it run without gradients, and the student step at t_k gets the loss (DMD2's backward simulation).

Flow models (the mmdit) take the same loss: x0 comes from the velocity, x0 = x_t - s v, and re-noising is the flow
interpolation; nothing else changes. DMD2's GAN head (its second phase) is not built; it would add a phase that
trains a head on the fake model's features, with a term in the student's loss.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from accelerate.utils import set_seed

from ..adapters.lora import LoraSpec, adapter_parameters, inject, merge_adapters, save_adapter
from ..data.io import write_json
from ..evaluation.weights import change_summary, weight_change
from ..models.backbone import Backbone, cat_cond, repeat_cond
from ..students import scaled_timesteps
from .experts import freeze, model_params
from .finetune import save_denoiser
from .loop import TrainConfig, infinite_batches, resumable_output, seeded, train
from .objectives import noisy_and_target, predicted_x0

ADAPTERS = ("full", "lora", "dora", "lorad")


@dataclass
class AdapterSpec:
    """What trains in a student or fake-score copy of the teacher: every weight, or one peft adapter."""
    kind: str
    rank: int = 0
    targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])

    def __post_init__(self):
        if self.kind not in ADAPTERS:
            raise ValueError(f"unknown adapter {self.kind!r}; expected one of {ADAPTERS}")
        if self.kind != "full" and self.rank < 1:
            raise ValueError(f"adapter {self.kind!r} needs a rank >= 1, got {self.rank}")

    def lora(self) -> LoraSpec:
        return LoraSpec(rank=self.rank, alpha=float(self.rank), denoiser_targets=list(self.targets),
                        text_encoder_targets=[], variant=self.kind)


def adapted_copy(denoiser: nn.Module, spec: AdapterSpec, name: str) -> tuple[nn.Module, list[nn.Parameter]]:
    """A trainable copy of `denoiser` and its trainable parameters (all of them for `full`)."""
    model = copy.deepcopy(denoiser)
    if spec.kind == "full":
        model.requires_grad_(True)
        return model, list(model.parameters())
    model.requires_grad_(False)
    inject(spec.lora(), spec.targets, model, name)
    params = adapter_parameters(model, name)
    if not params:
        raise ValueError(f"{spec.kind} targets {spec.targets} matched no module of the denoiser")
    for p in params:
        p.requires_grad_(True)
    return model, params


class DMDObjective(nn.Module):
    """Phase "student": the distribution-matching loss; phase "fake": the fake score's denoising loss."""

    def __init__(self, backbone: Backbone, student: nn.Module, fake: nn.Module, teacher: nn.Module,
                 timesteps: list[int], guidance_scale: float, dm_t_range: tuple[float, float] = (0.02, 0.98)):
        super().__init__()
        self.student, self.fake = student, fake
        self.text_encoders = nn.ModuleList(backbone.text_encoders)  # frozen; registered so accelerate places them
        self.__dict__["teacher"] = teacher.requires_grad_(False).eval()  # not a submodule: never saved or trained
        self.backbone, self.timesteps, self.guidance_scale = backbone, list(timesteps), guidance_scale
        T = backbone.num_train_timesteps
        self.dm_lo, self.dm_hi = int(dm_t_range[0] * T), int(dm_t_range[1] * T)

    def x0(self, model: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        bb = self.backbone
        return predicted_x0(bb.noise_scheduler, bb.objective, x, bb.predict(x, t, cond, denoiser=model).float(), t)

    def noised(self, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        bb = self.backbone
        return noisy_and_target(bb.noise_scheduler, bb.objective, x0, torch.randn_like(x0), t)[0]

    def student_sample(self, cond: dict, n: int, grad: bool) -> torch.Tensor:
        """x0 of the student at a random one of its steps, reached by running its earlier steps (no gradient)."""
        dev = cond["hidden"].device
        at = [torch.full((n,), t, device=dev) for t in self.timesteps]
        x = torch.randn(n, *self.backbone.latent_shape, device=dev)
        k = int(torch.randint(len(at), ()))
        with torch.no_grad():
            for i in range(k):
                x = self.noised(self.x0(self.student, x, at[i], cond), at[i + 1])
        with torch.set_grad_enabled(grad):
            return self.x0(self.student, x, at[k], cond)

    def forward(self, batch: dict, phase: str) -> torch.Tensor:
        captions = list(batch["caption"])
        n = len(captions)
        with torch.no_grad():
            cond = self.backbone.encode(captions)
        dev = cond["hidden"].device
        if next(self.teacher.parameters()).device != dev:
            self.teacher.to(dev)
        if phase == "fake":
            x0 = self.student_sample(cond, n, grad=False)
            t = torch.randint(0, self.backbone.num_train_timesteps, (n,), device=dev)
            xt, target = noisy_and_target(self.backbone.noise_scheduler, self.backbone.objective, x0,
                                          torch.randn_like(x0), t)
            pred = self.backbone.predict(xt, t, cond, denoiser=self.fake)
            return F.mse_loss(pred.float(), target.float())
        if phase != "student":
            raise ValueError(f"unknown distillation phase {phase!r}")
        x0 = self.student_sample(cond, n, grad=True)
        with torch.no_grad():
            t = torch.randint(self.dm_lo, self.dm_hi, (n,), device=dev)
            xt = self.noised(x0.detach(), t)
            uncond = repeat_cond(self.backbone.encode([""]), n)
            real_u, real_c = self.x0(self.teacher, torch.cat([xt, xt]), torch.cat([t, t]),
                                     cat_cond(uncond, cond)).chunk(2)
            real = real_u + self.guidance_scale * (real_c - real_u)
            fake = self.x0(self.fake, xt, t, cond)
            weight = 1.0 / (x0.detach() - real).abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
            grad = torch.nan_to_num((fake - real) * weight)
        return 0.5 * F.mse_loss(x0.float(), (x0 - grad).detach().float())


def distill_student(backbone: Backbone, cfg: dict, captions: list[str], out_dir) -> dict:
    """Distil `backbone`'s denoiser (the teacher) into a student; writes the merged student and its adapter.

    cfg: `student` and `fake` (AdapterSpec fields; `fake` also its `lr`), `timesteps` (on 1000 steps),
    `guidance_scale`, `fake_updates_per_student`, `steps` (student updates), `train` (TrainConfig fields; its lr
    is the student's) and an optional `seed` (shifts train's, as every stage's seeds do). out_dir gets a diffusers denoiser (the student, adapters merged), `adapter/` (unless full),
    stats.json and loss.csv (with loss_student and loss_fake).
    """
    ratio = int(cfg["fake_updates_per_student"])
    phases = ["fake"] * ratio + ["student"]
    tcfg = TrainConfig.from_dict({**seeded(cfg["train"], cfg.get("seed", 0)), "steps": cfg["steps"] * len(phases)})
    set_seed(tcfg.seed)
    freeze(backbone)
    teacher = backbone.denoiser
    student_spec = AdapterSpec(**cfg["student"])
    fake_spec = AdapterSpec(**{k: v for k, v in cfg["fake"].items() if k != "lr"})
    student, student_params = adapted_copy(teacher, student_spec, "student")
    fake, fake_params = adapted_copy(teacher, fake_spec, "fake")
    timesteps = scaled_timesteps(cfg["timesteps"], backbone.num_train_timesteps)
    objective = DMDObjective(backbone, student, fake, teacher, timesteps, cfg["guidance_scale"])
    groups = [{"params": student_params, "phase": "student"},
              {"params": fake_params, "lr": cfg["fake"]["lr"], "phase": "fake"}]
    if not captions:
        raise ValueError("distillation needs prompts: the caption list is empty")
    batches = infinite_batches({"index": torch.arange(len(captions))}, tcfg.batch_size, tcfg.seed,
                               extra={"caption": list(captions)})
    desc = f"distil {len(timesteps)}-step {student_spec.kind} student"
    with resumable_output(out_dir) as (tmp, ckpt):
        stats = train(objective, groups, batches, tcfg, tmp / "loss.csv", desc=desc,
                      checkpoint=ckpt / "train.safetensors", phases=phases)
        final = merge_adapters(student) if student_spec.kind != "full" else student
        save_denoiser(backbone, tmp, final)
        change = weight_change(teacher, final)
        change.to_csv(tmp / "weight_change.csv", index=False)
        if student_spec.kind != "full":
            save_adapter(tmp / "adapter", {"denoiser": student}, "student", student_spec.lora(), {"arch": backbone.arch})
        stats.update(method="distill", adapter=student_spec.kind, rank=student_spec.rank, timesteps=timesteps,
                     nfe=len(timesteps), student_steps=cfg["steps"], fake_updates_per_student=ratio,
                     student_trainable_params=sum(p.numel() for p in student_params),
                     fake_trainable_params=sum(p.numel() for p in fake_params),
                     prompts=len(captions), model_params=model_params(backbone), **change_summary(change))
        write_json(Path(tmp) / "stats.json", stats)
    return stats


def student_config(defaults: dict, student: dict) -> dict:
    """`distill_student`'s cfg from config `distill` (shared settings) and one `students` entry (which wins)."""
    targets = student.get("targets", defaults["targets"])
    return {"student": {"kind": student["adapter"], "rank": student.get("rank", 0), "targets": targets},
            "fake": {"targets": targets, **defaults["fake"]},
            "timesteps": student["timesteps"], "steps": student["steps"], "seed": student.get("seed", 0),
            "guidance_scale": student.get("guidance_scale", defaults["guidance_scale"]),
            "fake_updates_per_student": student.get("fake_updates_per_student", defaults["fake_updates_per_student"]),
            "train": {**defaults["train"], **student.get("train", {})}}
