"""How much GORS data, and which filter, does vanilla LoRA need to raise CompBench-mini? (signal issue, rung 5)

The GORS stage must raise the score it filters on: a LoRA trained on the images the evaluator scored highest has to
score higher on the held-out prompts. This bench varies what the stage feeds the LoRA, one setting at a time:
- a pool: for the base model, `--pool-prompts` CompBench-mini training prompts per category (the config's split;
  its validation prompts are drawn first, so they are the default's, and its training prompts are a prefix of
  these) x `--pool-images` images each (seeds gors.seed + idx), scored with the strict score, VAE-encoded once;
- each setting `P:I:T:S[:lr]` takes the first P prompts of each category and the first I images of each prompt,
  keeps those scoring at least T (%), weights them by the score as GORS does, and trains a vanilla LoRA (rank
  `--rank`, S steps, the config's `lora` block, lr overridden if given) with the workflow's own `train_expert`;
- the LoRA and the base sample the validation prompts with the same seeds (`--per-prompt` images each, seeds
  evaluation.seed + idx); the effect is the prompt-level paired difference, strict and graded (`mean`) scores.

Needs the foundation and the base model (`snakemake --cores 2 results/evaluator/validation.json
results/models/base/unet`). Today's default is 40:12:5:100.
    .venv/bin/python bench/gors_scaling.py --backbone unet --pool-prompts 80 --pool-images 48 \
        --settings 40:12:5:100 80:48:5:100 80:48:5:400 80:48:50:400
Writes bench/results/gors_scaling.{json,md}; a rerun replaces the records of the settings it names.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
import types
from pathlib import Path

import pandas as pd
import torch
import yaml
from safetensors.torch import load_file, save_file

from signal_ladder import ROOT
from tsmflow.data.grammar import CATEGORIES, compbench_split, parse, parse_rare_pairs
from tsmflow.data.io import read_json, read_labels, read_prompts, write_json, write_labels
from tsmflow.data.prompt_images import generate_prompt_images, select
from tsmflow.evaluation.compbench import score_spec
from tsmflow.evaluation.evaluator import detect, load_evaluator
from tsmflow.evaluation.signal import paired_effect
from tsmflow.expert_sets import ExpertSet
from tsmflow.models.backbone import load_mini_backbone
from tsmflow.reporting.publish import git_commit
from tsmflow.runs import load_run_backbone
from tsmflow.sampling.sample import generate
from tsmflow.training.experts import train_expert
from tsmflow.training.vae import encode_latents

OUT = ROOT / "bench/results/gors_scaling"
BINDINGS = ("product", "mean")


def val_scores(bb, evaluator, prompts: dict, per_prompt: int, seed: int, sampling: dict) -> dict:
    """Per binding, one row per (category, prompt, idx) of the validation prompts."""
    rows = {b: [] for b in BINDINGS}
    for cat in CATEGORIES:
        jobs = [(p, i) for p in prompts[cat] for i in range(per_prompt)]
        x = generate(bb, [p for p, _ in jobs], [seed + i for _, i in jobs], sampling["steps"],
                     sampling["guidance_scale"], solver=sampling["solver"], progress=False,
                     precision=sampling.get("precision", "fp32"))
        for (p, i), d in zip(jobs, detect(evaluator, x)):
            for b in BINDINGS:
                rows[b].append({"category": cat, "prompt": p, "idx": i,
                                "score": 100 * score_spec(parse(p), d, cat, b)})
    return {b: pd.DataFrame(r) for b, r in rows.items()}


def build_pool(bb_inputs, evaluator, cfg: dict, res: Path, pool: Path, n_prompts: int, n_images: int) -> None:
    """All GORS candidates of the pool, scored (threshold 0: every image is kept, the settings filter later)."""
    if (pool / "latents.safetensors").is_file():
        return
    cb, data = cfg["compbench"], cfg["data"]
    rare = parse_rare_pairs(data["rare_pairs"])
    files = {}
    for cat in CATEGORIES:
        train, val = compbench_split(cat, n_prompts, cb["n_val"], cb["seed"], rare, cb["p_rare"])
        if val != read_prompts(res / f"data/compbench/{cat}_val.txt"):
            raise ValueError(f"{cat}: the pool's validation prompts differ from {res}/data/compbench")
        (pool / "prompts").mkdir(parents=True, exist_ok=True)
        files[cat] = pool / "prompts" / f"{cat}_train.txt"
        files[cat].write_text("\n".join(train) + "\n")
    bb = load_mini_backbone(*bb_inputs)
    gors = {**cfg["gors"], "images_per_prompt": n_images, "threshold": {c: 0 for c in CATEGORIES}}
    generate_prompt_images(bb, evaluator, {c: str(f) for c, f in files.items()}, gors, cfg["sampling"],
                           cfg["resolution"], pool / "data")
    encode_latents(pool / "data", res / "models/vae", pool / "latents.safetensors")


def subset(pool: Path, res: Path, n_prompts: int, n_images: int, threshold: float, out: Path) -> dict:
    """The setting's GORS data: latents and labels of the kept images, as the workflow writes them."""
    labels = read_labels(pool / "data/labels.jsonl")
    scores = pd.read_csv(pool / "data/scores.csv")
    default_train = {c: read_prompts(res / f"data/compbench/{c}_train.txt") for c in CATEGORIES}
    first = {c: read_prompts(pool / "prompts" / f"{c}_train.txt")[:n_prompts] for c in CATEGORIES}
    for c in CATEGORIES:  # the default's training prompts are a prefix of the pool's
        k = min(n_prompts, len(default_train[c]))
        if first[c][:k] != default_train[c][:k]:
            raise ValueError(f"{c}: the pool's training prompts do not start with the default's")
    chosen = {(c, p) for c, ps in first.items() for p in ps}
    scores["in"] = [(c, p) in chosen and i < n_images for c, p, i in
                    zip(scores["category"], scores["prompt"], scores["idx"])]
    keep = select(scores[scores["in"]], {c: threshold for c in CATEGORIES})
    by_file = {f"images/{f}": r for f, r in zip(keep["file"], keep["reward"])}
    rows = [k for k, r in enumerate(labels) if r["file"] in by_file]
    lat = load_file(str(pool / "latents.safetensors"))
    out.mkdir(parents=True, exist_ok=True)
    idx = torch.tensor(rows, dtype=torch.long)
    save_file({k: lat[k][idx].contiguous() for k in ("mean", "std")}, str(out / "latents.safetensors"))
    write_labels(out / "labels.jsonl", [{**labels[k], "reward": by_file[labels[k]["file"]]} for k in rows])
    return {"candidates": int(scores["in"].sum()), "kept": len(rows),
            "kept_per_category": {c: int((keep["category"] == c).sum()) for c in CATEGORIES},
            "mean_reward": float(keep["reward"].mean()) if len(keep) else 0.0}


