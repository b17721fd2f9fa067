"""DeMe's merging: task vectors, the merge, their cosine similarities, and the merge-weight searches.

theta_merged = theta_0 + sum_i w_i tau_i, tau_i = theta_i - theta_0 (supplement Eq. 10). The arithmetic
runs in float64 and is cast back at the end, so w = 0 gives theta_0 and w = e_i gives theta_i bit for bit
(for float32/16 weights: float64 holds their differences exactly unless an entry changes magnitude by ~2^29).

The paper picks w by an exhaustive grid search with a variable step, scored by FID-5K. `grid_search` is
that grid at one step; `pattern_search` is the cheaper search the workflow runs: a compass search on the
same grid whose step halves when no neighbour improves. Both take any objective w -> float (lower is
better), never evaluate a point twice, and log every evaluation to a CSV as it happens.

`RangeEnsemble` is DeMe before merging: at each sampling step the denoiser holds the weights of the range
model whose timestep range contains t.
"""
from __future__ import annotations

import csv
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file

from ..adapters.experts import interval_bounds, interval_of

State = dict[str, torch.Tensor]
DENOISER_WEIGHTS = "diffusion_pytorch_model.safetensors"  # what diffusers' save_pretrained writes


def load_range_states(range_dirs) -> list[dict]:
    out = []
    for d in range_dirs:
        path = Path(d) / DENOISER_WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(f"{path}: DeMe range model not found (has deme_finetune_range run?)")
        out.append(load_file(str(path)))
    return out


def task_vectors(base: State, finetuned: list[State]) -> list[State]:
    """tau_i = theta_i - theta_0 over the floating-point entries, in float64."""
    taus = []
    for i, sd in enumerate(finetuned):
        if sd.keys() != base.keys():
            diff = sorted(set(sd) ^ set(base))[:3]
            raise ValueError(f"model {i} does not match the base model: keys differ ({diff})")
        tau = {}
        for k, v in base.items():
            if sd[k].shape != v.shape:  # a silent broadcast would give a wrong task vector
                raise ValueError(f"model {i}: entry {k!r} has shape {tuple(sd[k].shape)}, the base {tuple(v.shape)}")
            if v.is_floating_point():
                tau[k] = sd[k].double() - v.double()
            elif not torch.equal(sd[k], v):
                raise ValueError(f"model {i}: non-float entry {k!r} differs from the base model; cannot merge it")
        taus.append(tau)
    return taus


def merge(base: State, taus: list[State], weights) -> State:
    """theta_0 + sum_i w_i tau_i, cast back to each entry's dtype (non-float entries are the base's)."""
    weights = [float(w) for w in weights]
    if len(weights) != len(taus):
        raise ValueError(f"{len(weights)} weights for {len(taus)} task vectors")
    keys = set(taus[0]) if taus else set()
    for i, tau in enumerate(taus):
        if set(tau) != keys or not keys <= set(base):
            raise ValueError(f"task vector {i} does not match the base model: keys differ (use task_vectors)")
    out = {}
    for k, v in base.items():
        if k not in keys:
            out[k] = v.clone()
            continue
        acc = v.double().clone()
        for w, tau in zip(weights, taus):
            if w:
                acc += w * tau[k]
        out[k] = acc.to(v.dtype)
    return out


def cosine_matrix(taus: list[State]) -> np.ndarray:
    """Cosine similarity of every pair of task vectors, over all their entries (supplement Fig. 1)."""
    if not taus or any(set(t) != set(taus[0]) for t in taus):
        raise ValueError("cosine_matrix needs task vectors over the same entries (from task_vectors)")
    # the Gram matrix summed entry by entry: never holds N flattened copies of the whole model
    gram = torch.zeros(len(taus), len(taus), dtype=torch.float64)
    for k in taus[0]:
        f = torch.stack([t[k].detach().reshape(-1).double().cpu() for t in taus])
        gram += f @ f.T
    norm = gram.diagonal().sqrt().clamp_min(1e-30)
    return (gram / norm[:, None] / norm[None, :]).numpy()


# ---------------------------------------------------------------- searching the weights


@dataclass
class SearchResult:
    best_weights: tuple[float, ...]
    best_objective: float
    n_evals: int
    rows: list[dict] = field(default_factory=list)


class _Evaluator:
    """Memoised objective that appends one CSV row per evaluation (flushed: a long search can be watched)."""

    def __init__(self, f: Callable, n: int, log_csv, max_evals: int | None = None):
        self.f, self.n, self.max_evals = f, n, max_evals
        self.cache: dict[tuple, float] = {}
        self.rows: list[dict] = []
        self.path = Path(log_csv)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fields = ["eval", "phase", *[f"w{i}" for i in range(n)], "objective", "seconds"]
        with open(self.path, "w", newline="") as fh:
            csv.DictWriter(fh, self.fields).writeheader()

    @property
    def exhausted(self) -> bool:
        return self.max_evals is not None and len(self.rows) >= self.max_evals

    def __call__(self, w, phase: str) -> float:
        key = tuple(round(float(x), 9) for x in w)
        if key in self.cache:
            return self.cache[key]
        t0 = time.perf_counter()
        value = float(self.f(key))
        row = {"eval": len(self.rows), "phase": phase, **{f"w{i}": x for i, x in enumerate(key)},
               "objective": value, "seconds": round(time.perf_counter() - t0, 3)}
        self.rows.append(row)
        self.cache[key] = value
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, self.fields).writerow(row)
        return value

    def result(self) -> SearchResult:
        best = min(self.cache, key=lambda k: (self.cache[k], k))
        return SearchResult(best, self.cache[best], len(self.rows), self.rows)


