"""The signal ladder: where, between the renderer and a CompBench-mini score, composition is lost.

Rungs, each measured with its sample count:
1. the evaluator on held-out renders;
2. the evaluator on the VAE's reconstructions of those renders (what every generated
   image looks like to it), per attribute and per object size;
3. a base model on single-object prompts, per attribute: does the one object it draws
   carry the stated value?
4. a base model on the CompBench-mini categories, with prompt-clustered standard errors.
The functions here take images and detections; `bench/signal_ladder.py` samples and runs them.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..data import grammar as G
from .evaluator import argmax_label, detect
from .stats import clustered_mean, mean_se

SINGLE_ATTRS = ("shape", "color", "texture", "size")


def single_object_prompts() -> list[tuple[str, str, str]]:
    """(prompt, attribute, value): every value of every attribute, once with each shape noun
    (shape: the bare noun), so a rung-3 score is per attribute and balanced over shapes."""
    items = [(f"a {s}", "shape", s) for s in G.VALUES["shape"]]
    for attr in ("color", "texture", "size"):
        items += [(f"a {v} {s}", attr, v) for v in G.VALUES[attr] for s in G.VALUES["shape"]]
    return items


def single_object_table(model, images: np.ndarray, items: list[tuple[str, str, str]]) -> pd.DataFrame:
    """One row per image: whether the top detection's argmax is the stated value (no detection:
    wrong), its shape is the stated noun, and how many objects were found."""
    if len(images) != len(items):
        raise ValueError(f"{len(images)} images but {len(items)} prompts")
    rows = []
    for (prompt, attr, value), dets in zip(items, detect(model, images)):
        shape = G.parse(prompt).objects[0]["shape"]
        top = dets[0] if dets else None  # detect sorts by objectness
        rows.append({"prompt": prompt, "attr": attr, "value": value, "n_detections": len(dets),
                     "correct": float(top is not None and argmax_label(top, attr) == value),
                     "shape_correct": float(top is not None and argmax_label(top, "shape") == shape)})
    return pd.DataFrame(rows)


def single_object_summary(table: pd.DataFrame) -> dict:
    out = {}
    for attr in SINGLE_ATTRS:
        t = table[table["attr"] == attr]
        if len(t):
            out[attr] = {**clustered_mean(t, "correct"), "shape_correct": float(t["shape_correct"].mean()),
                         "one_object": float((t["n_detections"] == 1).mean())}
    return out


def category_summary(scores: pd.DataFrame, value: str = "score") -> dict:
    """Per category (and over all of them): mean score in percent, prompt-clustered SE."""
    out = {cat: clustered_mean(g, value) for cat, g in scores.groupby("category", sort=False)}
    # the mean over categories: SE from the categories' SEs (independent prompt sets)
    cats = [c for c in G.CATEGORIES if c in out]
    if cats:
        out["mean"] = {"mean": float(np.mean([out[c]["mean"] for c in cats])),
                       "se": mean_se(out[c]["se"] for c in cats),
                       "n_images": int(sum(out[c]["n_images"] for c in cats)),
                       "n_prompts": int(sum(out[c]["n_prompts"] for c in cats))}
    return out


def image_statistics(images: np.ndarray) -> dict:
    """Sharpness and noise of uint8 images in [0, 1] pixel units: the mean gradient magnitude,
    and the std of the high-pass residual (image minus its 3x3 box blur). Renders against
    reconstructions against samples say how wide the evaluator's augmentation must be."""
    x = torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2).float() / 255.0
    gx, gy = x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]
    grad = 0.5 * (gx.abs().mean(dim=(1, 2, 3)) + gy.abs().mean(dim=(1, 2, 3)))
    blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1)
    hp = (x - blur).flatten(1).std(dim=1)
    return {"n_images": len(x), "gradient_mean": float(grad.mean()), "highpass_std_mean": float(hp.mean()),
            "highpass_std_p90": float(hp.quantile(0.9))}


