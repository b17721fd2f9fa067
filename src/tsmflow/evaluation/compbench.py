"""CompBench-mini scores: an image against its prompt, per category, in [0, 1].

Mirrors how T2I-CompBench scores at scale, with the shapes-world detector in place of
its models:
- colour / shape / texture (BLIP-VQA): the product over the prompt's noun phrases of
  P(phrase present with its stated attributes), where a phrase's probability is the
  best detection's objectness x the product of its stated attributes' probabilities;
- spatial (UniDet): the two phrases found in two distinct detections whose centres
  satisfy the relation on the dominant axis (as `world.spatial_relation`);
- non-spatial: the same, with P(first is large) x P(second is small) for "bigger";
- complex (3-in-1): the mean of the attribute-binding and relation scores.

Phrases are matched with all attributes the prompt states: an object of the wrong
colour is not "the red circle" for the relation check either.
"""
from __future__ import annotations

import math

import numpy as np

from ..data.grammar import CATEGORIES, NON_SPATIAL, SPATIAL, PromptSpec, parse
from ..data.world import Obj, spatial_relation
from .evaluator import detect


BINDINGS = ("product", "mean")


def phrase_probability(want: dict, det: dict, binding: str = "product") -> float:
    """P(this detection is the phrase): objectness x each stated attribute's probability.

    binding "mean" (graded credit, as BLIP-VQA's yes-probability gives for a near miss):
    objectness x the mean of the stated attributes' probabilities, so one wrong
    attribute of two costs half the phrase, not all of it."""
    probs = [det[attr].get(value, 0.0) for attr, value in want.items()]
    if binding == "product":
        return det["objectness"] * math.prod(probs)
    if binding == "mean":
        return det["objectness"] * (sum(probs) / len(probs) if probs else 1.0)
    raise ValueError(f"unknown binding {binding!r}; expected one of {BINDINGS}")


def binding_score(spec: PromptSpec, detections: list[dict], binding: str = "product") -> float:
    if not detections:
        return 0.0
    return math.prod(max(phrase_probability(o, d, binding) for d in detections) for o in spec.objects)


def _relation_holds(word: str, a: dict, b: dict) -> float:
    if word in SPATIAL:
        oa, ob = (Obj("", "", "", "", d["cx"], d["cy"]) for d in (a, b))
        return float(spatial_relation(oa, ob) == word)
    if word == "bigger":
        return a["size"]["large"] * b["size"]["small"]
    if word == "smaller":
        return a["size"]["small"] * b["size"]["large"]
    raise ValueError(f"unknown relation {word!r}")


def relation_score(spec: PromptSpec, detections: list[dict]) -> float:
    """max over ordered pairs of distinct detections of P(a) P(b) P(relation | a, b)."""
    if spec.relation is None:
        raise ValueError(f"prompt {spec.text()!r} states no relation")
    i, j, word = spec.relation
    pa = [phrase_probability(spec.objects[i], d) for d in detections]
    pb = [phrase_probability(spec.objects[j], d) for d in detections]
    best = 0.0
    for x, a in enumerate(detections):
        for y, b in enumerate(detections):
            if x != y and pa[x] * pb[y] > best:
                best = max(best, pa[x] * pb[y] * _relation_holds(word, a, b))
    return best


def score_spec(spec: PromptSpec, detections: list[dict], category: str, binding: str = "product") -> float:
    """`binding` sets how a phrase's attributes combine in the binding score (see
    phrase_probability); relations always need every stated attribute of both phrases."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; expected one of {CATEGORIES}")
    if category in ("color", "shape", "texture"):
        return binding_score(spec, detections, binding)
    if category in ("spatial", "non_spatial"):
        want = SPATIAL if category == "spatial" else NON_SPATIAL
        if spec.relation is None or spec.relation[2] not in want:
            raise ValueError(f"{category} prompt {spec.text()!r} has no {category} relation")
        return relation_score(spec, detections)
    # complex: 3-in-1 averages its scorers; a prompt without a relation has only binding
    b = binding_score(spec, detections, binding)
    if spec.relation is None:
        return b
    return 0.5 * (b + relation_score(spec, detections))


def score_image(prompt: str, detections: list[dict], category: str) -> float:
    """Score one image's detections against its prompt, in [0, 1]."""
    return score_spec(parse(prompt), detections, category)


def score_images(model, images: np.ndarray, prompts: list[str], category: str,
                 batch_size: int = 256, binding: str = "product") -> list[float]:
    """Scores in [0, 1] for uint8 images (N, H, W, 3) and their N prompts."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    specs = [parse(p) for p in prompts]  # fail on a bad prompt before detecting anything
    dets = detect(model, images, batch_size=batch_size)
    return [score_spec(s, d, category, binding) for s, d in zip(specs, dets)]
