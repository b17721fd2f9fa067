"""Stage `distill_student`: distribution-matching distillation of a pre-trained teacher into a few-step student.

One objective serves DMD2's few-step students and WaDi's one-step VSD student; only the student's adapter differs
(`adapter`: full, lora, dora, lorad, tsm or tsm2). Three denoisers:

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
interpolation; nothing else changes.

DMD2's second phase, its GAN, is the student's optional `gan` key (`training.gan`): a realism head on the fake
score's bottleneck, trained with the fake score on real latents against the student's samples, and a generator
term in the student's loss. Only then does the stage read images: the backbone's training latents, each with its
own caption (the batches' prompts are then those captions).

TSM's distillation (Sup. A.3) has two routed adapters, which are not merged into one denoiser:

- `tsm` (1-stage): `experts` LoRA experts on equal timestep intervals (n = 4 for the 4-step student: one per student
  step). They train in one job: each batch's student step k picks one expert (the `ExpertMixture` core), and only it
  gets gradients, so each expert sees the batches of its own step, as vanilla LoRA sees them at that step (the
  paper's separate experts at 1/4 of LoRA's batch: the same samples per timestep).
- `tsm2` (2-stage): the experts of a `tsm` student (the core, frozen) plus the `context` students' adapters (frozen;
  the paper's n2 = 1 context is the vanilla LoRA student over all timesteps), and TSM's routers, the only trainable
  part. Its fake score starts from the core student's, so the student's first updates see a fake that already
  tracks it.

A routed student directory holds `experts/<name>/` (diffusers-format LoRA), `router.json` (which experts form the
core and the context scales) and, with a context, `router.safetensors`; `runs.load_routed_student` rebuilds it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from accelerate.utils import set_seed

from safetensors.torch import save_file

from ..adapters.lora import (DENOISER_PREFIX, LoraSpec, adapter_parameters, inject, load_adapter, merge_adapters,
                             read_lora_spec, save_adapter)
from ..adapters.router import ExpertMixture, Scale
from ..data.io import read_json, write_json
from ..evaluation.weights import change_summary, weight_change
from ..models.backbone import Backbone, cat_cond, repeat_cond
from ..runs import ROUTER_CONFIG, ROUTER_WEIGHTS
from ..students import scaled_timesteps
from .experts import freeze, model_params
from .finetune import save_denoiser
from .gan import FeatureTap, GanSpec, RealismHead, bottleneck, classifier_loss, generator_loss
from .loop import (TrainConfig, checked_snapshots, infinite_batches, keep_snapshots, resumable_output, seeded,
                   snapshot_saver, train)
from .objectives import noisy_and_target, predicted_x0

ADAPTERS = ("full", "lora", "dora", "lorad", "tsm", "tsm2")


@dataclass
class AdapterSpec:
    """What trains in a student or fake-score copy of the teacher: every weight, one peft adapter, TSM's
    `experts` interval experts (tsm), or the routers over saved experts (tsm2: rank and targets come from them)."""
    kind: str
    rank: int = 0
    targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    experts: int = 0
    alpha: float | None = None  # LoRA-style scale alpha / rank; default alpha = rank

    def __post_init__(self):
        if self.kind not in ADAPTERS:
            raise ValueError(f"unknown adapter {self.kind!r}; expected one of {ADAPTERS}")
        if self.kind not in ("full", "tsm2") and self.rank < 1:
            raise ValueError(f"adapter {self.kind!r} needs a rank >= 1, got {self.rank}")
        if (self.kind == "tsm") != (self.experts >= 1):
            raise ValueError(f"adapter {self.kind!r}: `experts` is the number of TSM experts, needed by tsm only "
                             f"(got {self.experts})")

    def lora(self) -> LoraSpec:
        return LoraSpec(rank=self.rank, alpha=float(self.alpha or self.rank), denoiser_targets=list(self.targets),
                        text_encoder_targets=[], variant="lora" if self.kind == "tsm" else self.kind)


def adapted_copy(denoiser: nn.Module, spec: AdapterSpec, name: str, init=None,
                 prefix: str = "unet") -> tuple[nn.Module, list[nn.Parameter]]:
    """A trainable copy of `denoiser` and its trainable parameters (all of them for `full`).

    init: a saved adapter directory to start the adapter from (its part `prefix`), instead of zero.
    """
    model = copy.deepcopy(denoiser)
    if spec.kind == "full":  # AdamW on a half-precision copy would underflow: full training keeps fp32 weights
        model.float().requires_grad_(True)
        return model, list(model.parameters())
    model.requires_grad_(False)
    if init is None:
        inject(spec.lora(), spec.targets, model, name)
    else:
        saved = load_adapter(model, prefix, init, name)
        want = spec.lora()
        if (saved.rank, saved.variant, sorted(saved.denoiser_targets)) != (
                want.rank, want.variant, sorted(want.denoiser_targets)):
            raise ValueError(f"{init}: saved adapter (rank {saved.rank}, {saved.variant}, {saved.denoiser_targets}) "
                             f"is not the configured one (rank {want.rank}, {want.variant}, {want.denoiser_targets})")
    params = adapter_parameters(model, name)
    if not params:
        raise ValueError(f"{spec.kind} targets {spec.targets} matched no module of the denoiser")
    for p in params:
        p.requires_grad_(True)
    return model, params


def expert_student(denoiser: nn.Module, spec: AdapterSpec, num_timesteps: int,
                   prefix: str) -> tuple[nn.Module, list[nn.Parameter], ExpertMixture]:
    """TSM 1-stage: a copy of `denoiser` with `spec.experts` fresh LoRA experts, routed by interval (no gates)."""
    model = copy.deepcopy(denoiser).requires_grad_(False)
    names = tuple(f"student{i}" for i in range(spec.experts))
    for name in names:
        inject(spec.lora(), spec.targets, model, name)
    mixture = ExpertMixture({prefix: model}, Scale(len(names), names), [], num_timesteps)
    params = [p for name in names for p in adapter_parameters(model, name)]
    for p in params:  # the mixture disables peft's own adapter path, and with it their gradients
        p.requires_grad_(True)
    return model, params, mixture


def routed_experts(student_dir) -> tuple[dict, list[dict], str]:
    """A routed student's router.json: its core scale, its context scales ({n, names} each) and router input."""
    cfg = read_json(Path(student_dir) / ROUTER_CONFIG)
    return cfg["core"], cfg["context"], cfg.get("router_input", "both")


