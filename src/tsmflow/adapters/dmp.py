"""DMP (Diffusion Model Patching): a mixture of learnable prompts added to every block's input.

Block i of the frozen denoiser gets prompts p_i of shape (N_i, D_i): one D_i-vector per token position of
that block's input. A gate (one linear layer) maps [timestep embedding; condition embedding; block depth]
to N logits; the block's input becomes x + softmax(logits)[:, :, None] * p_i (DMP Eq. 3).

- DiT (PixArt; the class-conditional DiT): every transformer block; N = patch tokens, D = inner dim.
- MM-DiT (SD3): the image stream of every joint block; the text stream is left alone.
- UNet: every `Transformer2DModel` of the UNet (down, mid, up). Its input is (B, C, H, W); the prompts are
  (H*W, C) at that block's own spatial size, one per position, added at every position.
Blocks of different sizes (UNet) share the gate: block i uses the first N_i of its N_max logits.

The gate's depth input is one-hot: a linear layer on a scalar depth could only shift the logits linearly
with depth. The condition embedding is the mean of the denoiser's text tokens (masked where a mask is
given); a class-conditional DiT's is its own embedding of the class label (the one its final layer reads). The
timestep embedding is diffusers' sinusoidal one. Prompts and gate start at zero, so a fresh
"add" patch changes nothing: the patched model computes exactly what the frozen model does. A fresh
"prepend" patch does change the output: its zero tokens still take part in the block's attention.

Variants (DMP Table 4): gate "hard" keeps the top ceil(top_k_frac * N) prompts with weight 1; "none" is
prompt tuning (every prompt, weight 1, no gate). selection "uniform" drops the depth input, so every block
mixes alike. position "prepend" (DiT, MM-DiT) puts the mixed prompts in front of the tokens as extra tokens
and drops them from the block's output.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.models.embeddings import get_timestep_embedding
from safetensors.torch import load_file, save_file

WEIGHTS = "dmp.safetensors"
CONFIG = "dmp_config.json"


@dataclass
class DMPConfig:
    gate: str = "soft"            # soft | hard | none (prompt tuning)
    selection: str = "distinct"   # distinct (depth is a gate input) | uniform
    position: str = "add"         # add | prepend
    condition: bool = True        # the text condition is a gate input (the paper's text-to-image default)
    top_k_frac: float = 0.75      # hard gate: share of prompts kept
    t_embed_dim: int = 64

    def __post_init__(self):
        for key, allowed in [("gate", ("soft", "hard", "none")), ("selection", ("distinct", "uniform")),
                             ("position", ("add", "prepend"))]:
            if getattr(self, key) not in allowed:
                raise ValueError(f"dmp.{key}={getattr(self, key)!r} is not one of {allowed}")
        if not 0 < self.top_k_frac <= 1:
            raise ValueError(f"dmp.top_k_frac={self.top_k_frac} is not in (0, 1]")
        if self.t_embed_dim < 2 or self.t_embed_dim % 2:
            raise ValueError(f"dmp.t_embed_dim={self.t_embed_dim} must be an even number >= 2")


def _blocks(denoiser: nn.Module, arch: str) -> list[tuple[str, nn.Module]]:
    if arch in ("dit", "mmdit", "cdit"):
        return [(f"transformer_blocks.{i}", b) for i, b in enumerate(denoiser.transformer_blocks)]
    if arch == "unet":
        from diffusers.models.transformers.transformer_2d import Transformer2DModel
        found = [(n, m) for n, m in denoiser.named_modules() if isinstance(m, Transformer2DModel)]
        # depth = the order a forward pass meets them: down blocks, mid block, up blocks
        stage = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
        return sorted(found, key=lambda nm: (stage[nm[0].split(".")[0]],
                                             [int(p) for p in nm[0].split(".") if p.isdigit()]))
    raise ValueError(f"unknown arch {arch!r}")


def _hidden(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args, kwargs, h):
    if args:
        return (h, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": h}


def _cond_dim(denoiser: nn.Module, arch: str) -> int:
    c = denoiser.config
    return {"unet": lambda: c.cross_attention_dim, "dit": lambda: c.caption_channels,
            "mmdit": lambda: c.joint_attention_dim,
            "cdit": lambda: c.num_attention_heads * c.attention_head_dim}[arch]()


def class_embedding(denoiser: nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """(B, D) a class-conditional DiT's embedding of its labels: the first block's table, which its output layer
    also conditions on (diffusers' DiTTransformer2DModel)."""
    table = denoiser.transformer_blocks[0].norm1.emb.class_embedder.embedding_table
    return table(labels.to(table.weight.device))


def gate_condition(arch: str, denoiser: nn.Module, cond: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(condition tokens, mask) the gate reads for an encoded condition, as the hooks see them while sampling."""
    if arch == "cdit":
        return class_embedding(denoiser, cond["class_labels"]).unsqueeze(1), None
    from ..models.backbone import denoiser_mask
    return cond["hidden"], denoiser_mask(arch, cond)


@torch.no_grad()
def _block_shapes(denoiser: nn.Module, arch: str) -> list[tuple[int, int]]:
    """(N, D) of each block's input, found by one forward pass on zeros (no data needed)."""
    blocks = _blocks(denoiser, arch)
    if not blocks:
        raise ValueError(f"the {arch} denoiser has no blocks to patch")
    shapes: dict[int, tuple[int, int]] = {}

    def record(i):
        def hook(module, args, kwargs):
            h = _hidden(args, kwargs)
            shapes[i] = (h.shape[-2] * h.shape[-1], h.shape[1]) if h.ndim == 4 else (h.shape[1], h.shape[2])
        return hook

    handles = [m.register_forward_pre_hook(record(i), with_kwargs=True) for i, (_, m) in enumerate(blocks)]
    try:
        from ..models.backbone import predict
        p = next(denoiser.parameters())
        c = denoiser.config
        size = c.sample_size
        x = torch.zeros(1, c.in_channels, size, size, device=p.device, dtype=p.dtype)
        cond = {"hidden": torch.zeros(1, 1, _cond_dim(denoiser, arch), device=p.device, dtype=p.dtype),
                "mask": None,
                "pooled": torch.zeros(1, getattr(c, "pooled_projection_dim", 1) or 1, device=p.device, dtype=p.dtype),
                "class_labels": torch.zeros(1, dtype=torch.long)}
        predict(arch, denoiser, x, torch.zeros(1, device=p.device), cond)
    finally:
        for h in handles:
            h.remove()
    return [shapes[i] for i in range(len(blocks))]


class MixtureOfPrompts(nn.Module):
    """Prompts and gate for one denoiser; `attach()` installs the hooks that apply them."""

    def __init__(self, denoiser: nn.Module, arch: str, cfg: DMPConfig):
        super().__init__()
        if cfg.position == "prepend" and arch == "unet":
            raise ValueError("dmp.position=prepend needs a token sequence; the UNet's blocks take (B, C, H, W) "
                             "feature maps, so use position=add")
        self.arch, self.cfg = arch, cfg
        self.block_names = [n for n, _ in _blocks(denoiser, arch)]
        self.shapes = _block_shapes(denoiser, arch)
        self.n_max = max(n for n, _ in self.shapes)
        self.cond_dim = _cond_dim(denoiser, arch) if cfg.condition else 0
        self.prompts = nn.ParameterList([nn.Parameter(torch.zeros(n, d)) for n, d in self.shapes])
        self.gate = None
        if cfg.gate != "none":
            depth = len(self.shapes) if cfg.selection == "distinct" else 0
            self.gate = nn.Linear(cfg.t_embed_dim + self.cond_dim + depth, self.n_max)
            nn.init.zeros_(self.gate.weight)
            nn.init.zeros_(self.gate.bias)
        p = next(denoiser.parameters())
        self.to(device=p.device)
        self._denoiser = [denoiser]  # a list: not a submodule, so the prompts' state_dict is the prompts only
        self._handles: list = []
        self._weights: list[torch.Tensor] | None = None
        self.last_gates: list[torch.Tensor] = []

    # ------------------------------------------------------------ the gate

    def gate_input(self, t: torch.Tensor, cond_hidden: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
        parts = [get_timestep_embedding(t.float().reshape(-1), self.cfg.t_embed_dim)]
        if self.cfg.condition:
            h = cond_hidden.float()
            if mask is not None:
                m = mask.float().unsqueeze(-1)
                parts.append((h * m).sum(1) / m.sum(1).clamp_min(1))
            else:
                parts.append(h.mean(1))
        x = torch.cat(parts, dim=-1)
        return x.to(self.gate.weight.dtype)

    def weights(self, t: torch.Tensor, cond_hidden=None, mask=None) -> list[torch.Tensor]:
        """Per block, the (B, N_i) weight of each prompt."""
        B = t.reshape(-1).shape[0]
        if self.gate is None:
            return [torch.ones(B, n, device=t.device) for n, _ in self.shapes]
        x = self.gate_input(t, cond_hidden, mask)
        L = len(self.shapes)
        out = []
        for i, (n, _) in enumerate(self.shapes):
            xi = x
            if self.cfg.selection == "distinct":
                xi = torch.cat([x, F.one_hot(torch.full((B,), i, device=x.device), L).to(x.dtype)], dim=-1)
            logits = self.gate(xi)[:, :n]
            soft = logits.softmax(dim=-1)
            if self.cfg.gate == "hard":
                k = math.ceil(self.cfg.top_k_frac * n)
                mask_k = torch.zeros_like(soft).scatter(1, soft.topk(k, dim=-1).indices, 1.0)
                # straight-through: weight 1 forward, the softmax's gradient backward, so the gate still learns
                soft = mask_k + (soft - soft.detach())
            out.append(soft)
        return out

    @torch.no_grad()
    def activation_map(self, timesteps: torch.Tensor, cond_hidden=None, mask=None) -> np.ndarray:
        """(n_t, n_blocks, N_max) gate weights at each timestep for one condition; NaN past a block's N_i."""
        n_t = timesteps.reshape(-1).shape[0]
        dev = self.prompts[0].device
        if cond_hidden is not None:
            cond_hidden = cond_hidden.to(dev).expand(n_t, *cond_hidden.shape[1:])
            mask = None if mask is None else mask.to(dev).expand(n_t, *mask.shape[1:])
        ws = self.weights(timesteps.to(dev), cond_hidden, mask)
        out = np.full((n_t, len(ws), self.n_max), np.nan)
        for i, w in enumerate(ws):
            out[:, i, : w.shape[1]] = w.float().cpu().numpy()
        return out

    # ------------------------------------------------------------ hooks

    def _denoiser_hook(self, module, args, kwargs):
        t = args[1] if len(args) > 1 else kwargs["timestep"]  # UNet: (sample, timestep); DiTs: keyword
        h = kwargs.get("encoder_hidden_states")
        if self.arch == "cdit":  # the condition is the class, as the model embeds it: one "token"
            h = class_embedding(module, kwargs["class_labels"]).unsqueeze(1)
        x = args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))
        if self.prompts[0].device != x.device:  # follow the denoiser (a paper model's run moves it to the GPU)
            self.to(x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        self._weights = self.weights(t, h, kwargs.get("encoder_attention_mask"))
        self.last_gates = self._weights if self.gate is not None else []

    def _mix(self, i: int, like: torch.Tensor) -> torch.Tensor:
        """(B, N_i, D_i) weighted prompts of block i."""
        return (self._weights[i].unsqueeze(-1) * self.prompts[i].unsqueeze(0)).to(like.dtype)

    def _block_hook(self, i: int):
        def hook(module, args, kwargs):
            h = _hidden(args, kwargs)
            mix = self._mix(i, h)
            if h.ndim == 4:  # UNet feature map (B, C, H, W): prompts laid out row-major over positions
                B, C, H, W = h.shape
                h = h + mix.reshape(B, H, W, C).permute(0, 3, 1, 2)
            elif self.cfg.position == "prepend":
                h = torch.cat([mix, h], dim=1)
            else:
                h = h + mix
            return _with_hidden(args, kwargs, h)
        return hook

    def _strip_hook(self, i: int):
        n = self.shapes[i][0]

        def hook(module, args, kwargs, output):
            if isinstance(output, tuple):  # SD3 joint block: (text stream, image stream)
                return (output[0], output[1][:, n:])
            return output[:, n:]
        return hook

    def attach(self) -> "MixtureOfPrompts":
        self.detach()
        den = self._denoiser[0]
        self._handles.append(den.register_forward_pre_hook(self._denoiser_hook, with_kwargs=True))
        modules = dict(den.named_modules())
        for i, name in enumerate(self.block_names):
            m = modules[name]
            self._handles.append(m.register_forward_pre_hook(self._block_hook(i), with_kwargs=True))
            if self.cfg.position == "prepend":
                self._handles.append(m.register_forward_hook(self._strip_hook(i), with_kwargs=True))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def add_dmp(backbone, cfg: DMPConfig) -> MixtureOfPrompts:
    """Build a zero-initialised patch for `backbone`'s denoiser and attach it."""
    return MixtureOfPrompts(backbone.denoiser, backbone.arch, cfg).attach()


# ---------------------------------------------------------------- balancing losses (DMP appendix E)


def importance_loss(gates: list[torch.Tensor], eps: float = 1e-5) -> torch.Tensor:
    """Squared coefficient of variation of the gate weights summed over blocks and the batch.

    g~_n = sum_i sum_b g^i_{b,n}; loss = var_n(g~) / (mean_n(g~)^2 + eps), with the population variance
    (the appendix's "sigma" is this variance). Blocks with different prompt counts (UNet) cannot be summed
    per prompt: each group of blocks sharing N gets the formula, and the groups are averaged.
    """
    groups: dict[int, torch.Tensor] = {}
    for g in gates:
        s = g.float().sum(0)
        groups[g.shape[1]] = groups[g.shape[1]] + s if g.shape[1] in groups else s
    losses = [s.var(unbiased=False) / (s.mean() ** 2 + eps) for s in groups.values()]
    return torch.stack(losses).mean()


def load_loss(gates: list[torch.Tensor]) -> torch.Tensor:
    """(1/L) sum_i sum_n 1[g^i_n < 0], averaged over the batch (appendix Eq. 11).

    A count: its gradient is zero everywhere, so it cannot change what trains. Under a softmax gate every
    weight is positive and it is identically 0; it is non-zero only on pre-softmax logits. Kept because
    the paper's Table 4e varies its coefficient.
    """
    return torch.stack([(g < 0).float().sum(-1).mean() for g in gates]).sum() / len(gates)


# ---------------------------------------------------------------- saving


def save_dmp(out_dir, module: MixtureOfPrompts) -> None:
    """`dmp.safetensors` (prompts, gate) and `dmp_config.json` into an existing directory."""
    out = Path(out_dir)
    tensors = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    save_file(tensors, str(out / WEIGHTS), metadata={"format": "pt"})
    (out / CONFIG).write_text(json.dumps({"config": asdict(module.cfg), "arch": module.arch,
                                          "blocks": module.block_names, "shapes": module.shapes,
                                          "cond_dim": module.cond_dim}, indent=2))


def load_dmp(backbone, adapter_dir) -> MixtureOfPrompts:
    """Rebuild a saved patch on `backbone`, check it fits, load it (safetensors only) and attach it."""
    path = Path(adapter_dir) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a saved DMP patch (has train_dmp run?)")
    saved = json.loads(path.read_text())
    if saved["arch"] != backbone.arch:
        raise ValueError(f"{adapter_dir}: DMP patch was trained on {saved['arch']!r}, not {backbone.arch!r}")
    module = MixtureOfPrompts(backbone.denoiser, backbone.arch, DMPConfig(**saved["config"]))
    if module.block_names != saved["blocks"] or [list(s) for s in module.shapes] != saved["shapes"]:
        raise ValueError(f"{adapter_dir}: DMP patch blocks/shapes {saved['shapes']} do not match this "
                         f"denoiser's {module.shapes}")
    module.load_state_dict(load_file(str(Path(adapter_dir) / WEIGHTS)))
    return module.attach()
