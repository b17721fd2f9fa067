"""Sample sizes from measured noise: the standard error of CompBench-mini and FID against how many images a run
samples, from the base models' own images.

CompBench-mini. A category's mean over P prompts with m images each has variance sb2 / P + sw2 / (P m), with sb2
the between-prompt and sw2 the within-prompt variance of the score (one-way random effects, ANOVA estimates). Both
are estimated per category and backbone from the base model's images, and the SE of the category and of the
six-category mean are predicted for other (P, m). A two-stage bootstrap (prompts, then images within a prompt)
checks the prediction at the measured P and smaller m.

FID. Its SE at n samples is a bootstrap: n of the run's FID features drawn with replacement, FID against the fixed
reference stats, the spread over draws (the plug-in estimate of sampling n images from the model); the mean over
draws shows FID's small-sample bias.

Reads the images `bench/sampler_comparison.py` wrote (one setting per backbone, the default sampler):
    .venv/bin/python bench/sample_size.py [--setting unipc_10] [--backbones unet dit mmdit]
Writes bench/results/sample_size.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tsmflow.data.grammar import CATEGORIES
from tsmflow.data.io import write_json
from tsmflow.evaluation.evaluator import load_evaluator
from tsmflow.evaluation.fid import fid_from_stats, folder_features, load_stats
from tsmflow.evaluation.stats import mean_se
from tsmflow.reporting.publish import git_commit

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench/results/sample_size"
# (prompts per category, images per prompt): the measured design first, then the alternatives
DESIGNS = [(20, 10), (20, 5), (20, 3), (40, 5), (40, 3), (60, 2), (120, 1)]
FID_N = [100, 200, 300, 500]


def variance_components(scores: pd.DataFrame) -> dict:
    """Per category: prompts P, images per prompt m, mean, and the ANOVA estimates of sb2 and sw2."""
    out = {}
    for cat, g in scores.groupby("category"):
        per = g.groupby("prompt")["score"]
        m = float(per.size().mean())
        sw2 = float(per.var(ddof=1).mean())
        sb2 = max(float(per.mean().var(ddof=1)) - sw2 / m, 0.0)
        out[cat] = {"prompts": int(per.ngroups), "images_per_prompt": m, "mean": float(g["score"].mean()),
                    "sb2": sb2, "sw2": sw2}
    return out


def predicted_se(comp: dict, prompts: int, m: int) -> dict:
    """SE per category and of the mean over categories (independent prompt sets) at P prompts, m images each."""
    se = {c: float(np.sqrt(v["sb2"] / prompts + v["sw2"] / (prompts * m))) for c, v in comp.items()}
    cats = [c for c in CATEGORIES if c in se]
    se["mean"] = mean_se(se[c] for c in cats)
    return se


def bootstrap_se(scores: pd.DataFrame, m: int, n_boot: int = 500, seed: int = 0) -> dict:
    """Two-stage bootstrap SE of each category mean and of their mean: prompts with replacement, then m of each
    prompt's images with replacement."""
    rng = np.random.default_rng(seed)
    groups = {c: [g["score"].to_numpy() for _, g in cg.groupby("prompt")] for c, cg in scores.groupby("category")}
    draws = {c: [] for c in groups}
    for _ in range(n_boot):
        for c, per in groups.items():
            pick = rng.integers(0, len(per), len(per))
            draws[c].append(np.mean([rng.choice(per[k], m).mean() for k in pick]))
    out = {c: float(np.std(v, ddof=1)) for c, v in draws.items()}
    cats = [c for c in CATEGORIES if c in draws]
    out["mean"] = float(np.std(np.mean([draws[c] for c in cats], axis=0), ddof=1))
    return out


def fid_by_n(feats: np.ndarray, ref: dict, sizes: list[int], n_boot: int = 200, seed: int = 0) -> list[dict]:
    out = []
    for n in sizes:
        if n > len(feats):
            continue
        rng = np.random.default_rng(seed + n)
        vals = []
        for _ in range(n_boot):
            x = feats[rng.integers(0, len(feats), n)]
            vals.append(fid_from_stats(x.mean(0), np.cov(x, rowvar=False), ref["mu"], ref["sigma"]))
        out.append({"n": n, "fid_mean": float(np.mean(vals)), "se": float(np.std(vals, ddof=1)), "n_boot": n_boot})
    return out


