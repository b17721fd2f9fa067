"""Samplers compared on the base models: CompBench-mini (strict score) and FID, as the workflow measures them.

Each setting samples the default config's CompBench-mini validation images and FID images with the
workflow's own folder writers, scores them with the workflow's evaluator and FID features, and is
compared with the reference setting (the first) on the same prompts, seeds and captions: a paired
prompt-level difference for CompBench-mini, a joint bootstrap for FID. Needs the foundation:
    .venv/bin/snakemake --cores 2 results/evaluator/validation.json results/evaluator/fid_reference_shapes.npz \
        results/models/base/unet results/models/base/dit results/models/base/mmdit
    .venv/bin/python bench/sampler_comparison.py [--backbones unet dit mmdit] \
        [--settings first_order:25 dpmsolver++:10 unipc:10 first_order:10] [--out NAME]
A setting is solver:steps[:precision] (precision fp32, the default, or bf16: the denoiser under bf16 autocast):
    .venv/bin/python bench/sampler_comparison.py --settings unipc:10 unipc:10:bf16 --out sampler_precision
Writes bench/results/NAME.{json,md} (default sampler_comparison); a rerun replaces the records of the backbones
it ran.
Images go to results/bench/sampler_comparison/, outside the DAG.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from tsmflow.data.grammar import CATEGORIES
from tsmflow.data.io import read_labels, write_json
from tsmflow.evaluation.evaluator import load_evaluator
from tsmflow.evaluation.fid import bootstrap_fid, folder_features, load_stats
from tsmflow.evaluation.scoring import score_folder
from tsmflow.evaluation.signal import category_summary, paired_effect
from tsmflow.models.backbone import load_mini_backbone
from tsmflow.sampling.folders import caption_folder, compbench_folder
from tsmflow.reporting.publish import git_commit

ROOT = Path(__file__).resolve().parents[1]
NOISE_Z = 2.0  # "within noise": |difference| under 2 standard errors


def measure(bb, evaluator, cfg: dict, res: Path, solver: str, steps: int, out: Path, precision: str = "fp32") -> dict:
    ev, g = cfg["evaluation"], cfg["sampling"]["guidance_scale"]
    files = {c: str(res / f"data/compbench/{c}_val.txt") for c in CATEGORIES}
    captions = [r["caption"] for r in read_labels(res / "data/reference/labels.jsonl")][: ev["fid"]["n_samples"]]
    t0 = time.perf_counter()
    compbench_folder(bb, files, out / "compbench", ev["images_per_prompt"], ev["seed"], steps, g, solver=solver,
                     precision=precision)
    t1 = time.perf_counter()
    caption_folder(bb, captions, out / "fid_samples", ev["seed"], steps, g, solver=solver, precision=precision)
    t2 = time.perf_counter()
    scores = score_folder(evaluator, out / "compbench", cfg["resolution"])
    scores.to_csv(out / "compbench_scores.csv", index=False)
    return {"solver": solver, "steps": steps, "precision": precision, "compbench_sampling_s": t1 - t0, "fid_sampling_s": t2 - t1,
            "n_compbench": int(len(scores)), "n_fid": len(captions),
            "compbench": category_summary(scores)}


def label(s: dict) -> str:
    p = s.get("precision", "fp32")
    return f"{s['solver']} {s['steps']}" + ("" if p == "fp32" else f" {p}")


def markdown(records: dict) -> str:
    lines = ["# Samplers on the base models", "",
             "Made by `bench/sampler_comparison.py` (its docstring has the commands). CompBench-mini: the strict "
             "score (%), ± one prompt-clustered standard error; FID: shapes features, ± bootstrap SE over samples. "
             "Differences are against each backbone's first setting on the same prompts, seeds and captions "
             f"(paired); a difference is *within noise* when |z| < {NOISE_Z:g}. Sampling wall time is for both "
             "image sets on the machine named below.", ""]
    for bb, r in records.items():
        lines += [f"## {bb}", "", f"Commit {r['commit']}, {r['machine']}, {r['threads']} threads. "
                  f"{r['settings'][0]['n_compbench']} CompBench-mini images, {r['settings'][0]['n_fid']} FID samples "
                  "per setting.", "",
                  "| setting | sampling s | speed-up | " + " | ".join(CATEGORIES) + " | mean | FID |",
                  "|" + "---|" * (5 + len(CATEGORIES))]
        ref_s = None
        for s in r["settings"]:
            wall = s["compbench_sampling_s"] + s["fid_sampling_s"]
            ref_s = ref_s or wall
            cb = s["compbench"]
            lines.append(f"| {label(s)} | {wall:.0f} | {ref_s / wall:.2f}x | "
                         + " | ".join(f"{cb[c]['mean']:.1f} ± {cb[c]['se']:.1f}" for c in CATEGORIES)
                         + f" | {cb['mean']['mean']:.1f} ± {cb['mean']['se']:.1f} | {s['fid']['fid']:.3f} ± "
                         f"{s['fid']['se']:.3f} |")
        lines += ["", "Against the first setting:", "",
                  "| setting | CompBench-mini mean diff | z | FID diff | z | verdict |", "|---|---|---|---|---|---|"]
        for s in r["settings"][1:]:
            d, f = s["vs_reference"]["compbench"]["mean"], s["vs_reference"]["fid"]
            same = abs(d["z"]) < NOISE_Z and abs(f["z"]) < NOISE_Z
            lines.append(f"| {label(s)} | {d['diff']:+.2f} ± {d['se']:.2f} | {d['z']:+.1f} | "
                         f"{f['diff']:+.3f} ± {f['se_diff']:.3f} | {f['z']:+.1f} | "
                         + ("within noise on both" if same else "differs") + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--results", default="results")
    ap.add_argument("--backbones", nargs="+", default=["unet", "dit", "mmdit"])
    ap.add_argument("--settings", nargs="+", default=["first_order:25", "dpmsolver++:10", "unipc:10",
                                                       "first_order:10"],
                    help="solver:steps[:precision]; the first is the reference")
    ap.add_argument("--out", default="sampler_comparison", help="bench/results/OUT.{json,md}")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = yaml.safe_load((ROOT / args.config).read_text())
    res = ROOT / args.results
    evaluator = load_evaluator(res / "models/evaluator")
    ref = load_stats(res / "evaluator/fid_reference_shapes.npz")
    path = (ROOT / "bench/results" / args.out).with_suffix(".json")
    records = json.loads(path.read_text()) if path.is_file() else {}
    commit = git_commit(ROOT)
    for name in args.backbones:
        bb = load_mini_backbone(name, res / "models/base" / name, res / "models/vae", res / "models/text_encoder")
        settings, feats, tables = [], [], []
        for spec in args.settings:
            solver, steps, *precision = spec.split(":")
            precision = precision[0] if precision else "fp32"
            out = res / "bench/sampler_comparison" / name / f"{solver}_{steps}_{precision}"
            rec = measure(bb, evaluator, cfg, res, solver, int(steps), out, precision)
            feats.append(folder_features(evaluator, out / "fid_samples").astype(np.float64))
            tables.append(pd.read_csv(out / "compbench_scores.csv"))
            rec["fid"] = bootstrap_fid(feats[-1], ref["mu"], ref["sigma"])
            if settings:
                rec["vs_reference"] = {"compbench": paired_effect(tables[0], tables[-1]),
                                       "fid": bootstrap_fid(feats[0], ref["mu"], ref["sigma"], paired=feats[-1])}
            settings.append(rec)
            print(f"{name} {spec}: {rec['compbench']['mean']['mean']:.2f} FID {rec['fid']['fid']:.3f} "
                  f"({rec['compbench_sampling_s'] + rec['fid_sampling_s']:.0f} s)", flush=True)
        records[name] = {"commit": commit, "machine": f"{platform.machine()} CPU, no GPU", "threads": args.threads,
                         "config": args.config, "settings": settings}
        write_json(path, records)
        path.with_suffix(".md").write_text(markdown(records))
    print(markdown({b: records[b] for b in args.backbones}))


if __name__ == "__main__":
    main()
