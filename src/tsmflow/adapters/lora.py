"""LoRA on the papers' target modules, injected with peft and saved in diffusers' LoRA format.

Several named adapters (the TimeStep experts) can live in the same peft LoRA
layers; `router.py` decides which of them act at a timestep. A saved adapter
is one directory:

- ``pytorch_lora_weights.safetensors``: diffusers' key layout (``unet.*`` or
  ``transformer.*`` for the denoiser, ``text_encoder.*``), so a stock
  StableDiffusionPipeline / StableDiffusion3Pipeline loads it with
  ``load_lora_weights``;
- ``adapter_config.json``: rank, alpha, targets and variant, to rebuild the layers here.

`LoraSpec.variant` picks the adapter of the same layers: ``lora``, ``dora`` (peft's
``use_dora``; diffusers loads its magnitude vectors too) or ``lorad`` (WaDi's rotation,
`lorad.py`; its files load here, not in a stock pipeline, whose sampling wants it merged).
"""
from __future__ import annotations

import copy
import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file

from ..models.backbone import Backbone
from .lorad import lorad_config

WEIGHTS = "pytorch_lora_weights.safetensors"
CONFIG = "adapter_config.json"
LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base's key: the LoraConfig per part
# diffusers' prefix for the denoiser of each architecture
DENOISER_PREFIX = {"unet": "unet", "dit": "transformer", "mmdit": "transformer"}
VARIANTS = ("lora", "dora", "lorad")


@dataclass
class LoraSpec:
    rank: int
    alpha: float
    denoiser_targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    # one list for every text encoder, or {"text_encoder": [...], "text_encoder_3": [...]}: T5 names its
    # projections q/k/v/o where CLIP says q_proj/...; an encoder left out of the dict gets no adapter
    text_encoder_targets: list[str] | dict[str, list[str]] = field(default_factory=lambda: ["q_proj", "v_proj"])
    dropout: float = 0.0
    variant: str = "lora"

    def config(self, targets: list[str]) -> LoraConfig:
        # init_lora_weights=True: A Kaiming-uniform, B zero, so a fresh adapter changes nothing
        kwargs = dict(r=self.rank, lora_alpha=self.alpha, target_modules=list(targets),
                      lora_dropout=self.dropout, init_lora_weights=True)
        if self.variant == "lorad":
            return lorad_config(**kwargs)
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown LoRA variant {self.variant!r}; expected one of {VARIANTS}")
        return LoraConfig(**kwargs, use_dora=self.variant == "dora")


def lora_parts(backbone: Backbone, spec: LoraSpec) -> dict[str, tuple[nn.Module, list[str]]]:
    """The models an adapter touches, keyed by their diffusers prefix, with their target modules."""
    parts = {DENOISER_PREFIX[backbone.arch]: (backbone.denoiser, spec.denoiser_targets)}
    encoders = {"text_encoder" if i == 0 else f"text_encoder_{i + 1}": te
                for i, te in enumerate(backbone.text_encoders)}
    targets = spec.text_encoder_targets
    if isinstance(targets, dict):
        unknown = sorted(set(targets) - set(encoders))
        if unknown:
            raise ValueError(f"LoRA text-encoder targets name {unknown}, but this {backbone.family} backbone's text "
                             f"encoders are {sorted(encoders)}")
    for prefix, te in encoders.items():
        mine = targets.get(prefix, []) if isinstance(targets, dict) else targets
        if mine:
            parts[prefix] = (te, list(mine))
    return parts


def inject(spec: LoraSpec, targets: list[str], model: nn.Module, name: str) -> None:
    with warnings.catch_warnings():  # several adapters in one model is what experts are
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        inject_adapter_in_model(spec.config(targets), model, adapter_name=name)
    # peft gives the adapter its base layer's dtype; on a half-precision real model, AdamW steps and
    # router gates on fp16 LoRA weights would underflow, so adapters stay fp32 (peft casts inputs to them)
    for p in adapter_parameters(model, name):
        if p.dtype != torch.float32:
            p.data = p.data.float()


def add_lora(backbone: Backbone, name: str, spec: LoraSpec) -> list[nn.Parameter]:
    """Inject adapter `name` into the denoiser (and text encoders); returns its parameters."""
    params = []
    for prefix, (model, targets) in lora_parts(backbone, spec).items():
        try:
            inject(spec, targets, model, name)
        except ValueError as e:  # peft's no-match error names neither the model nor the config key
            raise ValueError(no_match(prefix, model, targets)) from e
        if not adapter_parameters(model, name):
            raise ValueError(no_match(prefix, model, targets))
        params += adapter_parameters(model, name)
    return params