def markdown(records: dict) -> str:
    lines = ["# How much GORS data does vanilla LoRA need?", "",
             "Made by `bench/gors_scaling.py` (its docstring has the command). A setting `P:I:T:S[:lr]`: the first P "
             "CompBench-mini training prompts per category, I base-model images each, kept at a strict score of at "
             "least T %, weighted by it, a rank-r LoRA trained S steps. Effect: LoRA minus base on the held-out "
             "prompts with the same seeds, mean over the six categories, ± the SE of the prompt-level paired "
             "difference; z = difference / SE. `strict`: the product score every table reports; `graded`: the mean "
             "binding.", "",
             "| setting | backbone | rank | lr | text-encoder LoRA | candidates | kept | mean reward | final loss | strict: base → LoRA "
             "| strict: difference | z | graded: base → LoRA | graded: difference | z | images | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in records.items():
        s, g = r["effect"]["product"]["mean"], r["effect"]["mean"]["mean"]
        lines.append(f"| {r['setting']} | {r['backbone']} | {r['rank']} | {r['lr']:g} | {'yes' if r.get('text_encoder_lora', True) else 'no'} | {r['data']['candidates']} | "
                     f"{r['data']['kept']} | {r['data']['mean_reward']:.2f} | {r['final_loss']:.4f} | "
                     f"{s['base']:.2f} → {s['tuned']:.2f} | {s['diff']:+.2f} ± {s['se']:.2f} | {s['z']:+.1f} | "
                     f"{g['base']:.2f} → {g['tuned']:.2f} | {g['diff']:+.2f} ± {g['se']:.2f} | {g['z']:+.1f} | "
                     f"{r['n_images']} | {r['train_s']:.0f} |")
    lines += ["", "Strict score per category (difference ± SE), and the kept images per category:", "",
              "| setting | backbone | text-encoder LoRA | " + " | ".join(CATEGORIES) + " | kept ("
              + ", ".join(CATEGORIES) + ") |",
              "|" + "---|" * (4 + len(CATEGORIES))]
    for r in records.values():
        e = r["effect"]["product"]
        lines.append(f"| {r['setting']} | {r['backbone']} | {'yes' if r.get('text_encoder_lora', True) else 'no'} | "
                     + " | ".join(f"{e[c]['diff']:+.1f} ± {e[c]['se']:.1f}" for c in CATEGORIES)
                     + " | " + ", ".join(str(r["data"]["kept_per_category"][c]) for c in CATEGORIES) + " |")
    runs = [f"{r['setting']} ({r['backbone']}) at {r['commit']} ({r['machine']}, {r['threads']} threads)"
            for r in records.values()]
    lines += ["", "Runs: " + "; ".join(runs) + ".", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="unet")
    ap.add_argument("--settings", nargs="+", required=True, help="P:I:T:S[:lr] (see the docstring)")
    ap.add_argument("--pool-prompts", type=int, default=80)
    ap.add_argument("--pool-images", type=int, default=48)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--per-prompt", type=int, default=10)
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--results", default="results")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default=None,
                    help="a variant base denoiser (e.g. results/levers/<name>/model) in place of the workflow's")
    ap.add_argument("--variant", default="", help="the variant's name in the records (with --model)")
    ap.add_argument("--denoiser-only", action="store_true", help="no LoRA on the text encoder")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    commit = git_commit(ROOT)
    cfg = yaml.safe_load((ROOT / args.config).read_text())
    res = ROOT / args.results
    evaluator = load_evaluator(res / "models/evaluator")
    if bool(args.model) != bool(args.variant):
        ap.error("--model and --variant go together")
    model = ROOT / args.model if args.model else res / "models/base" / args.backbone
    bb_inputs = (args.backbone, model, res / "models/vae", res / "models/text_encoder")
    tag = args.backbone + (f"-{args.variant}" if args.variant else "")
    pool = res / "bench/gors_pool" / f"{tag}_{args.pool_prompts}x{args.pool_images}"
    t0 = time.perf_counter()
    build_pool(bb_inputs, evaluator, cfg, res, pool, args.pool_prompts, args.pool_images)
    print(f"pool: {time.perf_counter() - t0:.0f} s", flush=True)
    val = {c: read_prompts(res / f"data/compbench/{c}_val.txt") for c in CATEGORIES}
    seed, sampling = cfg["evaluation"]["seed"], cfg["sampling"]
    base = val_scores(load_mini_backbone(*bb_inputs), evaluator, val, args.per_prompt, seed, sampling)
    path = OUT.with_suffix(".json")
    records = json.loads(path.read_text()) if path.is_file() else {}
    for setting in args.settings:
        p, i, thr, steps, *lr = setting.split(":")
        p, i, thr, steps = int(p), int(i), float(thr), int(steps)
        if p > args.pool_prompts or i > args.pool_images:
            raise ValueError(f"setting {setting} asks for more than the pool ({args.pool_prompts}x{args.pool_images})")
        lora = json.loads(json.dumps(cfg["lora"]))
        if lr:
            lora["train"]["lr"] = float(lr[0])
        if args.denoiser_only:
            lora["text_encoder_targets"] = []
        work = res / "bench/gors_scaling" / (f"{tag}_{setting.replace(':', '_')}_r{args.rank}"
                                             + ("_denoiser-only" if args.denoiser_only else ""))
        shutil.rmtree(work, ignore_errors=True)
        data = subset(pool, res, p, i, thr, work / "data")
        es = ExpertSet.parse(f"{args.backbone}-gors-n1-r{args.rank}-s{steps}")
        t1 = time.perf_counter()
        stats = train_expert(load_mini_backbone(*bb_inputs), es, 0, lora, work / "data/latents.safetensors",
                             work / "data/labels.jsonl", work / "expert0")
        train_s = time.perf_counter() - t1
        inp = types.SimpleNamespace(model=bb_inputs[1], vae=bb_inputs[2], text_encoder=bb_inputs[3],
                                    experts=[work / "expert0"])
        bb = load_run_backbone({"method": "lora", "backbone": args.backbone, "experts": es.name}, inp)
        tuned = val_scores(bb, evaluator, val, args.per_prompt, seed, sampling)
        effect = {b: paired_effect(base[b], tuned[b]) for b in BINDINGS}
        key = f"{tag}:{setting}:r{args.rank}" + (":denoiser-only" if args.denoiser_only else "")
        records[key] = {"setting": setting, "backbone": tag, "rank": args.rank,
                        "text_encoder_lora": bool(lora["text_encoder_targets"]),
                        "lr": lora["train"]["lr"], "data": data, "steps": steps,
                        "final_loss": stats["final_loss"], "train_s": train_s, "effect": effect,
                        "n_images": len(tuned["product"]), "per_prompt": args.per_prompt,
                        "pool": f"{args.pool_prompts}x{args.pool_images}", "commit": commit,
                        "machine": f"{platform.machine()} CPU, no GPU", "threads": args.threads}
        print(key, data["kept"], {b: round(e["mean"]["diff"], 2) for b, e in effect.items()},
              {b: round(e["mean"]["z"], 1) for b, e in effect.items()}, flush=True)
        write_json(path, records)
        OUT.with_suffix(".md").write_text(markdown(records))
    print(markdown(records))


if __name__ == "__main__":
    main()
