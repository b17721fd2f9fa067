"""Throughput of one job on 2 threads against two concurrent jobs on 1 thread each.

The miniature's tensors are small (32x32 renders, 4x8x8 latents), so torch's intra-op threads may
leave a core idle. If two 1-thread jobs together do more work per second than one 2-thread job,
the workflow should give its small jobs 1 thread and let Snakemake run two at once.

Cases, per backbone: an expert training step (rank 4, batch 64) and base-model sampling (DDIM or
Euler; each step is one model call whatever the solver). Each case runs in fresh processes (bench/tsm_speed.py's workers):
  serial:     one process, torch.set_num_threads(2);
  concurrent: two processes started together, 1 thread each.
gain = (2 / concurrent s per item) / (1 / serial s per item); above 1 favours 1-thread jobs.

    .venv/bin/python bench/thread_split.py [--backbones unet dit mmdit] [--repeats 3]
Writes bench/results/thread_split.{json,md}. Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from tsm_speed import _sample, _train_steps, _worker  # noqa: E402

from tsmflow.reporting.publish import git_commit  # noqa: E402


def _run(fn, case, args, threads: int, n_procs: int) -> list[dict]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(q, fn, case, args, threads)) for _ in range(n_procs)]
    for p in procs:
        p.start()
    outs = [q.get() for _ in procs]
    for p in procs:
        p.join()
    return outs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbones", nargs="+", default=["unet", "dit", "mmdit"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--sample-steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    sample_steps = a.sample_steps
    cases = {"expert_step": (_train_steps, "s_per_step"), "base_sampling": (_sample, "s_per_image")}
    rows = []
    for bb in a.backbones:
        for case, (fn, key) in cases.items():
            args = (bb, "cpu", a.steps, a.batch) if fn is _train_steps else (bb, "cpu", a.images, sample_steps)
            serial, concurrent = [], []
            # alternate the two layouts, so a slow spell of a shared machine hits both
            for _ in range(a.repeats):
                serial.append(_run(fn, case, args, 2, 1)[0][key])
                concurrent.append(max(o[key] for o in _run(fn, case, args, 1, 2)))
            s, c = sorted(serial)[len(serial) // 2], sorted(concurrent)[len(concurrent) // 2]
            rows.append({"backbone": bb, "case": case, "unit": key, "serial_2threads": s,
                         "concurrent_1thread_slowest": c, "gain": 2 * s / c,
                         "all_serial": serial, "all_concurrent": concurrent})
            print(json.dumps(rows[-1]), flush=True)
    commit = git_commit(ROOT)
    rec = {"command": "bench/thread_split.py " + " ".join(sys.argv[1:]), "commit": commit,
           "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
           "torch": torch.__version__, "load_avg_end": os.getloadavg()[0], "batch": a.batch,
           "images": a.images, "sample_steps": sample_steps,
           "repeats": a.repeats, "rows": rows}
    out = ROOT / "bench/results/thread_split.json"
    out.write_text(json.dumps(rec, indent=2) + "\n")
    md = [f"# One 2-thread job vs two concurrent 1-thread jobs",
          "",
          f"Made by `.venv/bin/python {rec['command']}` at commit {commit} ({rec['machine']}, {rec['cpus']} CPUs, "
          f"no GPU, torch {rec['torch']}). Middle of {a.repeats} sorted rounds (the upper one of an "
          f"even count); concurrent takes the slower of the two processes. Training: rank-4 expert step, batch {a.batch}. Sampling: {a.images} images, "
          f"DDIM/Euler {sample_steps} steps (a solver's step costs one model call like any other). gain = 2 x serial / concurrent: above 1, two "
          "1-thread jobs do more work per second than one 2-thread job.",
          "",
          "| backbone | case | 2 threads, alone | 1 thread, 2 at once | gain |",
          "|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['backbone']} | {r['case']} ({r['unit']}) | {r['serial_2threads']:.3f} | "
                  f"{r['concurrent_1thread_slowest']:.3f} | {r['gain']:.2f} |")
    (ROOT / "bench/results/thread_split.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
