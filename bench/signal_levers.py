"""Levers the signal ladder points at, each measured on rungs 3, 4 and 4b (see signal_ladder.py).

A variant is either a sampler setting on an existing base model, or a denoiser pre-trained with
config overrides from the cached latents of a run (same data, VAE, text encoder and evaluator):
    .venv/bin/python bench/signal_levers.py --name unet_g7.5 --sampling '{"guidance_scale": 7.5}'
    .venv/bin/python bench/signal_levers.py --name unet_lpb2 --train '{"arch": {"layers_per_block": 2},
        "train": {"steps": 1860}}'
With --vae, the variant also gets its own VAE (config overrides of `vae`, trained on the run's training
split and its latents cached once per VAE config, in results/levers/vae_<hash>/), e.g. a 16x16 latent:
    .venv/bin/python bench/signal_levers.py --name unet_latent16 --vae '{"arch": {"channels": [16, 32]}}' \
        --train '{"arch": {"channels": [32, 64, 128], "cross_attention": [false, true, false]}}'
With --init, pre-training continues from a saved denoiser (a new schedule of --train's steps), e.g. 3000 more steps:
    .venv/bin/python bench/signal_levers.py --name unet_6000 --init results/models/base/unet --train '{}'
Records go to bench/results/signal_levers.json (a rerun replaces only its own name); the markdown
beside it is rewritten from all of them. Variant models live in results/levers/<name>/, not in the DAG.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import platform
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import yaml

from signal_ladder import BINDING_CATEGORIES, ROOT, backbone_rungs, fmt
from tsmflow.data import grammar as G
from tsmflow.data.grammar import CATEGORIES
from tsmflow.data.io import read_labels, read_prompts, write_json, write_labels
from tsmflow.data.render import world_settings
from tsmflow.evaluation.evaluator import ATTRS, load_evaluator
from tsmflow.evaluation.signal import BINDING_OUTCOMES
from tsmflow.models.backbone import load_mini_backbone
from tsmflow.training.pretrain import pretrain_denoiser
from tsmflow.training.vae import encode_latents, train_vae
from tsmflow.reporting.publish import git_commit

OUT = ROOT / "bench/results/signal_levers"


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def recaption(labels_path: Path, cfg: dict, mention: dict, out: Path) -> None:
    """The training split's scenes with captions drawn under other `data.mention` settings: render_split's own
    per-image generator, whose last draws are the caption's, so every scene (and latent) stays as it is."""
    d = cfg["data"]
    ws = world_settings({**d, "mention": {**d["mention"], **mention}})
    rows = read_labels(labels_path)
    for i, r in enumerate(rows):
        scene = G.pretrain_scene(np.random.default_rng([d["train"]["seed"], i]), cfg["resolution"], **ws)
        if [asdict(o) for o in scene.objects] != r["objects"]:
            raise ValueError(f"{labels_path}: scene {i} is not the one data.train renders")
        r["caption"] = scene.caption
    out.parent.mkdir(parents=True, exist_ok=True)
    write_labels(out, rows)