def markdown(rec: dict) -> str:
    lines = ["# Sample sizes from measured noise", "",
             f"Made by `bench/sample_size.py --setting {rec['setting']}` at commit {rec['commit']} ({rec['machine']}) "
             "from the base models' images of `bench/sampler_comparison.py`. SEs are in score points (percent) for "
             "CompBench-mini, in FID units for FID.", "",
             "## CompBench-mini: variance components", "",
             "sb: between-prompt SD, sw: within-prompt SD (one image's score about its prompt's mean).", "",
             "| backbone | " + " | ".join(f"{c} mean / sb / sw" for c in CATEGORIES) + " |",
             "|---|" + "---|" * len(CATEGORIES)]
    for bb, r in rec["backbones"].items():
        comp = r["components"]
        lines.append(f"| {bb} | " + " | ".join(
            f"{comp[c]['mean']:.1f} / {np.sqrt(comp[c]['sb2']):.1f} / {np.sqrt(comp[c]['sw2']):.1f}"
            for c in CATEGORIES) + " |")
    lines += ["", "## CompBench-mini: SE of a run's six-category mean, by design", "",
              "P prompts per category, m images per prompt; images = 6 P m per run. Predicted from the components; "
              "the bootstrap (at the measured P) checks the prediction.", "",
              "| P | m | images per run | " + " | ".join(f"{bb} predicted (bootstrap)" for bb in rec["backbones"])
              + " |", "|---|---|---|" + "---|" * len(rec["backbones"])]
    for d in rec["designs"]:
        cells = []
        for bb, r in rec["backbones"].items():
            key = f"{d['prompts']}x{d['m']}"
            boot = r["bootstrap"].get(key)
            cells.append(f"{r['predicted'][key]['mean']:.2f}" + (f" ({boot['mean']:.2f})" if boot else ""))
        lines.append(f"| {d['prompts']} | {d['m']} | {6 * d['prompts'] * d['m']} | " + " | ".join(cells) + " |")
    lines += ["", "## FID: bootstrap SE and mean at n samples", "",
              "| backbone | " + " | ".join(f"n={n}: FID / SE" for n in FID_N) + " |", "|---|" + "---|" * len(FID_N)]
    for bb, r in rec["backbones"].items():
        by = {x["n"]: x for x in r["fid"]}
        lines.append(f"| {bb} | " + " | ".join(f"{by[n]['fid_mean']:.3f} / {by[n]['se']:.3f}" if n in by else "-"
                                               for n in FID_N) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", default="results")
    ap.add_argument("--setting", default="unipc_10", help="the sampler_comparison folder: <solver>_<steps>")
    ap.add_argument("--backbones", nargs="+", default=["unet", "dit", "mmdit"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    res = ROOT / args.results
    evaluator = load_evaluator(res / "models/evaluator")
    ref = load_stats(res / "evaluator/fid_reference_shapes.npz")
    commit = git_commit(ROOT)
    rec = {"setting": args.setting, "commit": commit, "machine": f"{platform.machine()} CPU, no GPU",
           "designs": [{"prompts": p, "m": m} for p, m in DESIGNS], "backbones": {}}
    for bb in args.backbones:
        src = res / "bench/sampler_comparison" / bb / args.setting
        scores = pd.read_csv(src / "compbench_scores.csv")
        comp = variance_components(scores)
        measured_p = min(v["prompts"] for v in comp.values())
        measured_m = int(min(v["images_per_prompt"] for v in comp.values()))
        feats = folder_features(evaluator, src / "fid_samples").astype(np.float64)
        rec["backbones"][bb] = {
            "components": comp, "n_images": int(len(scores)), "n_fid": int(len(feats)),
            "predicted": {f"{p}x{m}": predicted_se(comp, p, m) for p, m in DESIGNS},
            "bootstrap": {f"{p}x{m}": bootstrap_se(scores, m) for p, m in DESIGNS
                          if p == measured_p and m <= measured_m},
            "fid": fid_by_n(feats, ref, FID_N)}
        print(bb, json.dumps(rec["backbones"][bb]["predicted"][f"{measured_p}x{measured_m}"]), flush=True)
    write_json(OUT.with_suffix(".json"), rec)
    OUT.with_suffix(".md").write_text(markdown(rec))
    print(markdown(rec))


if __name__ == "__main__":
    main()
