"""Render a dataset split and write the CompBench-mini prompt files.

A split is a folder of PNGs plus ``labels.jsonl`` (one record per image: file,
caption and every object's shape, colour, texture, size, centre and diameter).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import grammar as G
from .io import atomic_dir, save_png, write_labels, write_lines
from .world import render


def world_settings(data_cfg: dict) -> dict:
    return dict(n_objects_p=data_cfg["n_objects_p"], rare_pairs=G.parse_rare_pairs(data_cfg["rare_pairs"]),
                rare_keep=data_cfg["rare_keep"], mention=data_cfg["mention"], p_relation=data_cfg["p_relation"])


def render_split(out_dir, n: int, seed: int, resolution: int, data_cfg: dict) -> None:
    """Render `n` pre-training-style scenes deterministically from `seed`."""
    ws = world_settings(data_cfg)
    with atomic_dir(out_dir) as tmp:
        records = []
        for i in tqdm(range(n), desc=f"render {Path(out_dir).name}", mininterval=2.0):
            # one generator per image: image i is the same whatever n is
            rng = np.random.default_rng([seed, i])
            scene = G.pretrain_scene(rng, resolution, **ws)
            name = f"images/{i:06d}.png"
            save_png(tmp / name, render(scene))
            records.append({"file": name, **scene.to_json()})
        write_labels(tmp / "labels.jsonl", records)


def write_compbench(out_dir, cb_cfg: dict, data_cfg: dict) -> dict[str, tuple[list[str], list[str]]]:
    """Write ``<category>_train.txt`` / ``<category>_val.txt`` in T2I-CompBench's format."""
    rare = G.parse_rare_pairs(data_cfg["rare_pairs"])
    out = {}
    for cat in G.CATEGORIES:
        train, val = G.compbench_split(cat, cb_cfg["n_train"], cb_cfg["n_val"], cb_cfg["seed"], rare,
                                       cb_cfg["p_rare"])
        write_lines(Path(out_dir) / f"{cat}_train.txt", train)
        write_lines(Path(out_dir) / f"{cat}_val.txt", val)
        out[cat] = (train, val)
    return out


def _pairs(objects: list[dict]) -> Counter:
    """(attribute value, shape) pairs a caption states, e.g. ('magenta', 'triangle')."""
    c = Counter()
    for o in objects:
        for a in ("size", "color", "texture"):
            if o.get(a):
                c[(o[a], o["shape"])] += 1
    return c


def coverage_report(labels: list[dict], prompt_files: dict[str, list[str]], rare_pairs: list[str]) -> str:
    """Markdown: which compositions pre-training captions state vs what CompBench-mini asks for."""
    rare = G.parse_rare_pairs(rare_pairs)
    cap_pairs, img_pairs, rel = Counter(), Counter(), Counter()
    n_words = Counter()
    for r in labels:
        spec = G.parse(r["caption"])
        cap_pairs += _pairs(spec.objects)
        img_pairs += _pairs([{"size": o["size"], "color": o["color"], "texture": o["texture"],
                              "shape": o["shape"]} for o in r["objects"]])
        rel[spec.relation[2] if spec.relation else "none"] += 1
        n_words[len(r["objects"])] += 1
    n = len(labels)
    lines = [
        "# Data coverage: pre-training captions vs CompBench-mini prompts", "",
        f"Pre-training split: {n} rendered scenes; objects per scene: "
        + ", ".join(f"{k}: {v / n:.0%}" for k, v in sorted(n_words.items())) + ".",
        "Captions state every object's shape, but its size, colour and texture only in part, "
        "and a relation for only some two-object scenes (the rates are in the config's `data.mention`, `data.p_relation`).",
        "CompBench-mini prompts state every attribute their category tests, and about half of them ask for a rare composition.",
        "", "## Rare compositions", "",
        "| pair | scenes containing it (% of objects with that shape) | captions stating it | CompBench-mini prompts asking for it |",
        "| --- | --- | --- | --- |",
    ]
    cb_pairs = Counter()
    for prompts in prompt_files.values():
        for p in prompts:
            cb_pairs += _pairs(G.parse(p).objects)
    shape_count = Counter(o["shape"] for r in labels for o in r["objects"])
    for pair in sorted(rare):
        share = img_pairs[pair] / max(1, shape_count[pair[1]])
        lines.append(f"| {pair[0]} {pair[1]} | {img_pairs[pair]} ({share:.1%}) | {cap_pairs[pair]} | {cb_pairs[pair]} |")
    lines += ["", "## Relations stated in pre-training captions", "",
              "| relation | captions |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in sorted(rel.items())]
    lines += ["", "## CompBench-mini prompt files", "", "| file | prompts | asking for a rare pair |", "| --- | --- | --- |"]
    for name, prompts in prompt_files.items():
        k = sum(any(p in rare for p in _pairs(G.parse(q).objects)) for q in prompts)
        lines.append(f"| {name} | {len(prompts)} | {k} |")
    return "\n".join(lines) + "\n"
