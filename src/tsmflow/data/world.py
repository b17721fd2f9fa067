"""The shapes world: scene layout and a deterministic, anti-aliased renderer.

A scene is 1-3 non-overlapping objects, each with a shape, colour, texture,
size and position. Everything is a pure function of a seed, so a dataset is
reproduced exactly from its config.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond")
COLORS = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "magenta": (220, 60, 220),
    "cyan": (40, 210, 220),
}
TEXTURES = ("plain", "striped", "checkered")
SIZES = ("small", "large")
BACKGROUND = (16, 16, 20)
# Object diameters as a fraction of the image side: "large" is clearly bigger than
# "small", and two large objects still fit side by side with a gap.
SIZE_FRACTION = {"small": 0.26, "large": 0.42}
SUPERSAMPLE = 4


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    texture: str
    size: str
    # centre in pixels (x to the right, y downwards), and diameter in pixels
    cx: float = 0.0
    cy: float = 0.0
    diameter: float = 0.0

    def bbox(self) -> tuple[float, float, float, float]:
        r = self.diameter / 2
        return (self.cx - r, self.cy - r, self.cx + r, self.cy + r)


@dataclass
class Scene:
    objects: list[Obj]
    resolution: int
    caption: str = ""
    meta: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "caption": self.caption,
            "resolution": self.resolution,
            "objects": [asdict(o) for o in self.objects],
            **self.meta,
        }

    @classmethod
    def from_json(cls, d: dict) -> "Scene":
        objs = [Obj(**o) for o in d["objects"]]
        meta = {k: v for k, v in d.items() if k not in ("caption", "resolution", "objects")}
        return cls(objects=objs, resolution=d["resolution"], caption=d["caption"], meta=meta)


def spatial_relation(a: Obj, b: Obj) -> str:
    """Dominant-axis relation of a to b, as T2I-CompBench's UniDet check does."""
    dx, dy = a.cx - b.cx, a.cy - b.cy
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "above" if dy < 0 else "below"


def overlaps(a: Obj, b: Obj, gap: float = 1.0) -> bool:
    ax0, ay0, ax1, ay1 = a.bbox()
    bx0, by0, bx1, by1 = b.bbox()
    return not (ax1 + gap <= bx0 or bx1 + gap <= ax0 or ay1 + gap <= by0 or by1 + gap <= ay0)


def place(objs: list[Obj], resolution: int, rng: np.random.Generator,
          relation: tuple[int, int, str] | None = None, tries: int = 200) -> list[Obj] | None:
    """Give each object a position so that none overlap (and `relation` holds).

    Returns None if no layout was found in `tries` attempts; callers resample.
    """
    for _ in range(tries):
        placed = []
        for o in objs:
            d = SIZE_FRACTION[o.size] * resolution
            lo, hi = d / 2 + 1, resolution - d / 2 - 1
            p = Obj(o.shape, o.color, o.texture, o.size,
                    float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)), float(d))
            if any(overlaps(p, q) for q in placed):
                break
            placed.append(p)
        else:
            if relation is None:
                return placed
            i, j, rel = relation
            a, b = placed[i], placed[j]
            # demand a clear margin on the dominant axis so the relation is unambiguous
            dx, dy = abs(a.cx - b.cx), abs(a.cy - b.cy)
            if spatial_relation(a, b) == rel and max(dx, dy) > 1.5 * min(dx, dy) + 2:
                return placed
    return None


def _shape_mask(shape: str, x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    if shape == "circle":
        return x**2 + y**2 <= r**2
    if shape == "square":
        s = r * 0.86  # equal area feel next to the circle
        return (np.abs(x) <= s) & (np.abs(y) <= s)
    if shape == "diamond":
        return np.abs(x) + np.abs(y) <= r * 1.1
    if shape == "triangle":
        # upward triangle with its base at y=+r and apex at y=-r
        return (y <= r) & (y >= -r) & (np.abs(x) <= (y + r) / 2)
    raise ValueError(f"unknown shape {shape!r}")


def _texture_mask(texture: str, x: np.ndarray, y: np.ndarray, period: float) -> np.ndarray:
    """True where the object shows its full colour; False where it is darkened."""
    if texture == "plain":
        return np.ones_like(x, dtype=bool)
    if texture == "striped":
        return np.floor(y / (period / 2)) % 2 == 0
    if texture == "checkered":
        return (np.floor(x / (period / 2)) + np.floor(y / (period / 2))) % 2 == 0
    raise ValueError(f"unknown texture {texture!r}")


def render(scene: Scene) -> np.ndarray:
    """Render a scene to a uint8 (H, W, 3) array, anti-aliased by supersampling."""
    res = scene.resolution
    img = np.empty((res * SUPERSAMPLE, res * SUPERSAMPLE, 3), dtype=np.float32)
    img[:] = BACKGROUND
    period = max(4.0, res / 8)  # stripes stay >= 2 output pixels wide
    for o in scene.objects:
        # only the object's bounding window is touched (objects never overlap)
        x0, y0, x1, y1 = (int(np.clip(v * SUPERSAMPLE, 0, res * SUPERSAMPLE)) for v in
                          (o.bbox()[0] - 1, o.bbox()[1] - 1, o.bbox()[2] + 1, o.bbox()[3] + 1))
        ys = (np.arange(y0, y1) + 0.5) / SUPERSAMPLE  # output-pixel units
        xs = (np.arange(x0, x1) + 0.5) / SUPERSAMPLE
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        mask = _shape_mask(o.shape, xx - o.cx, yy - o.cy, o.diameter / 2)
        bright = _texture_mask(o.texture, xx, yy, period)
        col = np.asarray(COLORS[o.color], dtype=np.float32)
        win = img[y0:y1, x0:x1]
        win[mask & bright] = col
        win[mask & ~bright] = col * 0.35
    img = img.reshape(res, SUPERSAMPLE, res, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
