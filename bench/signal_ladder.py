"""The signal ladder (see tsmflow.evaluation.signal): four rungs from renders to CompBench-mini scores.

Needs the foundation of a run (render, VAE, text encoder, evaluator, base models):
    .venv/bin/snakemake --cores 2 results/evaluator/validation.json results/models/base/{unet,dit,mmdit}
    .venv/bin/python bench/signal_ladder.py --label after [--config config/config.yaml] [--backbones unet dit mmdit]
Rung 5b on an existing label (sampling BASE and TUNED runs the workflow trained on the training prompts):
    .venv/bin/python bench/signal_ladder.py --label LABEL --keep --train-effect base_unet:lora_unet
Each label's record is kept in bench/results/signal_ladder.json (a rerun replaces only its own label),
and bench/results/signal_ladder.md is rewritten from all of them.
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

from tsmflow.data.classes import CLASS_ARCHS
from tsmflow.data.grammar import CATEGORIES, parse, parse_rare_pairs
from tsmflow.data.io import read_labels, read_prompts, write_json
from tsmflow.evaluation.compbench import score_spec
from tsmflow.evaluation.evaluator import ATTRS, DEFAULT_N_OBJECTS_P, detect, load_evaluator, render_scenes
from tsmflow.evaluation.fid import bootstrap_fid, folder_features, load_stats
from tsmflow.evaluation.signal import (BINDING_OUTCOMES, COUNT_OUTCOMES, binding_summary, category_summary,
                                       count_summary, image_statistics, paired_effect, rare_split,
                                       single_object_prompts, single_object_summary, single_object_table,
                                       text_binding_probe)
from tsmflow.evaluation.validation import DEFAULT_VALIDATION, control_report, detection_report, junk_report
from tsmflow.models.backbone import load_mini_backbone
from tsmflow.runs import load_run
from tsmflow.sampling.sample import generate
from tsmflow.training.vae import load_vae, reconstruct
from tsmflow.reporting.publish import git_commit

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench/results/signal_ladder"
BINDING_CATEGORIES = ("color", "shape", "texture", "complex")  # those that state two values of one attribute


def text_encoder(path: Path):
    from transformers import CLIPTextModelWithProjection, PreTrainedTokenizerFast
    return PreTrainedTokenizerFast.from_pretrained(path), CLIPTextModelWithProjection.from_pretrained(path).eval()


def evaluator_rungs(evaluator, vae, cfg, prompts, res) -> dict:
    ev = cfg["evaluator"]
    v = {**DEFAULT_VALIDATION, **ev.get("validation", {})}
    images, scenes = render_scenes(v["n"], v["seed"], res, ev.get("data", {}).get("n_objects_p", DEFAULT_N_OBJECTS_P))
    recon = reconstruct(vae, images)
    out = {}
    for name, seen, tf in (("renders", images, None), ("reconstructions", recon, lambda x: reconstruct(vae, x))):
        rep = detection_report(evaluator, seen, scenes, v["position_tol"] * res)
        ctrl = control_report(evaluator, prompts, res, v["seed"], v["per_prompt"], tf)
        out[name] = {"n_scenes": len(scenes), "accuracy": rep["accuracy"], "by_size": rep["by_size"],
                     "ece": rep["ece"], "recall": rep["detection"]["recall"],
                     "control": {c: {k: x[k] for k in ("correct_mean", "correct_p05", "negative_mean", "n_images")
                                     } for c, x in ctrl.items()},
                     "junk": junk_report(evaluator, prompts, res, v["seed"], v.get("n_junk", 200), tf),
                     "image_stats": image_statistics(seen)}
    out["temperature"] = {a: float(evaluator.temperature[k]) for k, a in enumerate(ATTRS)}
    return out


def compbench_rows(bb, evaluator, cfg, prompts: dict, n_per_prompt: int, bindings=("product", "mean")):
    """CompBench-mini scores of `bb` on `prompts` (category -> prompts): a score row per image and binding, and the
    images' detections, prompts and categories (read once by every diagnosis)."""
    s, ev = cfg["sampling"], cfg["evaluation"]
    rows, all_dets, all_prompts, all_cats = [], [], [], []
    for cat in CATEGORIES:
        jobs = [(p, i) for p in prompts[cat] for i in range(n_per_prompt)]
        x = generate(bb, [p for p, _ in jobs], [ev["seed"] + i for _, i in jobs], s["steps"], s["guidance_scale"],
                     solver=s.get("solver", "first_order"), progress=False)
        dets = detect(evaluator, x)
        for binding in bindings:
            rows += [{"category": cat, "prompt": p, "binding": binding,
                      "score": 100 * score_spec(parse(p), d, cat, binding)} for (p, _), d in zip(jobs, dets)]
        all_dets += dets
        all_prompts += [p for p, _ in jobs]
        all_cats += [cat] * len(jobs)
    return pd.DataFrame(rows), all_dets, all_prompts, all_cats


