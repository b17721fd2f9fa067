"""Validate the evaluator before anything is scored with it.

All checks use scenes rendered from a seed the evaluator never trained on, and run
twice: on the renders, and on their VAE reconstructions (what every generated image
looks like to the evaluator, since it passes through the decoder).
1. detection: per-attribute accuracy of matched objects, overall and per object size,
   centre position, object count, confusion matrices, and the expected calibration
   error of the attribute probabilities;
2. a negative control per CompBench-mini category: for each prompt, scenes that
   satisfy it and scenes that violate what the category tests (attributes moved
   between the objects, or the relation reversed) are scored on the prompt;
   also scenes with one object missing, and, for complex, the relation reversed
   with every attribute right (its relation half must lose its credit);
3. object-free images (uniform noise, blank, one colour, background noise) scored on
   every prompt: they must score about 0, and never reach the GORS keep-threshold.
A scorer that cannot tell these apart (constant, random, attribute-blind) fails.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..data import grammar as G
from ..data.world import SIZE_FRACTION, render
from .compbench import relation_score, score_spec
from .evaluator import ATTR_VALUES, ATTRS, DEFAULT_N_OBJECTS_P, argmax_label, detect, junk_images, render_scenes

# Why these: a good detector scores ~99-100% per attribute on clean renders, and a
# correct scene's product over <= 3 phrases x 4 attributes stays > 0.8 only when every
# probability is near-certain; a violating scene must lose most of its score. Means
# alone hide a bad tail, so the 5th percentile of correct scenes has a bar too.
THRESHOLDS = {"min_accuracy": 0.97, "min_correct_mean": 0.8, "min_correct_p05": 0.5, "max_negative_mean": 0.3,
              "max_missing_mean": 0.05, "max_reversed_relation_mean": 0.1, "max_junk_mean": 0.01,
              "max_junk": 0.05}
ACCURACY_KEYS = ("shape", "color", "texture", "size", "position", "count")
REVERSED = {"left": "right", "right": "left", "above": "below", "below": "above",
            "bigger": "smaller", "smaller": "bigger"}
DEFAULT_VALIDATION = {"n": 1000, "per_prompt": 4, "position_tol": 2 / 32, "n_junk": 200}
VIEWS = ("renders", "reconstructions")


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
    by_size = {z: {"n_objects": 0, "matched": 0, **{a: 0 for a in ATTRS}} for z in ATTR_VALUES["size"]}
    confidence = {a: [] for a in ATTRS}  # (max probability, argmax right) per matched object
    for scene, ds in zip(scenes, dets):
        n_obj += len(scene.objects)
        n_det += len(ds)
        n_count += len(ds) == len(scene.objects)
        for o in scene.objects:
            by_size[o.size]["n_objects"] += 1
        for r, c, dist in _match(scene.objects, ds, radius):
            n_match += 1
            n_pos += dist <= position_tol_px
            errors.append(dist)
            z = by_size[scene.objects[r].size]
            z["matched"] += 1
            for a in ATTRS:
                vals = ATTR_VALUES[a]
                truth, pred = getattr(scene.objects[r], a), argmax_label(ds[c], a)
                conf[a][vals.index(truth), vals.index(pred)] += 1
                z[a] += truth == pred
                confidence[a].append((ds[c][a][pred], truth == pred))
    acc = {a: (float(np.trace(conf[a]) / n_match) if n_match else 0.0) for a in ATTRS}
    size_acc = {z: {**{a: (v[a] / v["matched"] if v["matched"] else 0.0) for a in ATTRS},
                    "recall": v["matched"] / v["n_objects"] if v["n_objects"] else 0.0,
                    "n_objects": v["n_objects"]} for z, v in by_size.items()}
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
        "by_size": size_acc,
        "ece": {a: expected_calibration_error(confidence[a]) for a in ATTRS},
        "confusion": {a: {"labels": list(ATTR_VALUES[a]), "matrix": conf[a].tolist()} for a in ATTRS},
    }


def expected_calibration_error(pairs: list[tuple[float, bool]], n_bins: int = 10) -> float:
    """ECE of (confidence, correct) pairs: the count-weighted mean |accuracy - confidence| over bins."""
    if not pairs:
        return float("nan")
    p = np.array([c for c, _ in pairs], dtype=float)
    y = np.array([k for _, k in pairs], dtype=float)
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    return float(sum(abs(y[bins == b].mean() - p[bins == b].mean()) * (bins == b).sum()
                     for b in range(n_bins) if (bins == b).any()) / len(p))


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


def missing_spec(spec: G.PromptSpec, drop: int) -> G.PromptSpec:
    """The spec with object `drop` left out (and so its relation): a scene of it misses an object."""
    objects = [dict(o) for k, o in enumerate(spec.objects) if k != drop]
    return G.PromptSpec(objects=objects, relation=None, category=spec.category)


def _control_scenes(spec: G.PromptSpec, cat: str, rng: np.random.Generator, resolution: int) -> list[tuple]:
    """(scene image, kind) for one draw: correct, negative, and where they apply missing and reversed."""
    scene = lambda s: render(G.scene_for_spec(s, rng, resolution))  # noqa: E731
    items = [(scene(spec), "correct"), (scene(negative_spec(spec, cat, rng)), "negative")]
    if len(spec.objects) >= 2:
        items.append((scene(missing_spec(spec, int(rng.integers(len(spec.objects))))), "missing"))
    if cat == "complex" and spec.relation is not None:
        i, j, word = spec.relation
        items.append((scene(G.PromptSpec(objects=spec.objects, relation=(i, j, REVERSED[word]))), "reversed"))
    return items


def _stats(x: np.ndarray, prefix: str) -> dict:
    if len(x) == 0:
        return {f"{prefix}_mean": float("nan"), f"{prefix}_max": float("nan"), f"n_{prefix}": 0}
    return {f"{prefix}_mean": float(x.mean()), f"{prefix}_max": float(x.max()), f"n_{prefix}": len(x)}


def control_report(model, prompts: dict[str, list[str]], resolution: int, seed: int,
                   per_prompt: int, transform=None, batch_size: int = 256) -> dict:
    """Scores of correct and violating scenes per category; `transform` (e.g. the VAE
    round trip) is applied to every image before the evaluator sees it."""
    out = {}
    for cat, plist in prompts.items():
        if cat not in G.CATEGORIES:
            raise ValueError(f"unknown category {cat!r}; expected some of {G.CATEGORIES}")
        specs, images, kinds, skipped = [], [], [], []
        for p_i, prompt in enumerate(plist):
            spec = G.parse(prompt)
            try:
                items = []
                for k in range(per_prompt):
                    rng = np.random.default_rng([seed, G.CATEGORIES.index(cat), p_i, k])
                    items += _control_scenes(spec, cat, rng, resolution)
            except RuntimeError:
                # e.g. three large objects rarely fit at 32 px: random placement gives up
                skipped.append(prompt)
                continue
            images += [im for im, _ in items]
            kinds += [kind for _, kind in items]
            specs += [spec] * len(items)  # every kind is scored on the prompt itself
        if not images:
            out[cat] = {"n_prompts": 0, "n_images": 0, "skipped_prompts": skipped, "correct_mean": float("nan"),
                        "negative_mean": float("nan"), "correct_min": float("nan"), "correct_p05": float("nan"),
                        "negative_max": float("nan"), "pairwise_separation": float("nan")}
            continue
        images = np.stack(images)
        dets = detect(model, transform(images) if transform else images, batch_size=batch_size)
        scores = np.array([score_spec(s, d, cat) for s, d in zip(specs, dets)])
        kinds = np.array(kinds)
        pos, neg = scores[kinds == "correct"], scores[kinds == "negative"]
        out[cat] = {"n_prompts": len(plist) - len(skipped), "n_images": int((kinds == "correct").sum() * 2),
                    "skipped_prompts": skipped,
                    "correct_mean": float(pos.mean()), "negative_mean": float(neg.mean()),
                    "correct_min": float(pos.min()), "correct_p05": float(np.percentile(pos, 5)),
                    "negative_max": float(neg.max()),
                    # share of (correct, negative) pairs of the same prompt ranked right
                    "pairwise_separation": float((pos > neg).mean()),
                    **_stats(scores[kinds == "missing"], "missing")}
        if cat == "complex":
            # the relation half alone: reversing the relation must take its credit away
            rel = {kind: np.array([relation_score(s, d) for s, d, k in zip(specs, dets, kinds)
                                   if k == kind and s.relation is not None]) for kind in ("correct", "reversed")}
            out[cat].update({"relation_correct_mean": float(rel["correct"].mean()) if len(rel["correct"]) else
                             float("nan"), **_stats(rel["reversed"], "reversed_relation")})
    return out


def junk_report(model, prompts: dict[str, list[str]], resolution: int, seed: int, n: int,
                transform=None, batch_size: int = 256) -> dict:
    """Object-free images (junk_images) scored on every category's prompts, by kind."""
    images, kinds = junk_images(n, seed, resolution)
    dets = detect(model, transform(images) if transform else images, batch_size=batch_size)
    scores = []  # (kind, score) over every image x category, the image's prompt chosen in turn
    for cat, plist in prompts.items():
        if plist:
            scores += [(kind, score_spec(G.parse(plist[i % len(plist)]), d, cat))
                       for i, (kind, d) in enumerate(zip(kinds, dets))]
    by_kind = {}
    for kind in dict.fromkeys(kinds):
        x = np.array([v for k, v in scores if k == kind])
        by_kind[kind] = {"n_images": kinds.count(kind), "mean": float(x.mean()) if len(x) else float("nan"),
                         "max": float(x.max()) if len(x) else float("nan"),
                         "mean_detections": float(np.mean([len(d) for k, d in zip(kinds, dets) if k == kind]))}
    x = np.array([v for _, v in scores])
    return {"n_images": n, "n_scores": len(x), "mean": float(x.mean()) if len(x) else float("nan"),
            "max": float(x.max()) if len(x) else float("nan"),
            "mean_detections": float(np.mean([len(d) for d in dets])) if dets else 0.0, "by_kind": by_kind}