def _axis(lo: float, hi: float, step: float) -> list[float]:
    if hi < lo or step <= 0:
        raise ValueError(f"search box [{lo}, {hi}] with step {step} is empty")
    k = int(np.floor((hi - lo) / step + 1e-9))
    return [round(lo + i * step, 9) for i in range(k + 1)]


def grid_search(f: Callable, n: int, lo: float, hi: float, step: float, log_csv) -> SearchResult:
    """Every combination of w_i in {lo, lo + step, ..., hi}: (k+1)^n evaluations, as the paper's grid."""
    ev = _Evaluator(f, n, log_csv)
    for w in itertools.product(_axis(lo, hi, step), repeat=n):
        ev(w, "grid")
    return ev.result()


def pattern_search(f: Callable, n: int, lo: float, hi: float, step: float, min_step: float, init,
                   log_csv, max_evals: int | None = None) -> SearchResult:
    """Compass search on the variable-step grid.

    From `init` (a scalar for every w_i, or a vector), evaluate w +- step e_i for every coordinate that stays
    in [lo, hi] and move to the best of them if it improves (best-of-all, so the path does not depend on the
    coordinate order); if none improves, halve the step. Stop when the step falls below `min_step` or after
    `max_evals` evaluations. Each point is snapped to the grid of its step, lo + k * step.
    """
    if min_step <= 0 or min_step > step:
        raise ValueError(f"min_step={min_step} must be in (0, step={step}]")
    if max_evals is not None and max_evals < 1:
        raise ValueError(f"max_evals={max_evals}: the start point alone takes one evaluation")
    w = np.full(n, float(init)) if np.isscalar(init) else np.asarray(init, dtype=float)
    if w.shape != (n,) or (w < lo - 1e-9).any() or (w > hi + 1e-9).any():
        raise ValueError(f"init {init} is not a point of the box [{lo}, {hi}]^{n}")
    ev = _Evaluator(f, n, log_csv, max_evals)
    snap = lambda v, s: np.clip(np.round(lo + np.round((v - lo) / s) * s, 9), lo, hi)  # noqa: E731
    w = snap(w, step)
    best = ev(w, f"step={step:g}")
    while step >= min_step - 1e-12 and not ev.exhausted:
        moves = []
        for i, sign in itertools.product(range(n), (1.0, -1.0)):
            cand = w.copy()
            cand[i] += sign * step
            if cand[i] < lo - 1e-9 or cand[i] > hi + 1e-9 or ev.exhausted:
                continue
            cand = snap(cand, step)
            moves.append((ev(cand, f"step={step:g}"), tuple(cand)))
        improving = [m for m in moves if m[0] < best]
        if improving:
            best, w = min(improving)
            w = np.asarray(w)
        else:
            step /= 2
    return ev.result()


# ---------------------------------------------------------------- before merging: the ensemble


class RangeEnsemble:
    """DeMe before merging: load the state of the range model whose range holds t into the denoiser.

    Driven by `Backbone.route(t)` like TSM's merged fast path. All samples of a call must share a range
    (the sampler passes one t per step); `restore()` puts the original weights back. Model i covers
    `ranges[i]` = interval_bounds(i, N, T), the same split of [0, T) as TSM's experts and as training.
    """

    def __init__(self, denoiser: nn.Module, states: list[State], num_train_timesteps: int):
        if not states:
            raise ValueError("a DeMe ensemble needs at least one range model")
        self.denoiser, self.states, self.T = denoiser, states, num_train_timesteps
        self.ranges = [interval_bounds(i, len(states), num_train_timesteps) for i in range(len(states))]
        self.original = {k: v.clone() for k, v in denoiser.state_dict().items()}
        for i, sd in enumerate(states):  # fail now, not at the first switch in the middle of sampling
            if sd.keys() != self.original.keys():
                raise ValueError(f"range model {i} does not match the denoiser: keys differ "
                                 f"({sorted(set(sd) ^ set(self.original))[:3]})")
        self.active: int | None = None
        self.switches = 0

    def set_timesteps(self, t: torch.Tensor) -> bool:
        ranges = interval_of(t.reshape(-1), len(self.states), self.T).unique()
        if len(ranges) != 1:
            raise ValueError(f"a DeMe ensemble needs one timestep per call (all samples in one range), "
                             f"got samples in ranges {ranges.tolist()}")
        i = int(ranges[0])
        if i != self.active:
            self.denoiser.load_state_dict(self.states[i])
            self.active = i
            self.switches += 1
        return False  # the text encoder is not part of the range models

    def restore(self) -> None:
        self.denoiser.load_state_dict(self.original)
        self.active = None