def backbone_rungs(bb, evaluator, cfg, prompts, n_single: int, n_per_prompt: int) -> dict:
    s, ev = cfg["sampling"], cfg["evaluation"]
    t0 = time.perf_counter()
    items = [it for it in single_object_prompts() for _ in range(n_single)]
    seeds = [ev["seed"] + k % n_single for k in range(len(items))]
    imgs = generate(bb, [p for p, _, _ in items], seeds, s["steps"], s["guidance_scale"], progress=False,
                    solver=s.get("solver", "first_order"))
    single = single_object_summary(single_object_table(evaluator, imgs, items))
    stats = image_statistics(imgs)
    df, all_dets, all_prompts, all_cats = compbench_rows(bb, evaluator, cfg, prompts, n_per_prompt)
    cats = {b: category_summary(df[df["binding"] == b]) for b in ("product", "mean")}
    bind = [k for k, c in enumerate(all_cats) if c in BINDING_CATEGORIES]
    why = binding_summary(*([x[k] for k in bind] for x in (all_dets, all_prompts, all_cats)))
    counts = count_summary(all_dets, all_prompts, all_cats)
    rare = rare_split(df[df["binding"] == "product"], parse_rare_pairs(cfg["data"]["rare_pairs"]))
    return {"single_object": single, "sample_image_stats": stats, "compbench": cats, "binding": why,
            "counts": counts, "rare_split": rare,
            "n_single_per_prompt": n_single, "images_per_prompt": n_per_prompt, "wall_s": time.perf_counter() - t0}


def train_prompt_rungs(evaluator, cfg, config_path: Path, res: Path, pairs: list[str], n_per_prompt: int) -> dict:
    """Rung 5b: does fine-tuning learn the prompts of its own data? BASE:TUNED runs, both sampled on the training
    prompts GORS drew its images from, strict score; the paired effect over all of them and over those with at
    least one kept GORS image (what the tuned model saw a correct-enough example of) and those without."""
    t0, scored, out = time.perf_counter(), {}, {}
    train = {c: read_prompts(res / f"data/compbench/{c}_train.txt") for c in CATEGORIES}
    for pair in pairs:
        for run in pair.split(":"):
            if run not in scored:
                bb = load_run(config_path, run, res.parent)
                scored[run] = compbench_rows(bb, evaluator, cfg, train, n_per_prompt, ("product",))[0]
        base, tuned = (scored[r] for r in pair.split(":"))
        backbone = cfg["runs"][pair.split(":")[1]]["backbone"]
        seen = {r["caption"] for r in read_labels(res / f"gors/{backbone}/labels.jsonl")}
        split = {"all": paired_effect(base, tuned)}
        for name, keep in (("seen", True), ("unseen", False)):
            b, t = (d[d["prompt"].isin(seen) == keep] for d in (base, tuned))
            split[name] = paired_effect(b, t)
        out[pair] = split
    return {"pairs": out, "images_per_prompt": n_per_prompt, "commit": git_commit(ROOT),
            "wall_s": time.perf_counter() - t0}


def effect_rungs(evaluator, res: Path, effects: list[str], fid_effects: list[str]) -> dict:
    """Rung 5: what fine-tuning changes, from runs the workflow scored (BASE:TUNED run names)."""
    out = {"compbench": {}, "fid": {}}
    for pair in effects:
        base, tuned = pair.split(":")
        out["compbench"][pair] = paired_effect(*(pd.read_csv(res / "runs" / r / "compbench_scores.csv")
                                                 for r in (base, tuned)))
    ref = load_stats(res / "evaluator/fid_reference_shapes.npz") if fid_effects else None
    for pair in fid_effects:
        base, tuned = pair.split(":")
        fb, ft = (folder_features(evaluator, res / "runs" / r / "fid_samples").astype(np.float64)
                  for r in (base, tuned))
        out["fid"][pair] = bootstrap_fid(fb, ref["mu"], ref["sigma"], paired=ft)
    return out


def fmt(m: dict, pct: bool = False) -> str:
    k = 100 if pct else 1
    return f"{k * m['mean']:.1f} ± {k * m['se']:.1f}"