def _view_failures(view: str, report: dict, t: dict) -> list[str]:
    fails = [f"{view}: {k} accuracy {report['accuracy'][k]:.3f} < {t['min_accuracy']}"
             for k in ACCURACY_KEYS if report["accuracy"][k] < t["min_accuracy"]]
    for size, acc in report.get("by_size", {}).items():
        fails += [f"{view}: {size} objects: {a} accuracy {acc[a]:.3f} < {t['min_accuracy']}"
                  for a in (*ATTRS, "recall") if acc["n_objects"] and acc[a] < t["min_accuracy"]]
    if not report.get("control"):
        fails.append(f"{view}: negative control was not run (no prompts)")
    for cat, c in report.get("control", {}).items():
        if not c["correct_mean"] >= t["min_correct_mean"]:
            fails.append(f"{view}: {cat}: correct scenes score {c['correct_mean']:.3f} < {t['min_correct_mean']}")
        if "correct_p05" in c and not c["correct_p05"] >= t["min_correct_p05"]:
            fails.append(f"{view}: {cat}: 5% of correct scenes score below {c['correct_p05']:.3f} "
                         f"< {t['min_correct_p05']}")
        if not c["negative_mean"] <= t["max_negative_mean"]:
            fails.append(f"{view}: {cat}: violating scenes score {c['negative_mean']:.3f} > {t['max_negative_mean']}")
        if c.get("n_missing") and not c["missing_mean"] <= t["max_missing_mean"]:
            fails.append(f"{view}: {cat}: scenes missing an object score {c['missing_mean']:.3f} "
                         f"> {t['max_missing_mean']}")
        if c.get("n_reversed_relation") and not c["reversed_relation_mean"] <= t["max_reversed_relation_mean"]:
            fails.append(f"{view}: {cat}: a reversed relation keeps relation credit {c['reversed_relation_mean']:.3f} "
                         f"> {t['max_reversed_relation_mean']}")
    junk = report.get("junk")
    if junk is None:
        fails.append(f"{view}: object-free control was not run")
    else:
        if not junk["mean"] <= t["max_junk_mean"]:
            fails.append(f"{view}: object-free images score {junk['mean']:.3f} on average > {t['max_junk_mean']}")
        if not junk["max"] < t["max_junk"]:
            fails.append(f"{view}: an object-free image scores {junk['max']:.3f} >= {t['max_junk']} "
                         "(the GORS keep-threshold)")
    return fails


