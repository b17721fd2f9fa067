"""Which student learning rate distils at all in the default budget? A pilot for config `distill.train.lr`.

One-step LoRA students of the default config's first LoRA student, one per learning rate, each trained for the
default number of updates, then FID (shapes features) of `--n` renoise samples on the held-out reference captions,
beside the teacher's FID on the same captions and seeds. Only the LoRA student is tried, so the choice cannot favour
one adapter over another. Needs the default run's base unet, VAE, text encoder, evaluator and FID reference:
    snakemake results/models/base/unet results/evaluator/fid_reference_shapes.npz
    cd bench && ../.venv/bin/python distill_lr.py --lr 1e-4 1e-3 [--n 200] [--threads 2]
Writes bench/results/distill_lr.{json,md}.
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

from tsm_speed import ROOT
from tsmflow.data.io import read_labels
from tsmflow.evaluation.evaluator import load_evaluator
from tsmflow.evaluation.run import fid_record
from tsmflow.models.backbone import load_mini_backbone
from tsmflow.reporting.publish import git_commit
from tsmflow.sampling.folders import caption_folder
from tsmflow.students import student_sampling
from tsmflow.training.distill import distill_student, student_config


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lr", type=float, nargs="+", required=True)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    res = ROOT / "results"
    name, student = next((k, v) for k, v in cfg["students"].items() if v["adapter"] == "lora")
    parts = (res / "models/vae", res / "models/text_encoder")
    evaluator = load_evaluator(res / "models/evaluator")
    ref = res / "evaluator/fid_reference_shapes.npz"
    captions = [r["caption"] for r in read_labels(res / "data/reference/labels.jsonl")][: a.n]
    prompts = [r["caption"] for r in read_labels(res / "data/train/labels.jsonl")]
    seed, s = cfg["evaluation"]["seed"], cfg["sampling"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        teacher = load_mini_backbone("unet", res / "models/base/unet", *parts)
        caption_folder(teacher, captions, tmp / "teacher", seed, s["steps"], s["guidance_scale"], solver=s["solver"])
        rows.append({"model": "teacher", **fid_record(evaluator, tmp / "teacher", ref, "shapes", True, seed=seed)})
        for lr in a.lr:
            t0 = time.perf_counter()
            bb = load_mini_backbone("unet", res / "models/base/unet", *parts)
            c = student_config(cfg["distill"], {**student, "train": {"lr": lr}})
            stats = distill_student(bb, c, prompts, tmp / f"student_{lr}")
            sb = load_mini_backbone("unet", tmp / f"student_{lr}", *parts)
            kw = student_sampling(student["timesteps"], bb.num_train_timesteps)
            caption_folder(sb, captions, tmp / f"samples_{lr}", seed, **kw)
            rows.append({"model": f"one-step LoRA r{student['rank']}", "lr": lr, "student_updates": c["steps"],
                         "final_loss_student": stats["final_loss"], "wall_s": time.perf_counter() - t0,
                         **fid_record(evaluator, tmp / f"samples_{lr}", ref, "shapes", True, seed=seed)})
            print(rows[-1], flush=True)
    rec = {"commit": git_commit(ROOT), "machine": f"{platform.machine()} CPU, no GPU", "threads": a.threads,
           "student": name, "distill": cfg["distill"], "rows": rows}
    out = ROOT / "bench/results/distill_lr"
    out.with_suffix(".json").write_text(json.dumps(rec, indent=2, default=str))
    lines = ["# Student learning rate pilot (one-step LoRA)", "",
             f"Made by `bench/distill_lr.py` at {rec['commit']} ({rec['machine']}, {a.threads} threads). FID on "
             f"shapes features of {a.n} samples (held-out reference captions, same seeds), ± bootstrap SE. Other "
             "settings: the default config's `distill` block and its first LoRA student.", "",
             "| model | lr | student updates | FID | precision | recall | wall (s) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r.get('lr', '—')} | {r.get('student_updates', '—')} | {r['fid']:.2f} ± "
                     f"{r['fid_se']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} | {r.get('wall_s', 0):.0f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
