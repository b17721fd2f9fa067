"""Caption grammar of the shapes world: scenes -> captions, prompts -> specs -> scenes.

An object phrase is ``a [size] [colour] [texture] <shape>``; a caption is one
phrase, two phrases joined by ``and`` or by a relation, or a list of three.
The same grammar writes pre-training captions (which mention attributes only
partly) and CompBench-mini prompts (which fully state what their category tests).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .world import COLORS, SHAPES, SIZES, TEXTURES, Obj, Scene, place, spatial_relation

ATTRS = ("size", "color", "texture", "shape")  # the order words appear in a phrase
VALUES = {"size": SIZES, "color": tuple(COLORS), "texture": TEXTURES, "shape": SHAPES}
WORD_TO_ATTR = {w: a for a, vs in VALUES.items() for w in vs}
SPATIAL = ("left", "right", "above", "below")
NON_SPATIAL = ("bigger", "smaller")
RELATION_WORDS = {
    "left": "on the left of",
    "right": "on the right of",
    "above": "above",
    "below": "below",
    "bigger": "bigger than",
    "smaller": "smaller than",
}
CATEGORIES = ("color", "shape", "texture", "spatial", "non_spatial", "complex")
# Which attributes a CompBench-mini category states for each object.
CATEGORY_ATTRS = {
    "color": ("color", "shape"),
    "shape": ("size", "shape"),
    "texture": ("texture", "shape"),
    "spatial": ("color", "shape"),
    "non_spatial": ("color", "shape"),
    "complex": ("size", "color", "texture", "shape"),
}


def vocabulary() -> list[str]:
    words = ["a", "and", ","]
    for v in VALUES.values():
        words += list(v)
    for phrase in RELATION_WORDS.values():
        words += [w for w in phrase.split() if w not in words]
    return list(dict.fromkeys(words))


@dataclass
class PromptSpec:
    """What a caption asks for: per-object attributes and an optional relation.

    ``relation`` is (i, j, word): object i is <word> object j.
    """
    objects: list[dict]
    relation: tuple[int, int, str] | None = None
    category: str | None = None
    meta: dict = field(default_factory=dict)

    def text(self) -> str:
        phrases = [phrase(o) for o in self.objects]
        if self.relation is not None:
            i, j, rel = self.relation
            assert (i, j) == (0, 1) and len(phrases) == 2, "relations join exactly two objects"
            return f"{phrases[0]} {RELATION_WORDS[rel]} {phrases[1]}"
        if len(phrases) == 1:
            return phrases[0]
        return " , ".join(phrases[:-1]) + " and " + phrases[-1]


def phrase(attrs: dict) -> str:
    return " ".join(["a"] + [attrs[a] for a in ATTRS if attrs.get(a)])


def parse(prompt: str) -> PromptSpec:
    """Parse a grammar caption back into a spec; raises ValueError naming the bad word."""
    words = prompt.strip().split()
    if not words:
        raise ValueError("empty prompt")
    objects: list[dict] = []
    relation = None
    i = 0
    while i < len(words):
        w = words[i]
        if w == "a":
            objects.append({})
            i += 1
            continue
        if w in WORD_TO_ATTR and objects:
            attr = WORD_TO_ATTR[w]
            if attr in objects[-1]:
                raise ValueError(f"prompt {prompt!r}: attribute {attr} given twice")
            objects[-1][attr] = w
            i += 1
            continue
        if w in (",", "and"):
            i += 1
            continue
        matched = False
        for rel, ph in RELATION_WORDS.items():
            pw = ph.split()
            if words[i:i + len(pw)] == pw:
                relation = (len(objects) - 1, len(objects), rel)
                i += len(pw)
                matched = True
                break
        if not matched:
            raise ValueError(f"prompt {prompt!r}: unexpected word {w!r} at position {i}")
    for o in objects:
        if "shape" not in o:
            raise ValueError(f"prompt {prompt!r}: an object phrase has no shape noun")
    return PromptSpec(objects=objects, relation=relation)


def caption_scene(scene: Scene, rng: np.random.Generator, mention: dict[str, float],
                  p_relation: float) -> PromptSpec:
    """Write a (possibly partial) caption for a rendered scene, pre-training style.

    `mention["object"]` (default 1): the probability that an object after the first is named at all, as web
    captions name what stands out and leave the rest unsaid; a relation needs both objects named."""
    p_object = mention.get("object", 1.0)
    objs = []
    for k, o in enumerate(scene.objects):
        # drawn only when objects may go unnamed, so the default's captions keep their random stream
        if k and p_object < 1 and rng.random() >= p_object:
            continue
        d = {"shape": o.shape}
        for attr in ("size", "color", "texture"):
            if rng.random() < mention[attr]:
                d[attr] = getattr(o, attr)
        objs.append(d)
    relation = None
    if len(objs) == 2 == len(scene.objects) and rng.random() < p_relation:
        a, b = scene.objects
        if a.size != b.size and rng.random() < 0.5:
            relation = (0, 1, "bigger" if a.size == "large" else "smaller")
        else:
            relation = (0, 1, spatial_relation(a, b))
    return PromptSpec(objects=objs, relation=relation)


def _is_rare(attrs: dict, rare_pairs: set[tuple[str, str]]) -> bool:
    return any((attrs.get(a), attrs.get("shape")) in rare_pairs for a in ("size", "color", "texture"))


def asks_rare(spec: PromptSpec, rare_pairs: set[tuple[str, str]]) -> bool:
    """Whether a prompt states a composition that pre-training scenes make rare (CompBench-mini's `p_rare`)."""
    return any(_is_rare(o, rare_pairs) for o in spec.objects)


def sample_object_attrs(rng: np.random.Generator, rare_pairs: set[tuple[str, str]],
                        rare_keep: float) -> dict:
    """Draw an object's attributes; rare compositions are kept with prob `rare_keep`."""
    while True:
        attrs = {a: VALUES[a][rng.integers(len(VALUES[a]))] for a in ATTRS}
        if not _is_rare(attrs, rare_pairs) or rng.random() < rare_keep:
            return attrs


def scene_for_spec(spec: PromptSpec, rng: np.random.Generator, resolution: int,
                   rare_pairs: set[tuple[str, str]] = frozenset(), rare_keep: float = 1.0,
                   max_resample: int = 50) -> Scene:
    """Render-ready scene satisfying `spec`; unstated attributes are drawn at random."""
    for _ in range(max_resample):
        objs = []
        for want in spec.objects:
            free = sample_object_attrs(rng, rare_pairs, rare_keep)
            free.update(want)
            objs.append(free)
        rel = spec.relation
        if rel is not None and rel[2] in NON_SPATIAL:
            big, small = (0, 1) if rel[2] == "bigger" else (1, 0)
            if "size" in spec.objects[big] and spec.objects[big]["size"] != "large":
                raise ValueError(f"spec {spec.text()!r} contradicts its relation")
            objs[big]["size"], objs[small]["size"] = "large", "small"
        placed = place([Obj(**o) for o in objs], resolution, rng,
                       relation=rel if rel is not None and rel[2] in SPATIAL else None)
        if placed is not None:
            return Scene(objects=placed, resolution=resolution, caption=spec.text())
    raise RuntimeError(f"could not lay out {spec.text()!r} at {resolution}px")


def pretrain_scene(rng: np.random.Generator, resolution: int, n_objects_p: list[float],
                   rare_pairs: set[tuple[str, str]], rare_keep: float,
                   mention: dict[str, float], p_relation: float) -> Scene:
    """One pre-training scene with its partial caption."""
    while True:
        n = int(rng.choice(len(n_objects_p), p=n_objects_p)) + 1
        objs = [Obj(**sample_object_attrs(rng, rare_pairs, rare_keep)) for _ in range(n)]
        placed = place(objs, resolution, rng)
        if placed is not None:
            break
    scene = Scene(objects=placed, resolution=resolution)
    scene.caption = caption_scene(scene, rng, mention, p_relation).text()
    return scene


def compbench_prompt(category: str, rng: np.random.Generator,
                     rare_pairs: set[tuple[str, str]], p_rare: float) -> PromptSpec:
    """One CompBench-mini prompt of `category`; with prob `p_rare` it asks for a rare pair."""
    attrs = CATEGORY_ATTRS[category]
    # a category can only ask for a rare pair whose attribute it states
    can_be_rare = any(WORD_TO_ATTR[a] in attrs for a, _ in rare_pairs)
    want_rare = can_be_rare and rng.random() < p_rare
    n = 2
    if category in ("shape", "complex") and rng.random() < 0.5:
        n = 3
    relation = None
    if category == "spatial" or (category == "complex" and n == 2):
        relation = (0, 1, SPATIAL[rng.integers(len(SPATIAL))])
    elif category == "non_spatial":
        relation = (0, 1, NON_SPATIAL[rng.integers(len(NON_SPATIAL))])
    for _ in range(10_000):
        objs = []
        for _ in range(n):
            full = sample_object_attrs(rng, set(), 1.0)
            objs.append({a: full[a] for a in attrs})
        shapes = [o["shape"] for o in objs]
        if len(set(shapes)) < n:
            continue  # distinct nouns keep every phrase individually checkable
        if want_rare and not any(_is_rare(o, rare_pairs) for o in objs):
            continue
        if not want_rare and any(_is_rare(o, rare_pairs) for o in objs) and can_be_rare:
            continue
        return PromptSpec(objects=objs, relation=relation, category=category,
                          meta={"rare": want_rare})
    raise RuntimeError(f"no {category} prompt satisfies the rare-pair constraint")


def compbench_split(category: str, n_train: int, n_val: int, seed: int,
                    rare_pairs: set[tuple[str, str]], p_rare: float) -> tuple[list[str], list[str]]:
    """Disjoint train/val prompt lists for one category, deterministic in `seed`.

    The validation prompts are drawn first, so `n_train` can grow without changing the prompts every table reports.
    """
    rng = np.random.default_rng([seed, CATEGORIES.index(category)])
    seen: dict[str, None] = {}
    misses = 0
    while misses < 2000:  # the prompt space is exhausted once draws stop finding new prompts
        p = compbench_prompt(category, rng, rare_pairs, p_rare).text()
        misses = misses + 1 if p in seen else 0
        seen.setdefault(p)
        if len(seen) == n_train + n_val:
            prompts = list(seen)
            return prompts[n_val:], prompts[:n_val]
    raise ValueError(f"category {category}: only {len(seen)} distinct prompts exist, "
                     f"{n_train + n_val} were asked for")


def parse_rare_pairs(pairs: list[str]) -> set[tuple[str, str]]:
    out = set()
    for p in pairs:
        words = p.split()
        if len(words) != 2 or words[0] not in WORD_TO_ATTR or words[1] not in SHAPES:
            raise ValueError(f"rare pair {p!r} must be '<size|colour|texture> <shape>'")
        out.add((words[0], words[1]))
    return out