def check_report(report: dict, thresholds: dict | None = None) -> list[str]:
    """Reasons the evaluator fails validation; empty when it passes. Renders and, where the
    report has them, VAE reconstructions must each pass every bar."""
    t = {**THRESHOLDS, **(thresholds or {})}
    fails = _view_failures("renders", report, t)
    if "reconstructions" in report:
        fails += _view_failures("reconstructions", report["reconstructions"], t)
    return fails


def _view(model, images, scenes, prompts, resolution, seed, v, transform=None) -> dict:
    """Every check on one view of the held-out scenes (the renders, or what `transform` makes of them)."""
    seen = transform(images) if transform else images
    return {**detection_report(model, seen, scenes, v["position_tol"] * resolution),
            "control": control_report(model, prompts, resolution, seed, v["per_prompt"], transform),
            "junk": junk_report(model, prompts, resolution, seed, v["n_junk"], transform)}


def validate_evaluator(model, cfg: dict, resolution: int, prompts: dict[str, list[str]], seed: int,
                       reconstruct=None, junk_threshold: float | None = None) -> dict:
    """Held-out validation report; `report["passed"]` says whether it may be used.

    `cfg` is the evaluator config; its `validation` block sets the number of scenes,
    scenes per prompt, object-free images and the position tolerance (a fraction of the
    image side). `reconstruct` (uint8 images -> their VAE reconstructions) adds the
    decoder-output view; `junk_threshold` (a score in [0, 1], e.g. the lowest GORS
    keep-threshold) is the bar no object-free image may reach.
    """
    train_seed = cfg.get("data", {}).get("seed")
    if train_seed is not None and seed == train_seed:
        raise ValueError(f"validation seed {seed} is the evaluator's training seed: scenes would not be held out")
    v = {**DEFAULT_VALIDATION, **cfg.get("validation", {})}
    n_objects_p = cfg.get("data", {}).get("n_objects_p", DEFAULT_N_OBJECTS_P)
    images, scenes = render_scenes(v["n"], seed, resolution, n_objects_p)
    report = {"resolution": resolution, "seed": seed, "n_scenes": len(scenes),
              **_view(model, images, scenes, prompts, resolution, seed, v)}
    if reconstruct is not None:
        report["reconstructions"] = _view(model, images, scenes, prompts, resolution, seed, v, reconstruct)
    report["temperature"] = {a: float(model.temperature[k]) for k, a in enumerate(ATTRS)}
    report["thresholds"] = {**THRESHOLDS, **cfg.get("thresholds", {}),
                            **({"max_junk": junk_threshold} if junk_threshold is not None else {})}
    report["failures"] = check_report(report, report["thresholds"])
    report["passed"] = not report["failures"]
    return report


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]
    return lines


