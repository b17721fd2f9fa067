"""The backbone factory: one interface over the miniature and the papers' real models.

A `Backbone` bundles a denoiser, its VAE, its prompt encoder and its training
noise schedule, and hides how each architecture is called:

- ``unet``  UNet2DConditionModel (SD1.5, SD2, the miniature "unet"),
- ``dit``   PixArtTransformer2DModel (PixArt-alpha, the miniature "dit"),
- ``mmdit`` SD3Transformer2DModel (SD3, the miniature "mmdit"),
- ``cdit``  DiTTransformer2DModel (class-conditional DiT on ImageNet; the miniature "cdit", whose "prompts" are
  class captions, `data/classes.py`).

Real models load through their diffusers pipeline class from a hub id or a local
directory (`load_pipeline_backbone`); the miniature loads the components the
workflow trained (`load_mini_backbone`). Everything after loading is shared.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from diffusers import AutoencoderKL, DDPMScheduler, FlowMatchEulerDiscreteScheduler

from ..families import FAMILIES
from ..data.classes import CLASS_ARCHS

# {"hidden": (B, L, D), "mask": (B, L) or None, "pooled": (B, P) or None}; a class-conditional model's has
# "class_labels": (B,) int64 and no hidden states
Cond = dict



@dataclass
class Backbone:
    arch: str
    denoiser: nn.Module
    vae: AutoencoderKL
    noise_scheduler: object
    encode_fn: Callable[[list[str]], Cond]
    text_encoders: list = field(default_factory=list)
    family: str = "mini"
    # adapters that depend on t (TSM experts and routers) get each call's timesteps through route()
    routers: list = field(default_factory=list)
    # True when the prompt encoding depends on t too (routed text-encoder LoRA): re-encode every step
    encode_per_step: bool = False

    @property
    def objective(self) -> str:
        if isinstance(self.noise_scheduler, FlowMatchEulerDiscreteScheduler):
            return "flow"
        return {"epsilon": "eps", "v_prediction": "v"}[self.noise_scheduler.config.prediction_type]

    @property
    def num_train_timesteps(self) -> int:
        return self.noise_scheduler.config.num_train_timesteps

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        c = self.vae.config
        size = c.sample_size // 2 ** (len(c.block_out_channels) - 1)
        return (c.latent_channels, size, size)

    def encode(self, prompts: list[str]) -> Cond:
        return self.encode_fn(list(prompts))

    def route(self, t: torch.Tensor) -> bool:
        """Tell t-dependent adapters the per-sample timesteps of the next encode/predict calls.

        Returns whether any adapter changed what it computes (so a t-dependent prompt
        encoding must be redone)."""
        changed = False
        for r in self.routers:
            changed = bool(r.set_timesteps(t)) or changed
        return changed

    def predict(self, x: torch.Tensor, t: torch.Tensor, cond: Cond, denoiser: nn.Module | None = None):
        return predict(self.arch, denoiser or self.denoiser, x, t, cond)

    def to(self, device, dtype=None):
        for m in [self.denoiser, self.vae, *self.text_encoders]:
            m.to(device=device, dtype=dtype) if dtype is not None else m.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device


def denoiser_mask(arch: str, cond: Cond) -> torch.Tensor | None:
    """The text mask the denoiser sees: only the DiT takes one; the UNet and MM-DiT attend to every token."""
    return cond.get("mask") if arch == "dit" else None


def predict(arch: str, denoiser: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
    """One denoiser call with each architecture's own signature; returns the prediction."""
    t = t.expand(x.shape[0]) if t.ndim == 0 else t
    # a half-precision model gets half-precision inputs (the forward process and samplers work in fp32)
    dtype = getattr(denoiser, "dtype", x.dtype)
    x = x.to(dtype)
    cond = {k: (v.to(dtype) if v is not None and v.is_floating_point() else v) for k, v in cond.items()}
    if arch == "unet":
        out = denoiser(x, t, encoder_hidden_states=cond["hidden"]).sample
    elif arch == "dit":
        extra = {"resolution": None, "aspect_ratio": None}
        if denoiser.config.sample_size == 128 or getattr(denoiser, "use_additional_conditions", False):
            # PixArt-alpha 1024 conditions on the pixel resolution and aspect ratio
            h, w = x.shape[-2] * 8, x.shape[-1] * 8
            extra = {"resolution": torch.tensor([[h, w]], device=x.device, dtype=x.dtype).repeat(x.shape[0], 1),
                     "aspect_ratio": torch.tensor([[w / h]], device=x.device, dtype=x.dtype).repeat(x.shape[0], 1)}
        out = denoiser(x, encoder_hidden_states=cond["hidden"], encoder_attention_mask=denoiser_mask(arch, cond),
                       timestep=t, added_cond_kwargs=extra).sample
    elif arch == "mmdit":
        out = denoiser(hidden_states=x, encoder_hidden_states=cond["hidden"],
                       pooled_projections=cond["pooled"], timestep=t).sample
    elif arch == "cdit":
        out = denoiser(x, timestep=t, class_labels=cond["class_labels"].to(x.device)).sample
    else:
        raise ValueError(f"unknown arch {arch!r}")
    if out.shape[1] == 2 * x.shape[1]:  # learned-sigma models (PixArt) also predict a variance
        out = out[:, : x.shape[1]]
    return out


