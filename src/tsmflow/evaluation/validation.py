"""Validate the evaluator before anything is scored with it.

Two checks, both on scenes rendered from a seed the evaluator never trained on:
1. detection: per-attribute accuracy of matched objects, centre position, object
   count, and confusion matrices;
2. a negative control per CompBench-mini category: for each prompt, scenes that
   satisfy it and scenes that violate what the category tests (attributes moved
   between the objects, or the relation reversed) are scored on the prompt.
   A scorer that cannot tell them apart (constant, random, attribute-blind) fails.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..data import grammar as G
from ..data.world import SIZE_FRACTION, render
from .compbench import score_spec
from .evaluator import ATTR_VALUES, ATTRS, DEFAULT_N_OBJECTS_P, argmax_label, detect, render_scenes

# Why these: a good detector scores ~99-100% per attribute on clean renders, and a
# correct scene's product over <= 3 phrases x 4 attributes stays > 0.8 only when every
# probability is near-certain; a violating scene must lose most of its score.
THRESHOLDS = {"min_accuracy": 0.97, "min_correct_mean": 0.8, "max_negative_mean": 0.3}
ACCURACY_KEYS = ("shape", "color", "texture", "size", "position", "count")
REVERSED = {"left": "right", "right": "left", "above": "below", "below": "above",
            "bigger": "smaller", "smaller": "bigger"}
DEFAULT_VALIDATION = {"n": 1000, "per_prompt": 4, "position_tol": 2 / 32}


def _match(objs, dets, radius: float):
    """Hungarian matching of ground-truth objects to detections by centre distance."""
    if not objs or not dets:
        return []
    d = np.array([[np.hypot(o.cx - t["cx"], o.cy - t["cy"]) for t in dets] for o in objs])
    rows, cols = linear_sum_assignment(d)
    return [(r, c, float(d[r, c])) for r, c in zip(rows, cols) if d[r, c] <= radius]


def detection_report(model, images: np.ndarray, scenes, position_tol_px: float,
                     batch_size: int = 256) -> dict:
    dets = detect(model, images, batch_size=batch_size)
    res = images.shape[1]
    # a detection further than half a small object's diameter is not that object
    radius = 0.5 * SIZE_FRACTION["small"] * res
    conf = {a: np.zeros((len(ATTR_VALUES[a]),) * 2, dtype=int) for a in ATTRS}
    n_obj = n_det = n_match = n_pos = n_count = 0
    errors = []
    for scene, ds in zip(scenes, dets):
        n_obj += len(scene.objects)
        n_det += len(ds)
        n_count += len(ds) == len(scene.objects)
        for r, c, dist in _match(scene.objects, ds, radius):
            n_match += 1
            n_pos += dist <= position_tol_px
            errors.append(dist)
            for a in ATTRS:
                vals = ATTR_VALUES[a]
                conf[a][vals.index(getattr(scene.objects[r], a)), vals.index(argmax_label(ds[c], a))] += 1
    acc = {a: (float(np.trace(conf[a]) / n_match) if n_match else 0.0) for a in ATTRS}
    # missed objects count as misplaced: position accuracy doubles as recall
    acc["position"] = n_pos / n_obj if n_obj else 0.0
    acc["count"] = n_count / len(scenes) if len(scenes) else 0.0
    return {
        "accuracy": acc,
        "detection": {"n_objects": n_obj, "n_detections": n_det, "matched": n_match,
                      "recall": n_match / n_obj if n_obj else 0.0,
                      "precision": n_match / n_det if n_det else 0.0,
                      "mean_position_error_px": float(np.mean(errors)) if errors else None,
                      "position_tol_px": position_tol_px},
        "confusion": {a: {"labels": list(ATTR_VALUES[a]), "matrix": conf[a].tolist()} for a in ATTRS},
    }


def negative_spec(spec: G.PromptSpec, category: str, rng: np.random.Generator) -> G.PromptSpec:
    """A spec violating what `category` tests.

    Attribute categories and complex: every object's stated attributes (other than its
    shape) move to the next object; where all objects share a value, the first object
    gets another one. Spatial / non-spatial: the relation is reversed.
    Complex keeps its relation: reversing it as well would give the correct image with
    only the two shapes exchanged, a negative that tests shape alone.
    """
    objects = [dict(o) for o in spec.objects]
    relation = spec.relation
    if category in ("color", "shape", "texture", "complex"):
        n = len(objects)
        for a in G.ATTRS:
            if a == "shape" or any(a not in o for o in objects):
                continue
            for k in range(n):
                objects[k][a] = spec.objects[(k + 1) % n][a]
            if len({o[a] for o in spec.objects}) == 1:
                # every object had the same value: change the first one only (changing all
                # could ask for three large objects, which rarely fit at 32 px)
                others = [v for v in G.VALUES[a] if v != objects[0][a]]
                objects[0][a] = others[rng.integers(len(others))]
    if category in ("spatial", "non_spatial") and relation is not None:
        relation = (relation[0], relation[1], REVERSED[relation[2]])
    if category in ("spatial", "non_spatial") and relation is None:
        raise ValueError(f"{category} prompt {spec.text()!r} states no relation")
    return G.PromptSpec(objects=objects, relation=relation, category=category)


def control_report(model, prompts: dict[str, list[str]], resolution: int, seed: int,
                   per_prompt: int, batch_size: int = 256) -> dict:
    out = {}
    for cat, plist in prompts.items():
        if cat not in G.CATEGORIES:
            raise ValueError(f"unknown category {cat!r}; expected some of {G.CATEGORIES}")
        specs, images, kinds, skipped = [], [], [], []
        for p_i, prompt in enumerate(plist):
            spec = G.parse(prompt)
            try:
                pairs = []
                for k in range(per_prompt):
                    rng = np.random.default_rng([seed, G.CATEGORIES.index(cat), p_i, k])
                    neg = negative_spec(spec, cat, rng)
                    pairs += [render(G.scene_for_spec(s, rng, resolution)) for s in (spec, neg)]
            except RuntimeError:
                # e.g. three large objects rarely fit at 32 px: random placement gives up
                skipped.append(prompt)
                continue
            images += pairs
            specs += [spec] * len(pairs)  # both kinds are scored on the prompt itself
            kinds += ["correct", "negative"] * per_prompt
        if not images:
            out[cat] = {"n_prompts": 0, "n_images": 0, "skipped_prompts": skipped, "correct_mean": float("nan"),
                        "negative_mean": float("nan"), "correct_min": float("nan"),
                        "negative_max": float("nan"), "pairwise_separation": float("nan")}
            continue
        dets = detect(model, np.stack(images), batch_size=batch_size)
        scores = np.array([score_spec(s, d, cat) for s, d in zip(specs, dets)])
        kinds = np.array(kinds)
        pos, neg = scores[kinds == "correct"], scores[kinds == "negative"]
        out[cat] = {"n_prompts": len(plist) - len(skipped), "n_images": len(scores), "skipped_prompts": skipped,
                    "correct_mean": float(pos.mean()), "negative_mean": float(neg.mean()),
                    "correct_min": float(pos.min()), "negative_max": float(neg.max()),
                    # share of (correct, negative) pairs of the same prompt ranked right
                    "pairwise_separation": float((pos > neg).mean())}
    return out


def check_report(report: dict, thresholds: dict | None = None) -> list[str]:
    """Reasons the evaluator fails validation; empty when it passes."""
    t = {**THRESHOLDS, **(thresholds or {})}
    fails = [f"{k} accuracy {report['accuracy'][k]:.3f} < {t['min_accuracy']}"
             for k in ACCURACY_KEYS if report["accuracy"][k] < t["min_accuracy"]]
    if not report.get("control"):
        fails.append("negative control was not run (no prompts)")
    for cat, c in report.get("control", {}).items():
        if not c["correct_mean"] >= t["min_correct_mean"]:
            fails.append(f"{cat}: correct scenes score {c['correct_mean']:.3f} < {t['min_correct_mean']}")
        if not c["negative_mean"] <= t["max_negative_mean"]:
            fails.append(f"{cat}: violating scenes score {c['negative_mean']:.3f} > {t['max_negative_mean']}")
    return fails


def validate_evaluator(model, cfg: dict, resolution: int, prompts: dict[str, list[str]], seed: int) -> dict:
    """Held-out validation report; `report["passed"]` says whether it may be used.

    `cfg` is the evaluator config; its `validation` block sets the number of scenes,
    scenes per prompt and the position tolerance (a fraction of the image side).
    """
    train_seed = cfg.get("data", {}).get("seed")
    if train_seed is not None and seed == train_seed:
        raise ValueError(f"validation seed {seed} is the evaluator's training seed: scenes would not be held out")
    v = {**DEFAULT_VALIDATION, **cfg.get("validation", {})}
    n_objects_p = cfg.get("data", {}).get("n_objects_p", DEFAULT_N_OBJECTS_P)
    images, scenes = render_scenes(v["n"], seed, resolution, n_objects_p)
    report = {"resolution": resolution, "seed": seed, "n_scenes": len(scenes),
              **detection_report(model, images, scenes, v["position_tol"] * resolution)}
    report["control"] = control_report(model, prompts, resolution, seed, v["per_prompt"])
    report["thresholds"] = {**THRESHOLDS, **cfg.get("thresholds", {})}
    report["failures"] = check_report(report, report["thresholds"])
    report["passed"] = not report["failures"]
    return report


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]
    return lines


def format_validation_markdown(report: dict) -> str:
    t = report["thresholds"]
    lines = ["# Evaluator validation", "",
             f"{report['n_scenes']} held-out rendered scenes at {report['resolution']} px (seed {report['seed']}); "
             f"a detection matches an object within half a small object's diameter.", "",
             "## Accuracy", ""]
    d = report["detection"]
    notes = {"position": f"centre within {d['position_tol_px']:.1f} px, over all objects (misses count as wrong)",
             "count": "images with exactly the right number of detections"}
    lines += _table(["check", "accuracy", "note"],
                    [[k, f"{report['accuracy'][k]:.2%}", notes.get(k, "argmax over matched objects")]
                     for k in ACCURACY_KEYS])
    err = d["mean_position_error_px"]
    lines += ["", f"Objects {d['n_objects']}, detections {d['n_detections']}, matched {d['matched']} "
              f"(recall {d['recall']:.2%}, precision {d['precision']:.2%}); mean centre error "
              + (f"{err:.2f} px." if err is not None else "n/a."), "", "## Confusion matrices", "",
              "Rows: true value; columns: predicted.", ""]
    for a, c in report["confusion"].items():
        lines += [f"**{a}**", ""]
        lines += _table(["true \\ pred"] + c["labels"], [[lab] + row for lab, row in zip(c["labels"], c["matrix"])])
        lines.append("")
    lines += ["## Negative control", "",
              "Each prompt scored on scenes that satisfy it and on scenes that violate what its category tests "
              "(colour, shape, texture, complex: stated attributes moved to the next object; spatial, non-spatial: "
              "relation reversed). "
              f"Pass: correct mean >= {t['min_correct_mean']}, violating mean <= {t['max_negative_mean']}.", ""]
    lines += _table(["category", "prompts", "images", "correct mean", "violating mean", "correct min",
                     "violating max", "pairs ranked right"],
                    [[cat, c["n_prompts"], c["n_images"], f"{c['correct_mean']:.3f}", f"{c['negative_mean']:.3f}",
                      f"{c['correct_min']:.3f}", f"{c['negative_max']:.3f}", f"{c['pairwise_separation']:.1%}"]
                     for cat, c in report["control"].items()])
    skipped = [(cat, p) for cat, c in report["control"].items() for p in c.get("skipped_prompts", [])]
    if skipped:
        lines += ["", "Prompts left out because the renderer could not lay them out:", ""]
        lines += [f"- {cat}: {p}" for cat, p in skipped]
    lines += ["", f"Attribute, position and count accuracy must each be >= {t['min_accuracy']:.0%}.", ""]
    if report["passed"]:
        lines.append("**PASS**: the evaluator may score generated images.")
    else:
        lines.append("**FAIL**: " + "; ".join(report["failures"]))
    return "\n".join(lines) + "\n"