def section(title: str, prose: str, columns: list[str]) -> list[str]:
    """A markdown section's heading, prose and table head."""
    return ["", f"### {title}", "", prose, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def markdown(records: dict) -> str:
    lines = ["# Signal ladder", "",
             "Where composition is lost between the renderer and a CompBench-mini score. Made by "
             "`bench/signal_ladder.py` (its docstring has the commands); each section is one labelled run. "
             "± is one standard error; CompBench-mini SEs treat prompts as the sampling unit.", ""]
    for label, r in records.items():
        e = r["evaluator"]
        lines += [f"## {label}", "", f"Commit {r['commit']}, config `{r['config']}`, {r['machine']}, "
                  f"{r['threads']} threads, {r['wall_s']:.0f} s. {r.get('note', '')}", "",
                  "### Rungs 1-2: the evaluator on held-out renders and on their VAE reconstructions", ""]
        lines += ["| view | scenes | " + " | ".join(f"{a} acc" for a in ATTRS) + " | position | count | small: shape | "
                  "small: texture | recall |", "|" + "---|" * 12]
        for view in ("renders", "reconstructions"):
            v = e[view]
            a, z = v["accuracy"], v["by_size"]["small"]
            lines.append(f"| {view} | {v['n_scenes']} | " + " | ".join(f"{100 * a[k]:.1f}" for k in ATTRS)
                         + f" | {100 * a['position']:.1f} | {100 * a['count']:.1f} | {100 * z['shape']:.1f} | "
                         f"{100 * z['texture']:.1f} | {100 * v['recall']:.1f} |")
        lines += ["", "Correct scenes per category (mean score, %), object-free images (mean / max score, %, "
                  "and detections per image), calibration (ECE of the attribute probabilities):", "",
                  "| view | " + " | ".join(CATEGORIES) + " | object-free mean | object-free max | dets/junk image | "
                  "ECE (shape, colour, texture, size) |", "|" + "---|" * (len(CATEGORIES) + 5)]
        for view in ("renders", "reconstructions"):
            v = e[view]
            j = v["junk"]
            lines.append(f"| {view} | " + " | ".join(f"{100 * v['control'][c]['correct_mean']:.1f}" for c in CATEGORIES
                                                     if c in v["control"])
                         + f" | {100 * j['mean']:.2f} | {100 * j['max']:.1f} | {j['mean_detections']:.2f} | "
                         + ", ".join(f"{v['ece'][a]:.3f}" for a in ATTRS) + " |")
        lines += ["", "Temperatures: " + ", ".join(f"{a} {t:.3f}" for a, t in e["temperature"].items()) + ".", ""]
        lines += ["### Rung 3: base models on single-object prompts", "",
                  "Share of images whose most confident detection carries the stated value (%), with the share "
                  "that found exactly one object.", "",
                  "| backbone | " + " | ".join(ATTRS) + " | one object | images |", "|" + "---|" * 7]
        for name, b in r["backbones"].items():
            so = b["single_object"]
            lines.append(f"| {name} | " + " | ".join(fmt(so[a], True) for a in ATTRS)
                         + f" | {100 * np.mean([so[a]['one_object'] for a in ATTRS]):.0f} | "
                         f"{sum(so[a]['n_images'] for a in ATTRS)} |")
        lines += ["", "### Rung 4: base models on CompBench-mini (%)", "",
                  "`product`: the strict score (a phrase's attribute probabilities multiplied); `mean`: graded "
                  "credit (their mean).", "",
                  "| backbone | binding | " + " | ".join(CATEGORIES) + " | mean | images |", "|" + "---|" * 10]
        for name, b in r["backbones"].items():
            for binding, cats in b["compbench"].items():
                lines.append(f"| {name} | {binding} | " + " | ".join(fmt(cats[c]) for c in CATEGORIES)
                             + f" | {fmt(cats['mean'])} | {cats['mean']['n_images']} |")
        if any("binding" in b for b in r["backbones"].values()):
            lines += section(
                "Rung 4b: why multi-object prompts fail",
                "Each stated colour, texture or size of a phrase whose value another phrase of the prompt does not "
                "share (%): the most confident detection of the phrase's noun carries it (bound), carries the other "
                "phrase's value (swapped: leakage), another value (other), or the noun was not found (missing). "
                "`swapped | wrong`: swapped among wrong values, against what a random wrong value gives.",
                ["backbone", "category", *BINDING_OUTCOMES, "swapped \\| wrong (random)", "all nouns found",
                 "detections/image", "phrases", "images"])
            for name, b in r["backbones"].items():
                for cat, w in b.get("binding", {}).items():
                    lines.append(f"| {name} | {cat} | " + " | ".join(f"{100 * w[o]:.1f}" for o in BINDING_OUTCOMES)
                                 + f" | {100 * w['swapped_among_wrong']:.0f} ({100 * w['swapped_if_random']:.0f}) | "
                                 f"{100 * w['all_nouns_found']:.0f} | {w['mean_detections']:.2f} | "
                                 f"{w['n_contested']} | {w['n_images']} |")
        if any("counts" in b for b in r["backbones"].values()):
            lines += section(
                "Rung 4c: does an image hold the prompt's objects?",
                "Images with fewer, as many, or more detections than the prompt names (%); `one noun`: images whose "
                "detections carry only one of the prompt's distinct nouns, the others dropped, copied or drawn as "
                "another shape; then the strict score (%) of the prompts that ask for a composition pre-training "
                "makes rare (`data.rare_pairs`) and of the others.",
                ["backbone", "category", *COUNT_OUTCOMES, "one noun", "images", "strict: common prompts",
                 "strict: rare prompts"])
            for name, b in r["backbones"].items():
                split = b.get("rare_split", {})
                counts = b.get("counts", {})
                for cat, c in ((cat, counts[cat]) for cat in CATEGORIES if cat in counts):
                    common, rare = (fmt(split[k][cat]) + f" ({split[k][cat]['n_prompts']})"
                                    if cat in split.get(k, {}) else "-" for k in ("common", "rare"))
                    lines.append(f"| {name} | {cat} | " + " | ".join(f"{100 * c[o]:.0f}" for o in COUNT_OUTCOMES)
                                 + f" | {100 * c['one_noun']:.0f} | {c['n_images']} | {common} | {rare} |")
        if r.get("text_probe"):
            lines += ["", "Text encoder binding probe (`signal.text_binding_probe`): a ridge probe on the hidden "
                      "state at each noun of \"a X1 S1 and a X2 S2\", asked for that noun's own value on held-out "
                      "prompts (a symmetric bag-of-words encoder cannot pass 50% at the second noun); and the "
                      "cosine of the pooled states of a prompt and its attribute swap.", "",
                      "| attribute | first noun | second noun | chance | pooled swap cosine | prompts (held out) |",
                      "|---|---|---|---|---|---|"]
            lines += [f"| {a} | {100 * t['first_noun_accuracy']:.0f} | {100 * t['second_noun_accuracy']:.0f} | "
                      f"{100 * t['chance']:.0f} | {t['swap_cosine']:.3f} | {t['n_prompts']} ({t['n_test']}) |"
                      for a, t in r["text_probe"].items()]
        eff = r.get("effects", {})
        if eff.get("compbench") or eff.get("fid"):
            lines += ["", "### Rung 5: what fine-tuning changes", "",
                      "CompBench-mini (strict score, %): tuned minus base on the same prompts and seeds; SE of the "
                      "prompt-level paired difference; z = difference / SE.", "",
                      "| base:tuned | " + " | ".join(CATEGORIES) + " | mean (base → tuned) | z |", "|" + "---|" * 9]
            for pair, d in eff.get("compbench", {}).items():
                lines.append(f"| {pair} | " + " | ".join(f"{d[c]['diff']:+.1f} ± {d[c]['se']:.1f}" for c in CATEGORIES)
                             + f" | {d['mean']['base']:.1f} → {d['mean']['tuned']:.1f} | {d['mean']['z']:.1f} |")
            if eff.get("fid"):
                lines += ["", "FID (shapes features): bootstrap SE over samples (joint resamples for the "
                          "difference).", "", "| base:tuned | samples | base FID | tuned FID | difference | z |",
                          "|---|---|---|---|---|---|"]
                lines += [f"| {pair} | {f['n']} | {f['fid']:.2f} ± {f['se']:.2f} | {f['fid_other']:.2f} ± "
                          f"{f['se_other']:.2f} | {f['diff']:+.2f} ± {f['se_diff']:.2f} | {f['z']:.1f} |"
                          for pair, f in eff["fid"].items()]
        tr = r.get("train_effects", {})
        if tr.get("pairs"):
            lines += section(
                "Rung 5b: does fine-tuning learn the prompts of its own data?",
                f"Base and tuned runs sampled on CompBench-mini's training prompts, the ones GORS drew the tuned "
                f"run's images from ({tr['images_per_prompt']} images per prompt, evaluation seeds), strict score "
                f"(%): tuned minus base, paired by prompt and seed. `seen`: prompts with at least one kept GORS "
                f"image; `unseen`: the rest. Commit {tr['commit']}, {tr['wall_s']:.0f} s.",
                ["base:tuned", "prompts", *CATEGORIES, "mean (base → tuned)", "z", "n prompts"])
            for pair, split in tr["pairs"].items():
                for name, d in split.items():
                    lines.append(f"| {pair} | {name} | " + " | ".join(
                        f"{d[c]['diff']:+.1f} ± {d[c]['se']:.1f} ({d[c]['n_prompts']})" if c in d else "-"
                        for c in CATEGORIES) + f" | {d['mean']['base']:.1f} → {d['mean']['tuned']:.1f} | "
                        f"{d['mean']['z']:.1f} | {d['mean']['n_prompts']} |")
        lines += ["", "Image statistics (pixel units in [0, 1]): mean gradient magnitude / high-pass std.", "",
                  "| images | n | gradient | high-pass std | high-pass p90 |", "|---|---|---|---|---|"]
        rows = [("renders", e["renders"]["image_stats"]), ("reconstructions", e["reconstructions"]["image_stats"])]
        rows += [(f"{n} samples", b["sample_image_stats"]) for n, b in r["backbones"].items()]
        lines += [f"| {n} | {s['n_images']} | {s['gradient_mean']:.4f} | {s['highpass_std_mean']:.4f} | "
                  f"{s['highpass_std_p90']:.4f} |" for n, s in rows]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--label", required=True)
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--results", default="results")
    ap.add_argument("--backbones", nargs="+", default=None)
    ap.add_argument("--single-per-prompt", type=int, default=8)
    ap.add_argument("--images-per-prompt", type=int, default=None, help="default: evaluation.images_per_prompt")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--note", default="")
    ap.add_argument("--effect", nargs="*", default=[], help="BASE:TUNED runs with compbench_scores.csv")
    ap.add_argument("--fid-effect", nargs="*", default=[], help="BASE:TUNED runs with fid_samples/")
    ap.add_argument("--train-effect", nargs="*", default=[],
                    help="BASE:TUNED runs to sample on the GORS training prompts (rung 5b)")
    ap.add_argument("--train-images-per-prompt", type=int, default=4)
    ap.add_argument("--keep", action="store_true", help="reuse this label's stored rungs 1-4, add rung 5")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    cfg = yaml.safe_load((ROOT / args.config).read_text())
    res = ROOT / args.results
    prompts = {c: read_prompts(res / f"data/compbench/{c}_val.txt") for c in CATEGORIES}
    evaluator = load_evaluator(res / "models/evaluator")
    path = OUT.with_suffix(".json")
    records = json.loads(path.read_text()) if path.is_file() else {}
    if args.keep:
        rec = records[args.label]
        rec["effects"] = effect_rungs(evaluator, res, args.effect, args.fid_effect)
        if args.train_effect:  # a --keep run without it leaves a stored rung 5b as it is
            rec["train_effects"] = train_prompt_rungs(evaluator, cfg, ROOT / args.config, res, args.train_effect,
                                                      args.train_images_per_prompt)
        write_json(path, records)
        OUT.with_suffix(".md").write_text(markdown(records))
        print(markdown({args.label: rec}))
        return
    vae = load_vae(res / "models/vae")
    rec = {"commit": git_commit(ROOT),
           "config": args.config, "machine": f"{platform.machine()} CPU, no GPU", "threads": args.threads,
           "note": args.note, "evaluator": evaluator_rungs(evaluator, vae, cfg, prompts, cfg["resolution"]),
           "text_probe": {a: text_binding_probe(*text_encoder(res / "models/text_encoder"), a) for a in ("color", "texture")},
           "backbones": {}}
    n_pp = args.images_per_prompt or cfg["evaluation"]["images_per_prompt"]
    # the class-conditional backbones take class labels, not CompBench-mini prompts
    for name in args.backbones or [b for b in cfg["backbones"] if b not in CLASS_ARCHS]:
        bb = load_mini_backbone(name, res / "models/base" / name, res / "models/vae", res / "models/text_encoder")
        rec["backbones"][name] = backbone_rungs(bb, evaluator, cfg, prompts, args.single_per_prompt, n_pp)
        print(name, json.dumps(rec["backbones"][name]["compbench"]["product"]["mean"]), flush=True)
    rec["effects"] = effect_rungs(evaluator, res, args.effect, args.fid_effect)
    rec["train_effects"] = train_prompt_rungs(evaluator, cfg, ROOT / args.config, res, args.train_effect,
                                              args.train_images_per_prompt)
    rec["wall_s"] = time.perf_counter() - t0
    records[args.label] = rec
    write_json(path, records)
    OUT.with_suffix(".md").write_text(markdown(records))
    print(markdown({args.label: rec}))


if __name__ == "__main__":
    main()