def no_match(prefix: str, model: nn.Module, targets: list[str]) -> str:
    msg = f"LoRA targets {targets} matched no module of {prefix} ({type(model).__name__})"
    if prefix.startswith("text_encoder"):
        msg += ("; give each text encoder its own targets, e.g. text_encoder_target_modules: "
                "{text_encoder: [q_proj, v_proj], text_encoder_3: [q, v]}")
    return msg


def adapter_parameters(model: nn.Module, name: str) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if f".{name}." in n and "lora_" in n]


def lora_layers(model: nn.Module) -> dict[str, LoraLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def save_lora(out_dir, backbone: Backbone, name: str, spec: LoraSpec, extra: dict | None = None) -> None:
    """Write adapter `name` as diffusers-format safetensors plus its config (into an existing dir)."""
    save_adapter(out_dir, {prefix: model for prefix, (model, _) in lora_parts(backbone, spec).items()}, name, spec,
                 {"arch": backbone.arch, **(extra or {})})


def save_adapter(out_dir, models: dict[str, nn.Module], name: str, spec: LoraSpec, extra: dict | None = None) -> None:
    """Adapter `name` of each model, keyed by its diffusers prefix, in the layout `save_lora` writes."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors, peft_configs = {}, {}
    for prefix, model in models.items():
        sd = get_peft_model_state_dict(model, adapter_name=name)
        tensors.update({f"{prefix}.{k}": v.detach().contiguous().cpu() for k, v in sd.items()})
        peft_configs[prefix] = model.peft_config[name]
    save_file(tensors, str(out / WEIGHTS), metadata=stock_metadata(peft_configs, spec.variant))
    (out / CONFIG).write_text(json.dumps({**asdict(spec), **(extra or {})}, indent=2))


def stock_metadata(peft_configs: dict[str, LoraConfig], variant: str) -> dict[str, str]:
    """safetensors metadata with each part's LoraConfig, as diffusers' own trainers write it: without it a stock
    `load_lora_weights` infers the rank from the shapes but takes alpha = rank, a silently wrong scale."""
    meta = {"format": "pt"}
    if variant == "lorad":  # a custom layer a stock pipeline cannot build: there is nothing to describe to it
        return meta
    packed = {f"{prefix}.{k}": sorted(v) if isinstance(v, set) else v
              for prefix, cfg in peft_configs.items() for k, v in cfg.to_dict().items()}
    return {**meta, LORA_ADAPTER_METADATA_KEY: json.dumps(packed, sort_keys=True, default=str)}


def merge_adapters(model: nn.Module) -> nn.Module:
    """A plain, frozen copy of `model` with its active peft adapters merged into the weights.

    Each layer merges by its own rule (LoRA adds B A, DoRA rescales, LoRaD rotates), then gives way to its base layer.
    """
    merged = copy.deepcopy(model)
    for key, module in list(merged.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent, _, child = key.rpartition(".")
            setattr(merged.get_submodule(parent) if parent else merged, child, module.get_base_layer())
    return merged.requires_grad_(False)


def read_lora_spec(adapter_dir) -> tuple[LoraSpec, dict]:
    path = Path(adapter_dir) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a saved LoRA adapter (has its training rule run?)")
    cfg = json.loads(path.read_text())
    keys = set(LoraSpec.__dataclass_fields__)
    return LoraSpec(**{k: v for k, v in cfg.items() if k in keys}), cfg


def load_lora(backbone: Backbone, adapter_dir, name: str) -> LoraSpec:
    """Inject a saved adapter under `name` and load its weights (no unpickling)."""
    spec, cfg = read_lora_spec(adapter_dir)
    if cfg.get("arch", backbone.arch) != backbone.arch:
        raise ValueError(f"{adapter_dir}: adapter was trained on {cfg['arch']!r}, not {backbone.arch!r}")
    tensors = load_file(str(Path(adapter_dir) / WEIGHTS))
    for prefix, (model, targets) in lora_parts(backbone, spec).items():
        load_into(model, prefix, spec, targets, tensors, name, adapter_dir)
    return spec


def load_adapter(model: nn.Module, prefix: str, adapter_dir, name: str) -> LoraSpec:
    """Inject a saved adapter's `prefix` part (e.g. "unet") into one bare model under `name`."""
    spec, _ = read_lora_spec(adapter_dir)
    load_into(model, prefix, spec, spec.denoiser_targets, load_file(str(Path(adapter_dir) / WEIGHTS)), name,
              adapter_dir)
    return spec


def load_into(model: nn.Module, prefix: str, spec: LoraSpec, targets: list[str], tensors: dict, name: str,
              where) -> None:
    sd = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    if not sd:
        raise ValueError(f"{where}: no weights for {prefix!r}")
    inject(spec, targets, model, name)
    result = set_peft_model_state_dict(model, sd, adapter_name=name)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"{where}: unexpected keys for {prefix}: {result.unexpected_keys[:3]}")
