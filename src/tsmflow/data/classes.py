"""The class-conditional miniature (DMP Tables 8 and 9): the shapes world's analogue of ImageNet.

An image holds one object; its class is its colour and shape ("red circle"), 24 classes. Size and texture
vary within a class, as poses and backgrounds do within an ImageNet class. A class is written as the caption
the grammar gives that object ("a red circle"), so a class-conditional run samples from captions exactly as a
text-to-image run does; the class-conditional backbone's "prompt encoder" maps a caption to its class index,
and the empty caption to the null class that classifier-free guidance uses (index `len(CLASSES)`).
"""
from __future__ import annotations

from .grammar import parse, phrase
from .world import COLORS, SHAPES

CLASS_ARCHS = ("cdit",)  # backbones conditioned on a class instead of text
CLASSES = tuple(f"{c} {s}" for c in COLORS for s in SHAPES)
INDEX = {name: i for i, name in enumerate(CLASSES)}
NULL = len(CLASSES)

# what a classes split's rendering keeps of the text-to-image world: one object, its caption naming exactly the
# class (colour and shape), every colour-shape pair equally likely
WORLD = {"n_objects_p": [1.0], "mention": {"size": 0.0, "color": 1.0, "texture": 0.0}, "p_relation": 0.0,
         "rare_pairs": [], "rare_keep": 1.0}


def class_caption(name: str) -> str:
    color, shape = name.split()
    return phrase({"color": color, "shape": shape})


def class_index(caption: str) -> int:
    """The class of a caption: NULL for "", else the colour and shape of its one object (ValueError otherwise)."""
    if not caption.strip():
        return NULL
    spec = parse(caption)
    if len(spec.objects) != 1 or spec.relation is not None:
        raise ValueError(f"class caption {caption!r}: a class names one object")
    o = spec.objects[0]
    extra = sorted(set(o) - {"color", "shape"})
    if "color" not in o or extra:
        raise ValueError(f"class caption {caption!r}: a class is a colour and a shape "
                         f"({'no colour' if 'color' not in o else 'also ' + ', '.join(extra)})")
    return INDEX[f"{o['color']} {o['shape']}"]
