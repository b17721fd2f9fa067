"""The one training loop every training rule uses, built on accelerate.

What changes between stages is the objective (an nn.Module whose forward maps a
batch to a scalar loss) and the batches it is fed; the loop owns devices, mixed
precision, gradient accumulation, clipping, the progress bar, NaN checks and the
loss curve CSV written beside the checkpoint.
"""
from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterable, Iterator

import torch
import torch.nn as nn
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from ..data.io import atomic_path


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class TrainConfig:
    steps: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    warmup_steps: int = 0
    mixed_precision: str = "auto"  # "auto": bf16 on a GPU, fp32 on a CPU
    log_every: int = 25
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training keys {sorted(unknown)}; expected some of {sorted(known)}")
        return cls(**d)


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    mp = cfg.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() else "no"
    return Accelerator(mixed_precision=mp, gradient_accumulation_steps=cfg.grad_accum)


def to_device(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def train(objective: nn.Module, params: Iterable[torch.nn.Parameter], batches: Iterator[dict],
          cfg: TrainConfig, loss_csv: str | Path, desc: str = "train",
          accelerator: Accelerator | None = None) -> dict:
    """Optimise `params` of `objective` for cfg.steps optimizer steps.

    Returns throughput and timing stats. Raises NonFiniteLossError naming the
    step if the loss becomes NaN/inf; nothing is saved by the loop itself, so a
    failed run leaves no output that looks complete.
    """
    set_seed(cfg.seed)
    acc = accelerator or make_accelerator(cfg)
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError(f"{desc}: no trainable parameters")
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0)
    objective, opt, sched = acc.prepare(objective, opt, sched)
    objective.train()

    rows, window, seen = [], [], 0
    t0 = time.perf_counter()
    bar = tqdm(total=cfg.steps, desc=desc, disable=not acc.is_local_main_process, mininterval=2.0)
    step = 0
    while step < cfg.steps:
        batch = to_device(next(batches), acc.device)
        with acc.accumulate(objective):
            loss = objective(batch)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"{desc}: loss is {loss.item()} at optimizer step {step + 1}")
            acc.backward(loss)
            if acc.sync_gradients and cfg.max_grad_norm:
                acc.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            sched.step()
            # set_to_none=False: adapters that got no gradient this step keep a zero
            # grad instead of None, so AdamW treats every parameter the same way
            opt.zero_grad(set_to_none=False)
        window.append(loss.item())
        seen += _batch_len(batch)
        if not acc.sync_gradients:
            continue
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            elapsed = time.perf_counter() - t0
            rows.append({"step": step, "loss": sum(window) / len(window), "lr": sched.get_last_lr()[0],
                         "samples_per_s": seen / elapsed, "elapsed_s": elapsed})
            bar.set_postfix(loss=f"{rows[-1]['loss']:.4f}")
            window = []
    bar.close()
    elapsed = time.perf_counter() - t0
    _write_curve(loss_csv, rows)
    return {"steps": cfg.steps, "samples_seen": seen, "wall_s": elapsed, "samples_per_s": seen / elapsed,
            "final_loss": rows[-1]["loss"] if rows else math.nan,
            "trainable_params": sum(p.numel() for p in params)}


def _batch_len(batch: dict) -> int:
    for v in batch.values():
        return len(v)
    return 0


def _write_curve(path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["step", "loss", "lr", "samples_per_s", "elapsed_s"])
            w.writeheader()
            w.writerows(rows)


def infinite_batches(tensors: dict, batch_size: int, seed: int, extra: dict | None = None) -> Iterator[dict]:
    """Endless shuffled minibatches over aligned tensors (and aligned Python lists in `extra`)."""
    n = len(next(iter(tensors.values())))
    if n == 0:
        raise ValueError("cannot train on an empty dataset")
    g = torch.Generator().manual_seed(seed)
    extra = extra or {}
    while True:
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            idx = perm[i:i + batch_size]
            b = {k: v[idx] for k, v in tensors.items()}
            b.update({k: [v[j] for j in idx.tolist()] for k, v in extra.items()})
            yield b
