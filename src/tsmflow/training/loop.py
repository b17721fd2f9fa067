"""The one training loop every training rule uses, built on accelerate.

What changes between stages is the objective (an nn.Module whose forward maps a
batch to a scalar loss) and the batches it is fed; the loop owns devices, mixed
precision, gradient accumulation, clipping, the progress bar, NaN checks and the
loss curve CSV written beside the checkpoint.

Resuming: given a `checkpoint` path, the loop saves the trainable parameters,
optimizer, scheduler and RNG states there every `checkpoint_every` steps (one
safetensors file, written atomically; the bookkeeping rides in its metadata,
so nothing is ever unpickled). A rerun of a killed job finds it, restores all
of it, and fast-forwards the batch iterator, so on a CPU the final weights
equal an uninterrupted run's. `resumable_output` gives each training stage its
output directory and a checkpoint path that outlives a killed job.
"""
from __future__ import annotations

import csv
import hashlib
import itertools
import json
import logging
import math
import random
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn as nn
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..data.io import atomic_dir, atomic_path
from ..layout import snapshot_dir

log = logging.getLogger(__name__)


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
    lr_schedule: str = "constant"  # after warmup: "constant", or "cosine" decay to 0 at the last step
    mixed_precision: str = "auto"  # "auto": bf16 on a GPU, fp32 on a CPU
    log_every: int = 25
    checkpoint_every: int = 100  # optimizer steps between resume checkpoints (0: only at the end)
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training keys {sorted(unknown)}; expected some of {sorted(known)}")
        return cls(**d)


def seeded(train_cfg: dict, seed: int, offset: int = 0) -> dict:
    """A train block for seed k of a stage: its seed shifted by 1000 k + offset (e.g. an expert's interval), so
    seeds change init, data order and t draws, and a rerun of one seed repeats it."""
    return {**train_cfg, "seed": train_cfg.get("seed", 0) + 1000 * seed + offset}


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    mp = cfg.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() else "no"
    return Accelerator(mixed_precision=mp, gradient_accumulation_steps=cfg.grad_accum)


