"""Does GORS fine-tuning raise the evaluator's score where it trained? A check of the GORS stage (signal issue).

For the base unet and LoRA runs trained on its GORS data, CompBench-mini images of the *training* prompts (the
prompts whose kept images the LoRA saw) and of the held-out *validation* prompts are sampled with the same seeds
and scored with the strict score; each run is compared with the base on the same prompts and seeds (prompt-level
paired differences). Needs the runs' expert sets (e.g. `snakemake results/runs/lora_unet/metrics.json`):
    .venv/bin/python bench/gors_fit.py --experts unet-gors-n1-r32-s100 unet-gors-n1-r32-s800 --per-prompt 2
Writes bench/results/gors_fit.{json,md}; a rerun replaces the records of the expert sets it names.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
import types
from pathlib import Path

import pandas as pd
import torch
import yaml

from signal_ladder import ROOT
from tsmflow.data.grammar import CATEGORIES, parse
from tsmflow.data.io import read_json, read_prompts, write_json
from tsmflow.evaluation.compbench import score_spec
from tsmflow.evaluation.evaluator import detect, load_evaluator
from tsmflow.evaluation.signal import paired_effect
from tsmflow.expert_sets import ExpertSet
from tsmflow.reporting.publish import git_commit
from tsmflow.runs import load_run_backbone
from tsmflow.sampling.sample import generate

OUT = ROOT / "bench/results/gors_fit"


def scores(bb, evaluator, res: Path, split: str, per_prompt: int, seed: int, sampling: dict) -> pd.DataFrame:
    rows = []
    for cat in CATEGORIES:
        jobs = [(p, i) for p in read_prompts(res / f"data/compbench/{cat}_{split}.txt") for i in range(per_prompt)]
        x = generate(bb, [p for p, _ in jobs], [seed + i for _, i in jobs], sampling["steps"],
                     sampling["guidance_scale"], solver=sampling["solver"], progress=False)
        rows += [{"category": cat, "prompt": p, "idx": i, "score": 100 * score_spec(parse(p), d, cat, "product")}
                 for (p, i), d in zip(jobs, detect(evaluator, x))]
    return pd.DataFrame(rows)


def markdown(records: dict) -> str:
    lines = ["# Does GORS fine-tuning raise the score where it trained?", "",
             "Made by `bench/gors_fit.py` (its docstring has the command). CompBench-mini strict score (%), tuned "
             "minus base on the same prompts and seeds, ± the SE of the prompt-level paired difference; z = "
             "difference / SE. `train`: the CompBench-mini training prompts, whose GORS images (those the evaluator "
             "kept) the LoRA trained on; `val`: the held-out prompts every table reports.", "",
             "| expert set | GORS images | steps | final loss | split | base | tuned | difference | z | prompts | "
             "images per prompt |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in records.items():
        for split, e in r["effects"].items():
            m = e["mean"]
            lines.append(f"| {name} | {r['train_samples']} | {r['steps']} | {r['final_loss']:.4f} | {split} | "
                         f"{m['base']:.2f} | {m['tuned']:.2f} | {m['diff']:+.2f} ± {m['se']:.2f} | {m['z']:+.1f} | "
                         f"{m['n_prompts']} | {r['per_prompt']} |")
    lines += ["", "Per category (difference ± SE):", "",
              "| expert set | split | " + " | ".join(CATEGORIES) + " |", "|" + "---|" * (2 + len(CATEGORIES))]
    for name, r in records.items():
        for split, e in r["effects"].items():
            lines.append(f"| {name} | {split} | " + " | ".join(f"{e[c]['diff']:+.1f} ± {e[c]['se']:.1f}"
                                                              for c in CATEGORIES) + " |")
    lines += ["", "Runs: " + "; ".join(f"{n} at {r['commit']} ({r['machine']}, {r['threads']} threads, "
                                       f"{r['wall_s']:.0f} s)" for n, r in records.items()) + ".", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--experts", nargs="+", required=True, help="LoRA expert sets (n=1) trained on GORS data")
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--results", default="results")
    ap.add_argument("--per-prompt", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    commit, t0 = git_commit(ROOT), time.perf_counter()
    cfg = yaml.safe_load((ROOT / args.config).read_text())
    res = ROOT / args.results
    evaluator = load_evaluator(res / "models/evaluator")
    sets = [ExpertSet.parse(e) for e in args.experts]
    backbone = sets[0].backbone
    if any(s.backbone != backbone or s.n != 1 or s.task != "gors" for s in sets):
        raise ValueError("expert sets must be n=1 GORS sets of one backbone")
    inp = types.SimpleNamespace(model=res / "models/base" / backbone, vae=res / "models/vae",
                                text_encoder=res / "models/text_encoder")
    seed, sampling = cfg["evaluation"]["seed"], cfg["sampling"]
    base = load_run_backbone({"method": "base", "backbone": backbone}, inp)
    base_scores = {s: scores(base, evaluator, res, s, args.per_prompt, seed, sampling) for s in ("train", "val")}
    path = OUT.with_suffix(".json")
    records = json.loads(path.read_text()) if path.is_file() else {}
    for es in sets:
        expert = res / "experts" / es.name / "expert0"
        stats = read_json(expert / "stats.json")
        bb = load_run_backbone({"method": "lora", "backbone": backbone, "experts": es.name},
                               types.SimpleNamespace(**vars(inp), experts=[expert]))
        effects = {s: paired_effect(base_scores[s], scores(bb, evaluator, res, s, args.per_prompt, seed, sampling))
                   for s in ("train", "val")}
        records[es.name] = {"commit": commit, "machine": f"{platform.machine()} CPU, no GPU", "threads": args.threads,
                            "per_prompt": args.per_prompt, "steps": stats["steps"],
                            "train_samples": stats["train_samples"], "final_loss": stats["final_loss"],
                            "effects": effects, "wall_s": time.perf_counter() - t0}
        print(es.name, {s: round(e["mean"]["diff"], 2) for s, e in effects.items()}, flush=True)
    write_json(path, records)
    OUT.with_suffix(".md").write_text(markdown(records))
    print(markdown(records))


if __name__ == "__main__":
    main()
