"""Assembling TimeStep experts: which LoRA experts act at timestep t, and with what weight.

`ExpertMixture` implements TSM's asymmetric mixture (Eq. 5-7):

    W x + B_core A_core x + sum_j G_j(z_t, t) B_j A_j x,   G(z_t, t) = FC(z_t) + E(t)

- the core expert is the one of the finest scale whose interval holds t; no gate;
- each context scale contributes its expert for t, weighted by one gate;
- one router (FC and the T x (m-1) table E, both zero-initialised) per LoRA layer,
  so the assembled model starts exactly as the 1-stage core model;
- z_t is the layer's own input, mean-pooled over tokens per sample (default),
  or each token's input with ``per_token=True`` (a gate per token).

The same class covers the ablations: router input z_t / t / both, the symmetric
mixture (no core, every scale gated) and the MoE-LoRA baseline (n=1 experts,
softmax feature router, experts trained jointly).

`MergedIntervalExperts` is the 1-stage fast path: the active expert's delta is
merged into the weights once per interval change (peft merge/unmerge), so a
sampling step costs what a base-model step costs.

Both are driven by `Backbone.route(t)`, which the sampler and the training
objective call before each denoiser call with the per-sample timesteps.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from peft.tuners.lora import LoraLayer

from .experts import interval_of

ROUTER_INPUTS = ("both", "z", "t")


@dataclass(frozen=True)
class Scale:
    """One interval scale: n experts, expert i active on interval i. `names` are peft adapter names."""
    n: int
    names: tuple[str, ...]

    def __post_init__(self):
        if len(self.names) != self.n:
            raise ValueError(f"scale n={self.n} needs {self.n} experts, got {len(self.names)}")


class Router(nn.Module):
    """G(z_t, t) = FC(z_t) + E(t) for one LoRA layer, zero-initialised."""

    def __init__(self, in_features: int, n_gates: int, num_timesteps: int, router_input: str = "both"):
        super().__init__()
        if router_input not in ROUTER_INPUTS:
            raise ValueError(f"router_input must be one of {ROUTER_INPUTS}, got {router_input!r}")
        self.fc = nn.Linear(in_features, n_gates) if router_input in ("both", "z") else None
        self.emb = nn.Embedding(num_timesteps, n_gates) if router_input in ("both", "t") else None
        self.num_timesteps = num_timesteps
        for p in self.parameters():
            nn.init.zeros_(p)

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """z: (B, D) pooled or (B, L, D) per token; t: (B,). Returns (B, G) or (B, L, G)."""
        g = 0
        if self.fc is not None:
            g = self.fc(z.to(self.fc.weight.dtype))
        if self.emb is not None:
            e = self.emb(t.long().clamp(0, self.num_timesteps - 1))
            g = g + (e.unsqueeze(1) if z.ndim == 3 else e)
        return g


class ExpertMixture(nn.Module):
    """Routes every peft LoRA layer of `models` through core + gated context experts.

    core: the finest scale, applied ungated (None for the symmetric mixture / MoE).
    context: the gated scales. gate: "linear" (TSM: G as is) or "softmax" (MoE-LoRA).
    """

    def __init__(self, models: dict[str, nn.Module], core: Scale | None, context: list[Scale],
                 num_timesteps: int, router_input: str = "both", per_token: bool = False,
                 gate: str = "linear"):
        super().__init__()
        if core is None and not context:
            raise ValueError("a mixture needs a core scale or at least one context scale")
        if gate not in ("linear", "softmax"):
            raise ValueError(f"gate must be 'linear' or 'softmax', got {gate!r}")
        self.core, self.context = core, list(context)
        self.num_timesteps, self.per_token, self.gate = num_timesteps, per_token, gate
        self.routers = nn.ModuleDict()
        self._layers: dict[str, LoraLayer] = {}
        self._hooks = []
        self._t: torch.Tensor | None = None
        self.recorded: list[dict] | None = None  # set to [] to log every gate (for the gate-vs-t plot)
        names = set((core.names if core else ()) + sum((s.names for s in self.context), ()))
        for prefix, model in models.items():
            for lname, layer in model.named_modules():
                if not isinstance(layer, LoraLayer):
                    continue
                missing = names - set(layer.lora_A.keys())
                if missing:
                    raise ValueError(f"{prefix}.{lname} lacks experts {sorted(missing)}")
                key = f"{prefix}.{lname}".replace(".", "__")
                self._layers[key] = layer
                if self.context:
                    self.routers[key] = Router(layer.in_features, len(self.context), num_timesteps, router_input)
                # peft's own forward adds the active adapters; here the hook adds the routed ones
                layer.enable_adapters(False)
                self._hooks.append(layer.register_forward_hook(self._hook(key)))
        if not self._layers:
            raise ValueError("no peft LoRA layers found: load the experts before assembling them")

    def set_timesteps(self, t: torch.Tensor) -> bool:
        self._t = t
        return True  # gates depend on t itself

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def gates(self, key: str, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:  # a convolution's input (B, C, H, W): its channels, averaged over pixels
            z = x.mean(dim=(2, 3))
        else:  # a linear layer's (B, D) or (B, L, D): averaged over tokens unless routed per token
            z = x if (self.per_token and x.ndim == 3) else (x.mean(dim=1) if x.ndim == 3 else x)
        g = self.routers[key](z, t)
        return torch.softmax(g, dim=-1) if self.gate == "softmax" else g

    def _hook(self, key: str):
        def hook(layer: LoraLayer, args, output):
            t = self._t
            if t is None:
                raise RuntimeError("ExpertMixture: set_timesteps(t) (Backbone.route) was not called")
            x = args[0]
            if t.shape[0] != x.shape[0]:
                raise RuntimeError(f"{key}: {t.shape[0]} timesteps for a batch of {x.shape[0]}")
            delta = torch.zeros_like(output)
            if self.core is not None:
                delta = self._add_scale(layer, x, t, self.core, None, delta)
            if self.context:
                g = self.gates(key, x, t)
                if self.recorded is not None:
                    gm = g.detach().float().reshape(g.shape[0], -1, g.shape[-1]).mean(dim=1)
                    self.recorded += [{"layer": key, "t": float(tb), "scale": j, "gate": float(v)}
                                      for tb, row in zip(t.tolist(), gm.tolist()) for j, v in enumerate(row)]
                for j, scale in enumerate(self.context):
                    delta = self._add_scale(layer, x, t, scale, g[..., j], delta)
            return output + delta
        return hook

    def _add_scale(self, layer, x, t, scale: Scale, weight, delta):
        idx = interval_of(t, scale.n, self.num_timesteps)
        experts = idx.unique().tolist()
        for e in experts:
            # sampling: the whole batch shares t, so skip the gather/scatter
            whole = len(experts) == 1
            sel = None if whole else (idx == e).nonzero(as_tuple=True)[0]
            name = scale.names[e]
            xs = x if whole else x[sel]
            d = layer.lora_B[name](layer.lora_A[name](layer.lora_dropout[name](xs.to(layer.lora_A[name].weight.dtype))))
            d = d * layer.scaling[name]
            if weight is not None:
                w = weight if whole else weight[sel]
                d = d * w.unsqueeze(-1) if w.ndim == d.ndim - 1 else d * w.view(-1, *([1] * (d.ndim - 1)))
            delta = delta + d.to(delta.dtype) if whole else delta.index_add(0, sel, d.to(delta.dtype))
        return delta


class MergedIntervalExperts:
    """1-stage fast path: merge the expert of the current interval into the weights.

    A batch whose samples fall in one interval (sampling; any batch of a vanilla LoRA) runs on the merged
    weights. One that spans intervals (training, a distillation teacher) is routed per sample, unmerged, by
    a core-only `ExpertMixture`: the same function. Call `restore()` to unmerge before using the layers any
    other way.
    """

    def __init__(self, models: dict[str, nn.Module], scale: Scale, num_timesteps: int):
        self.models, self.scale, self.num_timesteps = models, scale, num_timesteps
        self.layers = [m for model in models.values() for m in model.modules() if isinstance(m, LoraLayer)]
        if not self.layers:
            raise ValueError("no peft LoRA layers found: load the experts first")
        self.active: int | None = None
        self.merges = 0
        self.per_sample: ExpertMixture | None = None

    def set_timesteps(self, t: torch.Tensor) -> bool:
        idx = interval_of(t.flatten(), self.scale.n, self.num_timesteps)
        if not bool((idx == idx[0]).all()):
            self.restore()
            if self.per_sample is None:
                self.per_sample = ExpertMixture(self.models, self.scale, [], self.num_timesteps)
            return self.per_sample.set_timesteps(t)
        if self.per_sample is not None:
            self.per_sample.remove()
            self.per_sample = None
        i = int(idx[0])
        if i == self.active:
            return False
        self.restore()
        for layer in self.layers:
            layer.enable_adapters(True)
            layer.merge(adapter_names=[self.scale.names[i]])
        self.active = i
        self.merges += 1
        return True

    def restore(self) -> None:
        if self.active is not None:
            for layer in self.layers:
                layer.unmerge()
        self.active = None