def to_device(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def checked_snapshots(snapshots, steps: int, desc: str) -> list[int]:
    """The sorted snapshot steps of a job of `steps` steps; each must lie strictly inside it."""
    out = sorted(set(int(s) for s in snapshots or ()))
    bad = [s for s in out if not 0 < s < steps]
    if bad:
        raise ValueError(f"{desc}: snapshot steps {bad} are not between 0 and steps={steps}")
    return out


def snapshot_saver(snapshots: list[int], ckpt_dir, save: Callable, every: int = 1) -> Callable[[int], None]:
    """`train`'s on_step: after optimizer step k * `every`, k a snapshot, `save(dir)` into `step<k>/` of the
    checkpoint folder, which outlives a killed job; `keep_snapshots` copies them into the output at the end."""
    def on_step(step: int) -> None:
        if step % every == 0 and step // every in snapshots:
            with atomic_dir(snapshot_dir(ckpt_dir, step // every)) as d:
                save(d)
    return on_step


def keep_snapshots(snapshots: list[int], ckpt_dir, out_dir) -> None:
    """Copy the snapshots into the job's output (only the main process wrote them; the others' output is scratch)."""
    if PartialState().is_main_process:
        for s in snapshots:
            shutil.copytree(snapshot_dir(ckpt_dir, s), snapshot_dir(out_dir, s))


@contextmanager
def resumable_output(out_dir):
    """`atomic_dir(out_dir)` and a checkpoint folder beside it that survives a killed job.

    Yields (tmp, ckpt_dir). Snakemake deletes a failed job's declared outputs, so the
    checkpoints live in a hidden sibling it does not know about; they are removed
    once the finished output has been renamed into place. Under `accelerate launch`
    with several processes only the main one writes; the others write into a scratch dir.
    """
    out_dir = Path(out_dir)
    ckpt_dir = out_dir.parent / f".{out_dir.name}.ckpt"
    if not PartialState().is_main_process:
        with tempfile.TemporaryDirectory() as scratch:
            yield Path(scratch), ckpt_dir
        PartialState().wait_for_everyone()
        return
    with atomic_dir(out_dir) as tmp:
        yield Path(tmp), ckpt_dir
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    if PartialState().num_processes > 1:
        PartialState().wait_for_everyone()


def train(objective: nn.Module, params: Iterable[torch.nn.Parameter], batches: Iterator[dict],
          cfg: TrainConfig, loss_csv: str | Path, desc: str = "train",
          accelerator: Accelerator | None = None, checkpoint: str | Path | None = None,
          on_step: Callable[[int], None] | None = None, phases: list[str] | None = None) -> dict:
    """Optimise `params` of `objective` for cfg.steps optimizer steps.

    `params` holds parameters, or torch param-group dicts (``{"params": [...], "lr": ..., "weight_decay": ...}``)
    whose options override cfg's for their parameters (e.g. a text encoder trained at its own learning rate).
    Returns throughput and timing stats. Raises NonFiniteLossError naming the
    step if the loss becomes NaN/inf; the loop writes no output of its own, so a
    failed run leaves nothing that looks complete. With `checkpoint`, training
    resumes from that file if it holds a matching earlier run, and saves it
    every cfg.checkpoint_every steps and at the end. `on_step(step)` runs on the main
    process after every optimizer step (e.g. to save snapshots for FID over iterations).

    `phases` alternates what trains (e.g. DMD2's fake-score and generator updates, ``["fake"] * 5 + ["student"]``):
    optimizer step k belongs to phase ``phases[k % len(phases)]``, the objective is called as
    ``objective(batch, phase=...)``, and param groups with a ``"phase"`` key step only in their phase (their
    gradients are dropped otherwise, so AdamW leaves their weights and moments as they are). The loss curve adds a
    ``loss_<phase>`` column per phase.
    """
    set_seed(cfg.seed)
    acc = accelerator or make_accelerator(cfg)
    params, groups = _trainable(params)
    if not params:
        raise ValueError(f"{desc}: no trainable parameters")
    opt = torch.optim.AdamW(groups or params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg, s))
    objective, opt, sched = acc.prepare(objective, opt, sched)
    objective.train()

    rows, window, seen, step, drawn, before = [], [], 0, 0, 0, 0.0
    first = next(batches)
    batches = itertools.chain([first], batches)
    fingerprint = _fingerprint(desc, cfg, params, objective, first, groups)
    if checkpoint is not None and Path(checkpoint).is_file():
        state = _load_checkpoint(checkpoint, fingerprint, params, opt, sched)
        if state is not None:
            step, drawn, seen, rows, before = (state[k] for k in ("step", "drawn", "seen", "rows", "elapsed_s"))
            for _ in range(drawn):  # the same batches an uninterrupted run would see next
                next(batches)
            print(f"{desc}: resumed from {checkpoint} at optimizer step {step}/{cfg.steps}", flush=True)
    t0 = time.perf_counter() - before
    bar = tqdm(total=cfg.steps, initial=step, desc=desc, disable=not acc.is_local_main_process, mininterval=2.0)
    while step < cfg.steps:
        batch = to_device(shard(next(batches), acc.process_index, acc.num_processes), acc.device)
        drawn += 1
        phase = phases[step % len(phases)] if phases else None
        with acc.accumulate(objective):
            loss = objective(batch, phase=phase) if phases else objective(batch)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"{desc}: loss is {loss.item()} at optimizer step {step + 1}"
                                         + (f" (phase {phase})" if phase else ""))
            acc.backward(loss)
            if acc.sync_gradients and cfg.max_grad_norm:
                acc.clip_grad_norm_(params, cfg.max_grad_norm)
            if phase is not None:
                _drop_other_phases(opt, phase)
            opt.step()
            sched.step()
            # set_to_none=False: adapters that got no gradient this step keep a zero
            # grad instead of None, so AdamW treats every parameter the same way
            opt.zero_grad(set_to_none=False)
        window.append((phase, loss.item()))
        seen += _batch_len(batch)
        if not acc.sync_gradients:
            continue
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            elapsed = time.perf_counter() - t0
            rows.append({"step": step, "loss": sum(v for _, v in window) / len(window),
                         "lr": sched.get_last_lr()[0], "samples_per_s": seen / elapsed, "elapsed_s": elapsed,
                         **_phase_losses(window, phases)})
            bar.set_postfix(loss=f"{rows[-1]['loss']:.4f}")
            window = []
        if on_step is not None and acc.is_main_process:
            on_step(step)
        if checkpoint is not None and acc.is_main_process and (
                step == cfg.steps or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)):
            _save_checkpoint(checkpoint, fingerprint, params, opt, sched, {
                "step": step, "drawn": drawn, "seen": seen, "rows": rows,
                "elapsed_s": time.perf_counter() - t0})
    bar.close()
    elapsed = time.perf_counter() - t0
    _write_curve(loss_csv, rows)
    return {"steps": cfg.steps, "samples_seen": seen, "wall_s": elapsed, "samples_per_s": seen / elapsed,
            "final_loss": rows[-1]["loss"] if rows else math.nan,
            "trainable_params": sum(p.numel() for p in params)}


def _drop_other_phases(opt, phase: str) -> None:
    for g in opt.param_groups:
        if g.get("phase", phase) != phase:
            for p in g["params"]:
                p.grad = None