def paired_effect(base: pd.DataFrame, tuned: pd.DataFrame, value: str = "score") -> dict:
    """Per category and overall: mean(tuned) - mean(base) over the same prompts and seeds, with
    the SE of the prompt-level paired difference, and the difference in SEs (z)."""
    key = ["category", "prompt"]
    b = base.groupby(key)[value].mean().rename("base")
    t = tuned.groupby(key)[value].mean().rename("tuned")
    d = pd.concat([b, t], axis=1, join="inner")
    if len(d) < len(b) or len(d) < len(t):
        raise ValueError("the two runs were not scored on the same prompts")
    d["diff"] = d["tuned"] - d["base"]
    out = {}
    for cat, g in d.groupby(level="category", sort=False):
        se = float(g["diff"].std(ddof=1) / np.sqrt(len(g))) if len(g) > 1 else float("nan")
        out[cat] = {"base": float(g["base"].mean()), "tuned": float(g["tuned"].mean()),
                    "diff": float(g["diff"].mean()), "se": se, "n_prompts": int(len(g))}
    cats = [c for c in G.CATEGORIES if c in out]
    diff = float(np.mean([out[c]["diff"] for c in cats]))
    se = mean_se(out[c]["se"] for c in cats)
    out["mean"] = {"base": float(np.mean([out[c]["base"] for c in cats])),
                   "tuned": float(np.mean([out[c]["tuned"] for c in cats])), "diff": diff, "se": se,
                   "n_prompts": int(sum(out[c]["n_prompts"] for c in cats))}
    for v in out.values():
        v["z"] = v["diff"] / v["se"] if v["se"] and np.isfinite(v["se"]) else float("nan")
    return out


BINDING_OUTCOMES = ("bound", "swapped", "other", "missing")


def binding_outcomes(spec: G.PromptSpec, detections: list[dict]) -> list[dict]:
    """Why a multi-object prompt fails, phrase by phrase (rung 4's diagnosis).

    For each stated non-shape attribute of each phrase: the most confident detection whose
    argmax shape is the phrase's noun is `bound` (argmax value as stated), `swapped` (it carries
    the value another phrase states for that attribute: attribute leakage), `other` (any other
    value), or `missing` (no detection has the noun). Leakage is the binding failure; a chance
    guess is `swapped` 1 time in (number of values - 1) when the other phrase's value differs."""
    rows = []
    for i, want in enumerate(spec.objects):
        cands = [d for d in detections if argmax_label(d, "shape") == want["shape"]]
        top = max(cands, key=lambda d: d["objectness"]) if cands else None
        for attr, value in want.items():
            if attr == "shape":
                continue
            others = {o.get(attr) for k, o in enumerate(spec.objects) if k != i} - {None, value}
            if top is None:
                outcome = "missing"
            else:
                got = argmax_label(top, attr)
                outcome = "bound" if got == value else "swapped" if got in others else "other"
            rows.append({"phrase": i, "attr": attr, "outcome": outcome, "contested": bool(others)})
    return rows


def binding_summary(detections: list[list[dict]], prompts: list[str], categories: list[str]) -> dict:
    """Per category: shares of phrase-attribute outcomes (see binding_outcomes), over contested
    phrases only (another phrase states a different value, so leakage is possible), the share of
    images where every phrase's noun was found, and the swapped share a chance guess would give."""
    if not len(detections) == len(prompts) == len(categories):
        raise ValueError(f"{len(detections)} images, {len(prompts)} prompts, {len(categories)} categories")
    rows = []
    for k, (prompt, cat, dets) in enumerate(zip(prompts, categories, detections)):
        spec = G.parse(prompt)
        found = all(any(argmax_label(d, "shape") == o["shape"] for d in dets) for o in spec.objects)
        rows += [{"image": k, "category": cat, "all_nouns": found, "n_detections": len(dets), **r}
                 for r in binding_outcomes(spec, dets)]
    df = pd.DataFrame(rows)
    out = {}
    for cat, g in df.groupby("category", sort=False):
        c = g[g["contested"]]
        per_image = g.groupby("image")[["all_nouns", "n_detections"]].first()
        n_values = {a: len(G.VALUES[a]) for a in c["attr"].unique()}
        out[cat] = {"n_images": int(len(per_image)), "n_contested": int(len(c)),
                    "all_nouns_found": float(per_image["all_nouns"].mean()),
                    "mean_detections": float(per_image["n_detections"].mean()),
                    **{o: float((c["outcome"] == o).mean()) if len(c) else float("nan") for o in BINDING_OUTCOMES},
                    "swapped_among_wrong": float((c["outcome"] == "swapped").sum()
                                                 / max(1, c["outcome"].isin(["swapped", "other"]).sum())),
                    # what swapped_among_wrong would be if a wrong value were drawn at random
                    "swapped_if_random": float(np.mean([1 / (n_values[a] - 1) for a in c["attr"]])) if len(c) else
                    float("nan")}
    return out