def assembled_student(denoiser: nn.Module, core_dir, context_dirs: list, router_input: str, num_timesteps: int,
                      prefix: str) -> tuple[nn.Module, list[nn.Parameter], ExpertMixture, dict]:
    """TSM 2-stage: a `tsm` student's experts as the core and each context student's adapter (or experts) as a
    gated scale, all frozen; the zero-initialised routers are the trainable part. Returns also {name: dir}."""
    model = copy.deepcopy(denoiser).requires_grad_(False)
    dirs: dict[str, Path] = {}

    def load_scale(names: list[str], src: list[Path]) -> Scale:
        for name, d in zip(names, src):
            load_adapter(model, prefix, d, name)
            dirs[name] = d
        return Scale(len(names), tuple(names))

    core, _, _ = routed_experts(core_dir)
    core_scale = load_scale([f"core{i}" for i in range(core["n"])],
                            [Path(core_dir) / "experts" / n for n in core["names"]])
    context = []
    for j, d in enumerate(context_dirs):
        if (Path(d) / ROUTER_CONFIG).is_file():
            c, _, _ = routed_experts(d)
            src = [Path(d) / "experts" / n for n in c["names"]]
        else:
            read_lora_spec(Path(d) / "adapter")  # a clear error if the student has no adapter (e.g. full)
            src = [Path(d) / "adapter"]
        context.append(load_scale([f"context{j}_{i}" for i in range(len(src))], src))
    mixture = ExpertMixture({prefix: model}, core_scale, context, num_timesteps, router_input=router_input)
    return model, list(mixture.parameters()), mixture, dirs