def cat_cond(a: Cond, b: Cond) -> Cond:
    """Batch-concatenate two conditions (for classifier-free guidance)."""
    return {k: (torch.cat([a[k], b[k]]) if a.get(k) is not None else None) for k in a}


def repeat_cond(c: Cond, n: int) -> Cond:
    return {k: (v.expand(n, *v.shape[1:]) if v is not None else None) for k, v in c.items()}


# ---------------------------------------------------------------- the miniature


def no_label_dropout(denoiser: nn.Module) -> nn.Module:
    """A DiT drops class labels itself in training (diffusers' LabelEmbedding, p=0.1). Turn that off: the training
    objective's `caption_dropout` is then the one CFG dropout, set in config as on every other backbone. The
    null class's embedding row stays (it exists because the model was built with a dropout probability > 0)."""
    from diffusers.models.embeddings import LabelEmbedding
    for m in denoiser.modules():
        if isinstance(m, LabelEmbedding):
            m.dropout_prob = 0.0
    return denoiser


def class_prompt_encoder() -> Callable[[list[str]], Cond]:
    """Class captions ("a red circle") to class indices; "" to the null class (unconditional)."""
    from ..data.classes import class_index

    def encode(prompts: list[str]) -> Cond:
        labels = torch.tensor([class_index(p) for p in prompts], dtype=torch.long)
        return {"hidden": None, "mask": None, "pooled": None, "class_labels": labels}
    return encode


def text_dims(backbone: Backbone) -> tuple[int, int]:
    """(hidden width, pooled width) of the prompt encoder a fresh denoiser is built for; (0, 0) without one."""
    if not backbone.text_encoders:
        return 0, 0
    c = backbone.text_encoders[0].config
    return c.hidden_size, c.projection_dim


def mini_prompt_encoder(tokenizer, text_encoder) -> Callable[[list[str]], Cond]:
    def encode(prompts: list[str]) -> Cond:
        tok = tokenizer(prompts, padding="max_length", truncation=True, return_tensors="pt")
        dev = next(text_encoder.parameters()).device
        out = text_encoder(input_ids=tok.input_ids.to(dev), attention_mask=tok.attention_mask.to(dev))
        return {"hidden": out.last_hidden_state, "mask": tok.attention_mask.to(dev),
                "pooled": out.text_embeds}
    return encode


def denoiser_class(arch: str):
    """The diffusers class of an arch's denoiser."""
    import diffusers
    return getattr(diffusers, {"unet": "UNet2DConditionModel", "dit": "PixArtTransformer2DModel",
                               "mmdit": "SD3Transformer2DModel", "cdit": "DiTTransformer2DModel"}[arch])


def load_mini_backbone(arch: str, denoiser_dir, vae_dir, text_dir, objective: str | None = None) -> Backbone:
    """Load the workflow's own trained components (all local, nothing downloaded). The class-conditional cdit has
    no text encoder: `text_dir` may be None and is not read."""
    from transformers import CLIPTextModelWithProjection, PreTrainedTokenizerFast
    classes = arch in CLASS_ARCHS
    for p in (vae_dir,) if classes else (vae_dir, text_dir):
        if p is None or not Path(p).is_dir():
            raise FileNotFoundError(f"{p}: model directory not found (has its rule run?)")
    denoiser = denoiser_class(arch).from_pretrained(denoiser_dir, use_safetensors=True) if denoiser_dir else None
    if classes and denoiser is not None:
        no_label_dropout(denoiser)  # not saved in its config: loading rebuilds the embedding with p=0.1
    sched_dir = Path(denoiser_dir or "") / "scheduler"
    if denoiser_dir is not None and sched_dir.is_dir():
        scheduler = _scheduler_from_dir(sched_dir)
    else:
        from .mini import build_scheduler
        scheduler = build_scheduler(objective or "eps", 1000)
    vae = AutoencoderKL.from_pretrained(vae_dir, use_safetensors=True)
    if classes:
        vae.requires_grad_(False).eval()
        return Backbone(arch=arch, denoiser=denoiser, vae=vae, noise_scheduler=scheduler,
                        encode_fn=class_prompt_encoder())
    tokenizer = PreTrainedTokenizerFast.from_pretrained(text_dir)
    text_encoder = CLIPTextModelWithProjection.from_pretrained(text_dir, use_safetensors=True)
    for m in (vae, text_encoder):
        m.requires_grad_(False).eval()
    return Backbone(arch=arch, denoiser=denoiser, vae=vae, noise_scheduler=scheduler,
                    encode_fn=mini_prompt_encoder(tokenizer, text_encoder), text_encoders=[text_encoder])


def _scheduler_from_dir(path):
    cfg = FlowMatchEulerDiscreteScheduler.load_config(path)
    if cfg.get("_class_name") == "FlowMatchEulerDiscreteScheduler":
        return FlowMatchEulerDiscreteScheduler.from_config(cfg)
    return DDPMScheduler.from_config(cfg)