def _view_markdown(title: str, report: dict) -> list[str]:
    d = report["detection"]
    notes = {"position": f"centre within {d['position_tol_px']:.1f} px, over all objects (misses count as wrong)",
             "count": "images with exactly the right number of detections"}
    lines = [f"## {title}", "", "### Accuracy", ""]
    lines += _table(["check", "accuracy", "note"],
                    [[k, f"{report['accuracy'][k]:.2%}", notes.get(k, "argmax over matched objects")]
                     for k in ACCURACY_KEYS])
    err = d["mean_position_error_px"]
    lines += ["", f"Objects {d['n_objects']}, detections {d['n_detections']}, matched {d['matched']} "
              f"(recall {d['recall']:.2%}, precision {d['precision']:.2%}); mean centre error "
              + (f"{err:.2f} px." if err is not None else "n/a."), ""]
    if "by_size" in report:
        lines += ["Per object size (matched objects; recall over all objects of the size):", ""]
        lines += _table(["size", "objects", "recall", *ATTRS],
                        [[z, a["n_objects"], f"{a['recall']:.2%}", *(f"{a[k]:.2%}" for k in ATTRS)]
                         for z, a in report["by_size"].items()])
        lines.append("")
    if "ece" in report:
        lines += ["Expected calibration error of the attribute probabilities (10 bins, matched objects): "
                  + ", ".join(f"{a} {v:.4f}" for a, v in report["ece"].items()) + ".", ""]
    lines += ["### Negative control", ""]
    lines += _table(["category", "prompts", "images", "correct mean", "correct p5", "correct min", "violating mean",
                     "violating max", "pairs ranked right", "one object missing", "relation reversed"],
                    [[cat, c["n_prompts"], c["n_images"], f"{c['correct_mean']:.3f}", f"{c.get('correct_p05', float('nan')):.3f}",
                      f"{c['correct_min']:.3f}", f"{c['negative_mean']:.3f}", f"{c['negative_max']:.3f}",
                      f"{c['pairwise_separation']:.1%}",
                      f"{c['missing_mean']:.3f} (n={c['n_missing']})" if c.get("n_missing") else "–",
                      (f"{c['reversed_relation_mean']:.3f} vs {c['relation_correct_mean']:.3f} (n={c['n_reversed_relation']})"
                       if c.get("n_reversed_relation") else "–")]
                     for cat, c in report["control"].items()])
    skipped = [(cat, p) for cat, c in report["control"].items() for p in c.get("skipped_prompts", [])]
    if skipped:
        lines += ["", "Prompts left out because the renderer could not lay them out:", ""]
        lines += [f"- {cat}: {p}" for cat, p in skipped]
    junk = report.get("junk")
    if junk:
        lines += ["", "### Object-free images", "",
                  f"{junk['n_images']} images, each scored on one prompt of every category ({junk['n_scores']} scores).", ""]
        lines += _table(["kind", "images", "mean score", "max score", "detections per image"],
                        [[k, j["n_images"], f"{j['mean']:.4f}", f"{j['max']:.4f}", f"{j['mean_detections']:.2f}"]
                         for k, j in junk["by_kind"].items()]
                        + [["all", junk["n_images"], f"{junk['mean']:.4f}", f"{junk['max']:.4f}",
                            f"{junk['mean_detections']:.2f}"]])
    return lines + [""]