def save_routed(out_dir, model: nn.Module, prefix: str, mixture: ExpertMixture, spec: LoraSpec | None,
                sources: dict, arch: str, router_input: str) -> None:
    """experts/<name>/ (trained ones from `model`, frozen ones copied from `sources`), router.json and weights."""
    out = Path(out_dir)
    scales = ([mixture.core] if mixture.core else []) + mixture.context
    for scale in scales:
        for name in scale.names:
            if name in sources:
                saved, cfg = read_lora_spec(sources[name])
                save_adapter(out / "experts" / name, {prefix: model}, name, saved, {"arch": cfg.get("arch", arch)})
            else:
                save_adapter(out / "experts" / name, {prefix: model}, name, spec, {"arch": arch})
    as_dict = lambda s: {"n": s.n, "names": list(s.names)}  # noqa: E731
    write_json(out / ROUTER_CONFIG, {"core": as_dict(mixture.core), "context": [as_dict(c) for c in mixture.context],
                                     "router_input": router_input})
    if mixture.context:
        save_file({k: v.detach().contiguous().cpu() for k, v in mixture.state_dict().items()},
                  str(out / ROUTER_WEIGHTS), metadata={"format": "pt"})


class DMDObjective(nn.Module):
    """Phase "student": the distribution-matching loss; phase "fake": the fake score's denoising loss."""

    def __init__(self, backbone: Backbone, student: nn.Module, fake: nn.Module, teacher: nn.Module,
                 timesteps: list[int], guidance_scale: float, dm_t_range: tuple[float, float] = (0.02, 0.98),
                 student_router: ExpertMixture | None = None, gan: GanSpec | None = None):
        super().__init__()
        self.student, self.fake = student, fake
        self.student_router = student_router  # a routed student's experts: told each student call's t
        self.text_encoders = nn.ModuleList(backbone.text_encoders)  # frozen; registered so accelerate places them
        self.__dict__["teacher"] = teacher.requires_grad_(False).eval()  # not a submodule: never saved or trained
        self.backbone, self.timesteps, self.guidance_scale = backbone, list(timesteps), guidance_scale
        T = backbone.num_train_timesteps
        self.dm_lo, self.dm_hi = int(dm_t_range[0] * T), int(dm_t_range[1] * T)
        self.gan, self.head, self.tap = gan, None, None
        if gan is not None:  # the head's input size is the bottleneck's: one probe call finds it
            self.tap = FeatureTap(bottleneck(fake))
            with torch.no_grad():
                cond = backbone.encode([""])
                x = torch.zeros(1, *backbone.latent_shape, device=cond["hidden"].device)
                backbone.predict(x, torch.zeros(1, dtype=torch.long, device=x.device), cond, denoiser=fake)
            self.head = RealismHead(tuple(self.tap.take().shape[1:]))

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
                x = self.noised(self.student_x0(x, at[i], cond), at[i + 1])
        with torch.set_grad_enabled(grad):
            return self.student_x0(x, at[k], cond)

    def realism(self, x0: torch.Tensor, cond: dict) -> torch.Tensor:
        """The GAN head's logits for latents x0, read from the fake score at a random noise level below max_t."""
        t = torch.randint(0, max(1, int(self.gan.max_t * self.backbone.num_train_timesteps)), (len(x0),),
                          device=x0.device)
        self.backbone.predict(self.noised(x0, t), t, cond, denoiser=self.fake)
        return self.head(self.tap.take())

    def student_x0(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        if self.student_router is not None:
            self.student_router.set_timesteps(t)
        return self.x0(self.student, x, t, cond)

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
            loss = F.mse_loss(pred.float(), target.float())
            if self.gan is not None:
                real = batch["latent_mean"] + batch["latent_std"] * torch.randn_like(batch["latent_mean"])
                # one fake-score call for both halves: the real latents answer the same captions
                logits_real, logits_fake = self.realism(torch.cat([real, x0]), cat_cond(cond, cond)).chunk(2)
                loss = loss + self.gan.fake_weight * classifier_loss(logits_real, logits_fake)
            return loss
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
        loss = 0.5 * F.mse_loss(x0.float(), (x0 - grad).detach().float())
        if self.gan is not None and self.gan.student_weight > 0:
            loss = loss + self.gan.student_weight * generator_loss(self.realism(x0, cond))
        return loss


def distill_student(backbone: Backbone, cfg: dict, captions: list[str], out_dir, real: dict | None = None) -> dict:
    """Distil `backbone`'s denoiser (the teacher) into a student; writes the student and its fake score's adapter.

    cfg: `student` and `fake` (AdapterSpec fields; `fake` also its `lr`), `timesteps` (on 1000 steps),
    `guidance_scale`, `fake_updates_per_student`, `steps` (student updates), `train` (TrainConfig fields; its lr
    is the student's), an optional `seed` (shifts train's, as every stage's seeds do) and, for tsm2, `assemble`
    ({core, context, router_input}: the student directories it routes over). out_dir gets stats.json, loss.csv
    (with loss_student and loss_fake), `fake/` (unless the fake is full) and either a diffusers denoiser (the
    student, adapters merged), `adapter/` (unless full) and weight_change.csv, or, for a routed student (tsm, tsm2),
    `experts/`, router.json and router weights. With `gan` (GanSpec fields): `real` holds the training latents
    ("latent_mean", "latent_std"), one per caption, and out_dir also `gan_head.safetensors`.
    """
    ratio = int(cfg["fake_updates_per_student"])
    phases = ["fake"] * ratio + ["student"]
    tcfg = TrainConfig.from_dict({**seeded(cfg["train"], cfg.get("seed", 0)), "steps": cfg["steps"] * len(phases)})
    set_seed(tcfg.seed)
    freeze(backbone)
    teacher, T = backbone.denoiser, backbone.num_train_timesteps
    prefix = DENOISER_PREFIX[backbone.arch]
    student_spec = AdapterSpec(**cfg["student"])
    fake_spec = AdapterSpec(**{k: v for k, v in cfg["fake"].items() if k != "lr"})
    router, sources, fake_init = None, {}, None
    if student_spec.kind == "tsm":
        student, student_params, router = expert_student(teacher, student_spec, T, prefix)
    elif student_spec.kind == "tsm2":
        a = cfg["assemble"]
        student, student_params, router, sources = assembled_student(teacher, a["core"], a["context"],
                                                                     a.get("router_input", "both"), T, prefix)
        fake_init = Path(a["core"]) / "fake"
        if fake_spec.kind == "full" or not fake_init.is_dir():
            raise ValueError(f"{a['core']}: a tsm2 student starts its fake score from the core student's saved "
                             "fake adapter (fake/), which is missing; a full fake score is not saved")
    else:
        student, student_params = adapted_copy(teacher, student_spec, "student")
    fake, fake_params = adapted_copy(teacher, fake_spec, "fake", init=fake_init, prefix=prefix)
    timesteps = scaled_timesteps(cfg["timesteps"], T)
    gan = GanSpec(**cfg["gan"]) if cfg.get("gan") else None
    objective = DMDObjective(backbone, student, fake, teacher, timesteps, cfg["guidance_scale"],
                             student_router=router, gan=gan)
    head_params = list(objective.head.parameters()) if gan else []  # trained with the fake score, as DMD2's
    groups = [{"params": student_params, "phase": "student"},
              {"params": fake_params + head_params, "lr": cfg["fake"]["lr"], "phase": "fake"}]
    if not captions:
        raise ValueError("distillation needs prompts: the caption list is empty")
    tensors = {"index": torch.arange(len(captions))}
    if gan is not None:
        if real is None or len(real.get("latent_mean", [])) != len(captions):
            raise ValueError(f"gan: needs one real latent per caption ({len(captions)}), got "
                             f"{None if real is None else len(real.get('latent_mean', []))}")
        tensors.update(latent_mean=real["latent_mean"], latent_std=real["latent_std"])
    batches = infinite_batches(tensors, tcfg.batch_size, tcfg.seed, extra={"caption": list(captions)})
    desc = f"distil {len(timesteps)}-step {student_spec.kind} student"
    snapshots = checked_snapshots(cfg.get("snapshots"), cfg["steps"], desc)

    def save(d) -> nn.Module | None:
        return save_student(backbone, d, student, prefix, student_spec, router, sources,
                            cfg.get("assemble", {}).get("router_input", "both"))

    with resumable_output(out_dir) as (tmp, ckpt):
        # a snapshot counts student updates: each ends a cycle of phases
        stats = train(objective, groups, batches, tcfg, tmp / "loss.csv", desc=desc,
                      checkpoint=ckpt / "train.safetensors", phases=phases,
                      on_step=snapshot_saver(snapshots, ckpt, save, every=len(phases)))
        keep_snapshots(snapshots, ckpt, tmp)
        extra = {"arch": backbone.arch}
        if fake_spec.kind != "full":
            save_adapter(tmp / "fake", {prefix: fake}, "fake", fake_spec.lora(), extra)
        if gan is not None:
            objective.tap.remove()
            save_file({k: v.detach().contiguous().cpu() for k, v in objective.head.state_dict().items()},
                      str(tmp / "gan_head.safetensors"), metadata={"format": "pt"})
            stats["gan"] = vars(gan)
        if router is not None:
            router.remove()
        final = save(tmp)
        if router is not None:
            stats.update(experts=[s.n for s in [router.core] + router.context],
                         adapter_params=sum(p.numel() for n, p in student.named_parameters() if "lora_" in n))
        else:
            change = weight_change(teacher, final)
            change.to_csv(tmp / "weight_change.csv", index=False)
            stats.update(change_summary(change))
        stats.update(method="distill", adapter=student_spec.kind, rank=student_spec.rank, timesteps=timesteps,
                     nfe=len(timesteps), student_steps=cfg["steps"], fake_updates_per_student=ratio,
                     student_trainable_params=sum(p.numel() for p in student_params),
                     fake_trainable_params=sum(p.numel() for p in fake_params),
                     prompts=len(captions), model_params=model_params(backbone), snapshots=snapshots)
        write_json(Path(tmp) / "stats.json", stats)
    return stats


def save_student(backbone: Backbone, out_dir, student: nn.Module, prefix: str, spec: AdapterSpec,
                 router: ExpertMixture | None, sources: dict, router_input: str) -> nn.Module | None:
    """What a run samples from: a routed student's experts and router (`save_routed`), or the student merged into
    one diffusers denoiser plus its `adapter/` (unless full). Returns the merged denoiser (None if routed); the
    student itself keeps its unmerged adapter, so training can go on after a snapshot."""
    if router is not None:
        save_routed(out_dir, student, prefix, router, spec.lora() if spec.kind == "tsm" else None, sources,
                    backbone.arch, router_input)
        return None
    if spec.kind == "full":
        save_denoiser(backbone, out_dir, student)
        return student
    final = merge_adapters(student)
    save_denoiser(backbone, out_dir, final)
    save_adapter(Path(out_dir) / "adapter", {prefix: student}, "student", spec.lora(), {"arch": backbone.arch})
    return final


def student_config(defaults: dict, student: dict) -> dict:
    """`distill_student`'s cfg from config `distill` (shared settings) and one `students` entry (which wins, its
    `fake` key by key)."""
    targets = student.get("targets", defaults["targets"])
    return {"student": {"kind": student["adapter"], "rank": student.get("rank", 0), "targets": targets,
                        "experts": student.get("experts", 0), "alpha": student.get("alpha")},
            "fake": {"targets": targets, **defaults["fake"], **student.get("fake", {})},
            "timesteps": student["timesteps"], "steps": student["steps"], "seed": student.get("seed", 0),
            "gan": student.get("gan"), "snapshots": student.get("snapshots", []),
            "guidance_scale": student.get("guidance_scale", defaults["guidance_scale"]),
            "fake_updates_per_student": student.get("fake_updates_per_student", defaults["fake_updates_per_student"]),
            "train": {**defaults["train"], **student.get("train", {})}}
