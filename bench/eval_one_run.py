"""Wall time of evaluating one run (sampling + CompBench-mini scoring + FID) on this machine.

Uses the default config's sizes and the models a default run has built:
    .venv/bin/snakemake            # builds results/models/*
    .venv/bin/python bench/eval_one_run.py [--run base_unet] [--threads 2]
Prints a JSON record and writes it to bench/results/eval_one_run.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
import yaml

from tsmflow.data.io import read_labels, write_json
from tsmflow.evaluation.evaluator import load_evaluator
from tsmflow.evaluation.fid import fid_from_stats, folder_stats, load_stats
from tsmflow.evaluation.scoring import score_folder
from tsmflow.models.backbone import load_mini_backbone
from tsmflow.sampling.folders import caption_folder, compbench_folder

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="base_unet")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    res = ROOT / "results"
    spec = cfg["runs"][args.run]
    s, ev = cfg["sampling"], cfg["evaluation"]
    bb = load_mini_backbone(spec["backbone"], res / "models/base" / spec["backbone"], res / "models/vae",
                            res / "models/text_encoder")
    evaluator = load_evaluator(res / "models/evaluator")
    files = {c: res / f"data/compbench/{c}_val.txt" for c in
             ["color", "shape", "texture", "spatial", "non_spatial", "complex"]}
    captions = [r["caption"] for r in read_labels(res / "data/reference/labels.jsonl")][: ev["fid"]["n_samples"]]
    t = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        compbench_folder(bb, files, Path(tmp) / "cb", ev["images_per_prompt"], ev["seed"], s["steps"], s["guidance_scale"])
        t["sample_compbench_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        caption_folder(bb, captions, Path(tmp) / "fid", ev["seed"], s["steps"], s["guidance_scale"])
        t["sample_fid_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        scores = score_folder(evaluator, Path(tmp) / "cb", cfg["resolution"])
        t["score_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        mu, sigma, n = folder_stats(evaluator, Path(tmp) / "fid", feature_space="shapes")
        ref = load_stats(res / "evaluator/fid_reference_shapes.npz")
        fid = fid_from_stats(mu, sigma, ref["mu"], ref["sigma"])
        t["fid_s"] = time.perf_counter() - t0
    rec = {"run": args.run, "threads": args.threads, "machine": platform.processor() or platform.machine(),
           "compbench_images": len(scores), "fid_samples": n, "sampling_steps": s["steps"], "fid": fid,
           **{k: round(v, 2) for k, v in t.items()}, "total_s": round(sum(t.values()), 2),
           "sampling_share": round((t["sample_compbench_s"] + t["sample_fid_s"]) / sum(t.values()), 3)}
    print(json.dumps(rec, indent=2))
    write_json(ROOT / "bench/results/eval_one_run.json", rec)


if __name__ == "__main__":
    main()