COUNT_OUTCOMES = ("fewer", "as_many", "more")


def count_summary(detections: list[list[dict]], prompts: list[str], categories: list[str]) -> dict:
    """Rung 4c, per category: does an image hold the objects its prompt names? Shares of images with fewer, as
    many, or more detections than named objects; and `one_noun`: the share whose detections carry exactly one of
    the prompt's (always distinct) nouns: the others were dropped, or drawn as a copy of it or as another shape."""
    if not len(detections) == len(prompts) == len(categories):
        raise ValueError(f"{len(detections)} images, {len(prompts)} prompts, {len(categories)} categories")
    rows = []
    for prompt, cat, dets in zip(prompts, categories, detections):
        objects = G.parse(prompt).objects
        n, k = len(objects), len(dets)
        found = {argmax_label(d, "shape") for d in dets} & {o["shape"] for o in objects}
        rows.append({"category": cat, "count": "fewer" if k < n else "as_many" if k == n else "more",
                     "one_noun": len(found) == 1})
    df = pd.DataFrame(rows)
    return {cat: {"n_images": int(len(g)), "one_noun": float(g["one_noun"].mean()),
                  **{o: float((g["count"] == o).mean()) for o in COUNT_OUTCOMES}}
            for cat, g in df.groupby("category", sort=False)}


def rare_split(scores: pd.DataFrame, rare_pairs: set[tuple[str, str]], value: str = "score") -> dict:
    """category_summary of the prompts that ask for a rare composition and of those that do not."""
    rare = scores["prompt"].map(lambda p: G.asks_rare(G.parse(p), rare_pairs))
    return {"rare": category_summary(scores[rare], value), "common": category_summary(scores[~rare], value)}


@torch.no_grad()
def text_binding_probe(tokenizer, text_encoder, attr: str = "color", seed: int = 0) -> dict:
    """Does the text encoder bind an attribute to its noun? Over every prompt "a X1 S1 and a X2 S2"
    (distinct nouns, distinct values of `attr`), a ridge probe on the hidden state at each noun is
    fitted on two thirds of the prompts and asked, on the rest, for that noun's own value. An
    encoder that mixes the two phrases symmetrically cannot pass 50% at the second noun, which
    sees both values. Also the cosine similarity of the final (pooled) states of a prompt and its
    swap ("a X2 S1 and a X1 S2"): 1.0 means the encoder cannot tell them apart."""
    vals, shapes = G.VALUES[attr], G.VALUES["shape"]
    specs = [(a, b, s, t) for s in shapes for t in shapes if s != t for a in vals for b in vals if a != b]
    texts = [f"a {a} {s} and a {b} {t}" for a, b, s, t in specs]
    swaps = [f"a {b} {s} and a {a} {t}" for a, b, s, t in specs]
    dev = next(text_encoder.parameters()).device

    def encode(batch):
        tok = tokenizer(batch, padding="max_length", truncation=True, return_tensors="pt")
        out = text_encoder(input_ids=tok.input_ids.to(dev), attention_mask=tok.attention_mask.to(dev))
        return out.last_hidden_state.float().cpu(), out.text_embeds.float().cpu()

    hidden, pooled = encode(texts)
    _, pooled_swap = encode(swaps)
    # word positions after <bos>: a X1 S1 and a X2 S2
    nouns = {"first": 3, "second": 7}
    rng = np.random.default_rng(seed)
    test = np.zeros(len(specs), dtype=bool)
    test[rng.permutation(len(specs))[: len(specs) // 3]] = True
    out = {"n_prompts": len(specs), "n_test": int(test.sum()), "chance": 1 / len(vals),
           "swap_cosine": float(F.cosine_similarity(pooled, pooled_swap).mean())}
    for name, pos in nouns.items():
        x = torch.cat([hidden[:, pos], torch.ones(len(specs), 1)], dim=1)
        own = torch.tensor([vals.index(sp[0 if name == "first" else 1]) for sp in specs])
        y = F.one_hot(own, len(vals)).float()
        xt, yt = x[~test], y[~test]
        w = torch.linalg.solve(xt.T @ xt + 1e-2 * torch.eye(x.shape[1]), xt.T @ yt)
        out[f"{name}_noun_accuracy"] = float(((x[test] @ w).argmax(1) == own[test]).float().mean())
    return out
