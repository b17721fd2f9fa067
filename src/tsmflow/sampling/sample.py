"""Text-to-image sampling with classifier-free guidance.

Solvers (`SOLVERS`), all diffusers schedulers: `first_order` is DDIM for eps/v models and
Euler for flow; `dpmsolver++` (2nd-order multistep) and `unipc` serve both, flow included.

`precision` "bf16" runs the denoiser's calls under bf16 autocast when its weights are fp32 (the scheduler,
text encoder and VAE stay fp32); a half-precision model runs as it is.

`renoise` is a distilled few-step student's sampler (DMD2): at each of its `timesteps`
it predicts x0, and re-noises it with fresh noise to the next; one model call per step, no guidance.

Each image's initial noise comes from its own seed, so an image depends only on
(prompt, seed, model), never on batch size or order. `model_fn` lets adapters
that depend on t (TSM experts, routers, DeMe ensembles) take over the denoiser call.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler,
                       UniPCMultistepScheduler)
from tqdm.auto import tqdm

from ..models.backbone import Backbone, cat_cond, repeat_cond
from ..training.objectives import noisy_and_target, predicted_x0


SOLVERS = ("first_order", "dpmsolver++", "unipc", "renoise")
PRECISIONS = ("fp32", "bf16")
MULTISTEP = {"dpmsolver++": DPMSolverMultistepScheduler, "unipc": UniPCMultistepScheduler}


def inference_scheduler(backbone: Backbone, solver: str = "first_order"):
    if solver not in SOLVERS or solver == "renoise":
        raise ValueError(f"unknown solver {solver!r}; expected one of {SOLVERS[:-1]}")
    train_cfg = backbone.noise_scheduler.config
    if solver != "first_order":
        cls = MULTISTEP[solver]
        if backbone.objective == "flow":
            return cls(num_train_timesteps=train_cfg.num_train_timesteps, use_flow_sigmas=True,
                       prediction_type="flow_prediction", flow_shift=getattr(train_cfg, "shift", 1.0))
        return cls.from_config(train_cfg, timestep_spacing="trailing")
    if backbone.objective == "flow":
        return FlowMatchEulerDiscreteScheduler.from_config(train_cfg)
    # "trailing" spacing reaches t=T-1, so the first step sees pure noise like training did
    return DDIMScheduler.from_config(train_cfg, timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=False)


def denoiser_autocast(backbone: Backbone, precision: str):
    if precision not in PRECISIONS:
        raise ValueError(f"unknown sampling precision {precision!r}; expected one of {PRECISIONS}")
    on = precision == "bf16" and next(backbone.denoiser.parameters()).dtype == torch.float32
    return torch.autocast(backbone.device.type, dtype=torch.bfloat16, enabled=on)


def initial_noise(seeds: list[int], shape: tuple[int, int, int]) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


@torch.no_grad()
def decode(backbone: Backbone, latents: torch.Tensor) -> np.ndarray:
    cfg = backbone.vae.config
    z = latents / cfg.scaling_factor + (getattr(cfg, "shift_factor", None) or 0.0)
    x = backbone.vae.decode(z.to(backbone.vae.dtype)).sample
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def generate(backbone: Backbone, prompts: list[str], seeds: list[int], steps: int = 25,
             guidance_scale: float = 5.0, batch_size: int = 64,
             model_fn: Callable | None = None, progress: bool = True, desc: str = "sampling",
             solver: str = "first_order", timesteps: list[int] | None = None, latents: bool = False,
             precision: str = "fp32") -> np.ndarray:
    """Generate one image per (prompt, seed); returns uint8 (N, H, W, 3), or with `latents` the final latents
    before decoding, float32 (N, C, h, w) (DMP Table 5's structural statistics are computed on them).

    `timesteps` (on the model's own T) are the renoise solver's, which ignores `steps` and `guidance_scale`."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    if solver == "renoise":
        if not timesteps:
            raise ValueError("the renoise solver needs the student's timesteps")
        return _generate_renoise(backbone, prompts, seeds, list(timesteps), batch_size, progress, desc, latents,
                                 precision)
    model_fn = model_fn or backbone.predict
    autocast = denoiser_autocast(backbone, precision)
    device = backbone.device
    dtype = next(backbone.denoiser.parameters()).dtype
    # t-dependent text-encoder adapters: encode inside the loop, once the timestep is routed
    per_step = backbone.encode_per_step
    uncond = None if per_step else backbone.encode([""])
    out = []
    for i in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=not progress, mininterval=2.0):
        p, s = prompts[i:i + batch_size], seeds[i:i + batch_size]
        n = len(p)
        cond = None if per_step else cat_cond(repeat_cond(uncond, n), backbone.encode(p))
        sched = inference_scheduler(backbone, solver)
        sched.set_timesteps(steps, device=device)
        # flow-matching schedulers start at unit noise and take unscaled inputs
        x = initial_noise(s, backbone.latent_shape).to(device, dtype) * getattr(sched, "init_noise_sigma", 1.0)
        for t in sched.timesteps:
            tt = t.to(device).expand(2 * n)
            changed = backbone.route(tt)
            if per_step and (changed or cond is None):
                cond = backbone.encode([""] * n + list(p))
            xin = torch.cat([x, x])
            if hasattr(sched, "scale_model_input"):
                xin = sched.scale_model_input(xin, t)
            with autocast:
                pred = model_fn(xin, tt, cond).float()
            pu, pc = pred.chunk(2)
            x = sched.step(pu + guidance_scale * (pc - pu), t, x.float()).prev_sample.to(dtype)
        out.append(x.float().cpu().numpy() if latents else decode(backbone, x))
    return np.concatenate(out)


def step_noise(seeds: list[int], step: int, shape: tuple[int, int, int]) -> torch.Tensor:
    """The fresh noise of re-noising step `step` of each image, from (its seed, step) alone."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(
        int(np.random.SeedSequence([int(s), step]).generate_state(1)[0]))) for s in seeds])


def _generate_renoise(backbone: Backbone, prompts, seeds, timesteps, batch_size, progress, desc,
                      latents: bool = False, precision: str = "fp32") -> np.ndarray:
    autocast = denoiser_autocast(backbone, precision)
    device = backbone.device
    dtype = next(backbone.denoiser.parameters()).dtype
    sched, objective = backbone.noise_scheduler, backbone.objective
    out = []
    for i in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=not progress, mininterval=2.0):
        p, s = prompts[i:i + batch_size], seeds[i:i + batch_size]
        cond = backbone.encode(p)
        x = initial_noise(s, backbone.latent_shape).to(device, dtype)
        for k, t in enumerate(timesteps):
            tt = torch.full((len(p),), t, device=device)
            backbone.route(tt)
            with autocast:
                pred = backbone.predict(x, tt, cond).float()
            x0 = predicted_x0(sched, objective, x.float(), pred, tt)
            if k + 1 < len(timesteps):
                noise = step_noise(s, k + 1, backbone.latent_shape).to(device)
                nxt = torch.full((len(p),), timesteps[k + 1], device=device)
                x = noisy_and_target(sched, objective, x0, noise, nxt)[0].to(dtype)
        out.append(x0.float().cpu().numpy() if latents else decode(backbone, x0.to(dtype)))
    return np.concatenate(out)
