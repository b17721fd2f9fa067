"""LoRaD (WaDi Sec. 3.2): a low-rank rotation of each weight row's direction, as a peft LoRA variant.

For a Linear weight W (out x in), adjacent input columns form pairs (W[:, 2j], W[:, 2j+1]); every pair in row i
turns by its own angle theta[i, j], and theta = B @ A is low rank (out x r times r x in//2):

    W'[:, 0::2] = W[:, 0::2] cos(theta) - W[:, 1::2] sin(theta)
    W'[:, 1::2] = W[:, 0::2] sin(theta) + W[:, 1::2] cos(theta)

Columns, not rows: that is the public code's choice (the paper's text speaks of both). So each output neuron's
weight vector W[i, :] keeps its norm and only its direction moves. With an odd `in`, the last column stays as it is.

peft's names: `lora_B` (out x r, zero-initialised, the paper's A) and `lora_A` (r x in//2, the paper's B), so
theta = 0 and W' = W at the start. Built on peft's custom-layer hook (`LoraConfig._register_custom_module`) and its
`LoraVariant` interface, LoRaD gets peft's injection, state dicts, merge, unmerge and merge_and_unload.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from peft import LoraConfig
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.lora.layer import LoraVariant


def rotate_pairs(weight: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """W' of the module docstring, in fp32 (then W's dtype); theta is (out, in // 2)."""
    w = weight.float()
    half = theta.shape[1]
    if theta.shape != (w.shape[0], w.shape[1] // 2):
        raise ValueError(f"rotation angles of shape {tuple(theta.shape)} do not fit a weight of shape "
                         f"{tuple(w.shape)}: expected ({w.shape[0]}, {w.shape[1] // 2})")
    odd, even = w[:, 0:2 * half:2], w[:, 1:2 * half:2]
    cos, sin = torch.cos(theta.float()), torch.sin(theta.float())
    pairs = torch.stack([odd * cos - even * sin, odd * sin + even * cos], dim=-1).flatten(1)
    return torch.cat([pairs, w[:, 2 * half:]], dim=1).to(weight.dtype)


def angles(module: LoraLinear, adapter: str) -> torch.Tensor:
    return (module.lora_B[adapter].weight @ module.lora_A[adapter].weight) * module.scaling[adapter]


class LoRaDVariant(LoraVariant):
    """Rotation in place of LoRA's additive update; peft calls these hooks."""

    def supports_lora_conversion(self) -> bool:
        return False  # a rotation is not a low-rank additive update

    @staticmethod
    def init(module: LoraLinear, adapter_name: str, **kwargs) -> None:
        # peft made lora_A (r x in); the angles need one column per pair. Kaiming-uniform, as peft's A;
        # lora_B stays peft's zeros, so the rotation starts at the identity
        old = module.lora_A[adapter_name]
        new = nn.Linear(module.in_features // 2, old.out_features, bias=False,
                        device=old.weight.device, dtype=old.weight.dtype)
        module.lora_A[adapter_name] = new

    @staticmethod
    def merge_safe(module: LoraLinear, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        return rotate_pairs(orig_weight, angles(module, active_adapter).detach())

    @staticmethod
    def merge_unsafe(module: LoraLinear, active_adapter: str, orig_weight: torch.Tensor) -> None:
        orig_weight.data = rotate_pairs(orig_weight.data, angles(module, active_adapter).detach())

    @staticmethod
    def unmerge(module: LoraLinear, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        return rotate_pairs(orig_weight.data, -angles(module, active_adapter).detach())

    @staticmethod
    def forward(module: LoraLinear, active_adapter: str, x: torch.Tensor, result: torch.Tensor,
                **kwargs) -> torch.Tensor:
        # result already holds W x + b; add (W' - W) x. Exact at theta = 0, and one extra matmul like LoRA's two
        w = module.get_base_layer().weight.float()
        delta = rotate_pairs(w, angles(module, active_adapter)) - w
        return result + F.linear(module.lora_dropout[active_adapter](x), delta.to(x.dtype))


class LoRaDLinear(LoraLinear):
    """peft's LoRA Linear whose every adapter is a LoRaD rotation."""

    def resolve_lora_variant(self, *, config: LoraConfig, **kwargs) -> LoraVariant:
        if config.use_dora:
            raise ValueError("LoRaD and DoRA are separate adapters: use_dora must be False for LoRaD")
        return LoRaDVariant()


def lorad_config(**lora_config_kwargs) -> LoraConfig:
    """A LoraConfig whose nn.Linear targets become LoRaD layers (other layer types stay unsupported)."""
    cfg = LoraConfig(**lora_config_kwargs)
    cfg._register_custom_module({nn.Linear: LoRaDLinear})
    return cfg


def lorad_param_count(in_features: int, out_features: int, rank: int) -> int:
    """Trainable parameters of one LoRaD Linear: r (out + in // 2), against LoRA's r (out + in)."""
    return rank * (out_features + in_features // 2)