def markdown(records: dict) -> str:
    lines = ["# Signal levers", "",
             "Changes the signal ladder points at, each on rungs 3 (single objects), 4 (CompBench-mini, strict "
             "score) and 4b (why two-object prompts fail). Made by `bench/signal_levers.py` (its docstring has "
             "the commands). The baselines are the ladder's own rows (`bench/results/signal_ladder.md`). "
             "± is one prompt-clustered standard error.", "",
             "| variant | backbone | change | pre-training wall s | sampling wall s | "
             + " | ".join(f"3: {a}" for a in ATTRS) + " | " + " | ".join(f"4: {c}" for c in CATEGORIES)
             + " | 4: mean | images |", "|" + "---|" * (7 + len(ATTRS) + len(CATEGORIES))]
    for name, r in records.items():
        cb = r["rungs"]["compbench"]["product"]
        so = r["rungs"]["single_object"]
        lines.append(f"| {name} | {r['backbone']} | `{json.dumps(r['change'])}` | "
                     + (f"{r['pretrain_wall_s']:.0f}" if "train" in r["change"] else "-")
                     + (f" (+{r['vae_wall_s']:.0f} VAE)" if "vae" in r["change"] else "")
                     + f" | {r['rungs']['wall_s']:.0f} | "
                     + " | ".join(fmt(so[a], True) for a in ATTRS) + " | "
                     + " | ".join(fmt(cb[c]) for c in CATEGORIES) + f" | {fmt(cb['mean'])} | {cb['mean']['n_images']} |")
    lines += ["", "Rung 4b (% of contested phrase attributes; see the ladder for the definitions):", "",
              "| variant | category | " + " | ".join(BINDING_OUTCOMES) + " | all nouns found |", "|" + "---|" * 7]
    for name, r in records.items():
        for cat in BINDING_CATEGORIES:
            w = r["rungs"]["binding"][cat]
            lines.append(f"| {name} | {cat} | " + " | ".join(f"{100 * w[o]:.1f}" for o in BINDING_OUTCOMES)
                         + f" | {100 * w['all_nouns_found']:.0f} |")
    lines += ["", "Runs: " + "; ".join(f"{n} at {r['commit']} ({r['machine']}, {r['threads']} threads)"
                                       for n, r in records.items()) + ".", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", help="the variant's record name (required unless --markdown-only)")
    ap.add_argument("--markdown-only", action="store_true", help="rewrite the markdown from the stored records")
    ap.add_argument("--backbone", default="unet")
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--results", default="results")
    ap.add_argument("--train", default=None, help="JSON overrides of backbones.<backbone>: pre-train a variant")
    ap.add_argument("--sampling", default="{}", help="JSON overrides of the sampling block")
    ap.add_argument("--vae", default=None, help="JSON overrides of the vae block: a variant VAE (needs --train)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--init", default=None, help="continue pre-training from this saved denoiser (with --train)")
    ap.add_argument("--captions", default=None,
                    help="JSON overrides of data.mention: the same scenes re-captioned (needs --train)")
    args = ap.parse_args()
    path = OUT.with_suffix(".json")
    if args.markdown_only:
        OUT.with_suffix(".md").write_text(markdown(json.loads(path.read_text())))
        return
    if not args.name:
        ap.error("--name is required")
    torch.set_num_threads(args.threads)
    commit = git_commit(ROOT)  # at launch: the code that trains and samples
    cfg = yaml.safe_load((ROOT / args.config).read_text())
    res = ROOT / args.results
    sampling = json.loads(args.sampling)
    cfg["sampling"] = merge(cfg["sampling"], sampling)
    model, t_pre, t_vae = res / "models/base" / args.backbone, 0.0, 0.0
    vae, latents = res / "models/vae", res / "data/train_latents.safetensors"
    change = {"sampling": sampling} if sampling else {}
    if args.vae:
        if not args.train:
            ap.error("--vae needs --train: a new latent space needs its own denoiser")
        vcfg = merge(cfg["vae"], json.loads(args.vae))
        change["vae"] = json.loads(args.vae)
        vdir = res / "levers" / f"vae_{hashlib.sha256(json.dumps(vcfg, sort_keys=True).encode()).hexdigest()[:8]}"
        vae, latents = vdir / "model", vdir / "train_latents.safetensors"
        t0 = time.perf_counter()
        if not (vae / "config.json").is_file():
            train_vae(res / "data/train", vcfg, vae)
        if not latents.is_file():
            encode_latents(res / "data/train", vae, latents)
        t_vae = time.perf_counter() - t0
    labels = res / "data/train/labels.jsonl"
    if args.captions:
        if not args.train:
            ap.error("--captions needs --train: new captions need their own denoiser")
        change["captions"] = json.loads(args.captions)
        labels = res / "levers" / args.name / "labels.jsonl"
        if not labels.is_file():
            recaption(res / "data/train/labels.jsonl", cfg, change["captions"], labels)
    if args.train:
        over = json.loads(args.train)
        change["train"] = over
        if args.init:
            change["init"] = args.init
        model = res / "levers" / args.name / "model" if args.captions else res / "levers" / args.name
        if not (model / "config.json").is_file():
            t0 = time.perf_counter()
            pretrain_denoiser(args.backbone, merge(cfg["backbones"][args.backbone], over),
                              latents, labels, vae, res / "models/text_encoder", model,
                              init_dir=ROOT / args.init if args.init else None)
            t_pre = time.perf_counter() - t0
    evaluator = load_evaluator(res / "models/evaluator")
    prompts = {c: read_prompts(res / f"data/compbench/{c}_val.txt") for c in CATEGORIES}
    bb = load_mini_backbone(args.backbone, model, vae, res / "models/text_encoder")
    rungs = backbone_rungs(bb, evaluator, cfg, prompts, 8, cfg["evaluation"]["images_per_prompt"])
    records = json.loads(path.read_text()) if path.is_file() else {}
    records[args.name] = {
        "commit": commit,
        "machine": f"{platform.machine()} CPU, no GPU", "threads": args.threads, "backbone": args.backbone,
        "change": change, "pretrain_wall_s": t_pre, "vae_wall_s": t_vae, "rungs": rungs}
    write_json(path, records)
    OUT.with_suffix(".md").write_text(markdown(records))
    print(markdown({args.name: records[args.name]}))


if __name__ == "__main__":
    main()