def _phase_losses(window: list[tuple], phases: list[str] | None) -> dict:
    """Mean loss of each phase over a logging window (NaN for a phase the window did not reach)."""
    out = {}
    for ph in dict.fromkeys(phases or []):
        vals = [v for p, v in window if p == ph]
        out[f"loss_{ph}"] = sum(vals) / len(vals) if vals else math.nan
    return out


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """The learning-rate multiplier at optimizer step `step` (0-based): linear warmup, then constant
    or a cosine decay to 0 at cfg.steps (a short run ends at a settled point, as EMA would give)."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    if cfg.lr_schedule == "constant":
        return warm
    if cfg.lr_schedule == "cosine":
        span = max(1, cfg.steps - cfg.warmup_steps)
        return warm * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0, step - cfg.warmup_steps) / span)))
    raise ValueError(f"unknown lr_schedule {cfg.lr_schedule!r}; expected constant or cosine")


def _trainable(params) -> tuple[list, list[dict] | None]:
    """(trainable parameters, their param groups or None): frozen parameters and empty groups are dropped."""
    params = list(params)
    if not (params and isinstance(params[0], dict)):
        return [p for p in params if p.requires_grad], None
    groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in params]
    groups = [g for g in groups if g["params"]]
    return [p for g in groups for p in g["params"]], groups


def _fingerprint(desc: str, cfg: TrainConfig, params: list, objective: nn.Module, first_batch: dict,
                 groups: list[dict] | None = None) -> str:
    """Identifies a training run, so a checkpoint of another run is never resumed.

    Config and parameter shapes, plus cheap digests of the frozen weights (an upstream
    model that was retrained) and of the first batch (data that changed). Param-group
    options count only where groups are given, so runs without groups keep their fingerprints.
    """
    with torch.no_grad():
        frozen = sum(float(p.double().sum()) for p in objective.parameters() if not p.requires_grad)
        data = [float(v.double().sum()) if torch.is_tensor(v) else str(v) for _, v in sorted(first_batch.items())]
    parts = [desc, asdict(cfg), [list(p.shape) for p in params], f"{frozen:.10e}", data]
    if groups:
        parts.append([{**{k: v for k, v in g.items() if k != "params"}, "n_params": len(g["params"])}
                      for g in groups])
    key = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _save_checkpoint(path, fingerprint: str, params: list, opt, sched, progress: dict) -> None:
    tensors = {f"param.{i}": p.detach().cpu().contiguous() for i, p in enumerate(params)}
    osd = opt.state_dict()
    plain_state = {}
    for i, st in osd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{i}.{k}"] = v.detach().cpu().contiguous()
            else:
                plain_state.setdefault(str(i), {})[k] = v
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for d, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{d}"] = s
    np_state = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np_state[1].astype(np.int64))
    meta = {"fingerprint": fingerprint, "progress": progress, "param_groups": osd["param_groups"],
            "opt_plain_state": plain_state, "scheduler": sched.state_dict(),
            "numpy_rng": [np_state[0], *map(float, np_state[2:])], "python_rng": random.getstate()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"state": json.dumps(meta)})


def _load_checkpoint(path, fingerprint: str, params: list, opt, sched) -> dict | None:
    """Restore a checkpoint in place; None (and a warning) if it belongs to another run or is unreadable."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads(f.metadata()["state"])
        tensors = load_file(str(path))
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as e:
        log.warning("ignoring unreadable checkpoint %s (%s); training from the start", path, e)
        return None
    if meta["fingerprint"] != fingerprint:
        log.warning("ignoring checkpoint %s: it is of another config or model; training from the start", path)
        return None
    with torch.no_grad():
        for i, p in enumerate(params):
            p.copy_(tensors[f"param.{i}"])
    state = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, i, k = key.split(".", 2)
            state.setdefault(int(i), {})[k] = v
    for i, st in meta["opt_plain_state"].items():
        state.setdefault(int(i), {}).update(st)
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})
    sched.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    name, *rest = meta["numpy_rng"]
    np.random.set_state((name, tensors["rng.numpy"].numpy().astype(np.uint32), int(rest[0]), int(rest[1]),
                         rest[2]))
    version, internal, gauss = meta["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    return meta["progress"]


def shard(batch: dict, rank: int, world: int) -> dict:
    """Process `rank`'s share of a global batch (every process draws the same global batches)."""
    if world == 1:
        return batch
    if _batch_len(batch) < world:
        raise ValueError(f"batch of {_batch_len(batch)} cannot be split over {world} processes")
    return {k: v[rank::world] for k, v in batch.items()}


def _batch_len(batch: dict) -> int:
    for v in batch.values():
        return len(v)
    return 0


def _write_curve(path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            extra = [k for k in (rows[0] if rows else {}) if k.startswith("loss_")]
            w = csv.DictWriter(f, fieldnames=["step", "loss", "lr", "samples_per_s", "elapsed_s", *extra])
            w.writeheader()
            w.writerows(rows)


def to_pixels(images) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


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