def format_validation_markdown(report: dict) -> str:
    t = report["thresholds"]
    lines = ["# Evaluator validation", "",
             f"{report['n_scenes']} held-out rendered scenes at {report['resolution']} px (seed {report['seed']}); "
             "a detection matches an object within half a small object's diameter. Every check runs on the renders "
             "and, where a VAE is given, on their VAE reconstructions: every generated image passes through the "
             "decoder.", "",
             "Negative control: each prompt scored on scenes that satisfy it and on scenes that violate what its "
             "category tests (colour, shape, texture, complex: stated attributes moved to the next object; spatial, "
             "non-spatial: relation reversed); on scenes with one of its objects left out; and for complex, on "
             "scenes with every attribute right and the relation reversed (its relation half's credit, against "
             "correct scenes').", "",
             f"Bars, on every view: attribute, position and count accuracy >= {t['min_accuracy']:.0%} overall and per "
             f"object size; per category, correct mean >= {t['min_correct_mean']}, correct 5th percentile >= "
             f"{t['min_correct_p05']}, violating mean <= {t['max_negative_mean']}, one-object-missing mean <= "
             f"{t['max_missing_mean']}, reversed-relation credit <= {t['max_reversed_relation_mean']}; object-free "
             f"images mean <= {t['max_junk_mean']} and max < {t['max_junk']}.", ""]
    if "temperature" in report:
        lines += ["Calibrated softmax temperatures: "
                  + ", ".join(f"{a} {v:.3f}" for a, v in report["temperature"].items()) + ".", ""]
    lines += _view_markdown("Renders", report)
    if "reconstructions" in report:
        lines += _view_markdown("VAE reconstructions", report["reconstructions"])
    lines += ["## Confusion matrices (renders)", "", "Rows: true value; columns: predicted.", ""]
    for a, c in report["confusion"].items():
        lines += [f"**{a}**", ""]
        lines += _table(["true \\ pred"] + c["labels"], [[lab] + row for lab, row in zip(c["labels"], c["matrix"])])
        lines.append("")
    if report["passed"]:
        lines.append("**PASS**: the evaluator may score generated images.")
    else:
        lines.append("**FAIL**: " + "; ".join(report["failures"]))
    return "\n".join(lines) + "\n"
