"""Speed of the Frechet distance, as ratios within one run: `fid_from_stats` (the eigenvalues of the symmetric
S2^1/2 S1 S2^1/2) against clean-fid's `frechet_distance` (scipy's `sqrtm` of S1 S2), and one bootstrap
resample with the reference's square root computed once, at each feature width: the miniature's shapes features
(96) and Inception's (2048). Also the largest relative difference of the two values.

The covariances come from random ReLU features (some units never fire), as many samples as `--n`.

    cd bench && ../.venv/bin/python fid_speed.py [--n 500] [--repeats 3]
Writes bench/results/fid_speed.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
from cleanfid.fid import frechet_distance

from tsmflow.evaluation.fid import fid_from_stats, psd_sqrt

ROOT = Path(__file__).resolve().parents[1]


def _stats(rng, n: int, d: int, shift: float):
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    x = np.maximum(rng.normal(shift, 1.0, size=(n, d)) @ mix, 0)
    x[:, : d // 50] = 0
    return x.mean(0), np.cov(x, rowvar=False)


def _time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500, help="samples behind each covariance (the default FID's 500)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--widths", type=int, nargs="+", default=[96, 2048])
    a = ap.parse_args()
    rows = []
    for d in a.widths:
        rng = np.random.default_rng(d)
        mu1, s1 = _stats(rng, a.n, d, 0.0)
        mu2, s2 = _stats(rng, 4 * a.n, d, 0.2)
        t_clean, v_clean = _time(lambda: float(frechet_distance(mu1, s1, mu2, s2)), a.repeats)
        t_ours, v_ours = _time(lambda: fid_from_stats(mu1, s1, mu2, s2), a.repeats)
        root = psd_sqrt(s2)
        t_boot, _ = _time(lambda: fid_from_stats(mu1, s1, mu2, s2, root), a.repeats)
        rows.append({"width": d, "clean_fid_s": t_clean, "ours_s": t_ours, "ours_cached_root_s": t_boot,
                     "speedup": t_clean / t_ours, "speedup_cached_root": t_clean / t_boot,
                     "rel_diff": abs(v_ours - v_clean) / abs(v_clean)})
    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    rec = {"commit": commit, "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU",
           "threads": os.environ.get("OMP_NUM_THREADS", "all"), "n": a.n, "repeats": a.repeats, "rows": rows,
           "command": "cd bench && ../.venv/bin/python fid_speed.py " + " ".join(
               f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(a).items())}
    out = ROOT / "bench" / "results" / "fid_speed"
    out.with_suffix(".json").write_text(json.dumps(rec, indent=2) + "\n")
    lines = [f"# Frechet distance speed ({rec['machine']}, threads: {rec['threads']})", "",
             f"Made by `{rec['command']}` at {commit}; covariances of {a.n} and {4 * a.n} random ReLU features, "
             f"median of {a.repeats}. Ratios within this one run.", "",
             "| width | clean-fid s | ours s | ours, reference root cached s | speedup | speedup cached "
             "| relative difference |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['width']} | {r['clean_fid_s']:.3f} | {r['ours_s']:.3f} | {r['ours_cached_root_s']:.3f} | "
              f"{r['speedup']:.1f} | {r['speedup_cached_root']:.1f} | {r['rel_diff']:.1e} |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