# ---------------------------------------------------------------- real models


def pretrained_kwargs(spec: dict) -> dict:
    """`from_pretrained` keyword arguments of a backbone spec (a pipeline or one of its components)."""
    # use_safetensors: never fall back to unpickling .bin weights
    kwargs = dict(torch_dtype=getattr(torch, spec.get("dtype", "float32")), use_safetensors=True,
                  local_files_only=spec.get("local_files_only", False))
    for k in ("revision", "variant"):
        if spec.get(k):
            kwargs[k] = spec[k]
    return kwargs


def load_pipeline_backbone(spec: dict, denoiser_dir=None) -> Backbone:
    """Load SD1.5 / SD2 / PixArt-alpha / SD3 from `spec["pretrained"]` (hub id or local dir).

    `spec` is a `config/backbones/*.yaml` block. This is the exact code path a
    cluster run takes; tests drive it with tiny random pipelines saved locally.
    denoiser_dir: a trained denoiser of the family (a merged distilled student), in place of the pipeline's.
    """
    import diffusers
    family = spec["family"]
    if family not in FAMILIES:
        raise ValueError(f"backbone family {family!r} is not one of {sorted(FAMILIES)}")
    cls_name, arch, attr = FAMILIES[family]
    kwargs = pretrained_kwargs(spec)
    if cls_name == "StableDiffusionPipeline":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    pipe_cls = getattr(diffusers, cls_name)
    # components saved as null (e.g. SD3 without its T5 encoder) must be passed as None:
    # diffusers refuses to load a pipeline whose non-optional component is missing
    index = pipe_cls.load_config(spec["pretrained"], local_files_only=kwargs["local_files_only"],
                                 revision=kwargs.get("revision"))
    for name, value in index.items():
        if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] is None:
            kwargs.setdefault(name, None)
    if denoiser_dir is not None:
        kwargs[attr] = denoiser_class(arch).from_pretrained(denoiser_dir, torch_dtype=kwargs["torch_dtype"],
                                                            use_safetensors=True)
    pipe = pipe_cls.from_pretrained(spec["pretrained"], **kwargs)
    if family == "sd3":
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    else:
        # diffusers' trainers: the DDPM schedule with the pipeline's betas and prediction type
        scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    text_encoders = [m for m in (getattr(pipe, n, None) for n in ("text_encoder", "text_encoder_2", "text_encoder_3"))
                     if m is not None]
    for m in [pipe.vae, *text_encoders]:
        m.requires_grad_(False).eval()
    return Backbone(arch=arch, denoiser=getattr(pipe, attr), vae=pipe.vae, noise_scheduler=scheduler,
                    encode_fn=_pipeline_prompt_encoder(pipe, family), text_encoders=text_encoders,
                    family=family)


def _pipeline_prompt_encoder(pipe, family: str) -> Callable[[list[str]], Cond]:
    """Use the pipeline's own encode_prompt, so prompts are encoded exactly as at inference."""
    def encode(prompts: list[str]) -> Cond:
        dev = pipe.vae.device
        if family in ("sd15", "sd2"):
            hidden, _ = pipe.encode_prompt(prompts, dev, 1, do_classifier_free_guidance=False)
            return {"hidden": hidden, "mask": None, "pooled": None}
        if family == "pixart_alpha":
            hidden, mask, _, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, device=dev,
                                                    clean_caption=False)
            return {"hidden": hidden, "mask": mask, "pooled": None}
        hidden, _, pooled, _ = pipe.encode_prompt(prompts, None, None, device=dev,
                                                  do_classifier_free_guidance=False)
        return {"hidden": hidden, "mask": None, "pooled": pooled}
    return encode


def device() -> torch.device:
    """This process's device: its GPU under `accelerate launch`, else cuda:0, else the CPU."""
    from accelerate import PartialState
    return PartialState().device


def load_backbone(spec: dict, inputs=None, model=None) -> Backbone:
    """A job's pre-trained backbone, from its rule's `backbone` param (rules/common.smk `get_backbone_spec`).

    A real family's pipeline loads from `spec["pretrained"]` (hub id or local dir) and samples at the spec's
    resolution (VAEs are shared between models, so the VAE's own sample_size need not be it); its VAE goes to the
    job's device at once, since the pipeline encodes prompts there. The miniature's arch loads the components the
    workflow trained, which are the job's inputs: `model` (default: inputs.model), inputs.vae, inputs.text_encoder.
    A real family's `model`, where given, is a trained denoiser that replaces the pipeline's.
    """
    if spec["family"] == "mini":
        return load_mini_backbone(spec["arch"], model if model is not None else getattr(inputs, "model", None),
                                  inputs.vae, getattr(inputs, "text_encoder", None), spec.get("objective"))
    bb = load_pipeline_backbone(spec, denoiser_dir=model)
    if spec.get("resolution"):
        bb.vae.register_to_config(sample_size=spec["resolution"])
    bb.vae.to(device())
    return bb
