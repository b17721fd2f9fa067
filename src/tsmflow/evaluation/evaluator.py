"""A small fully-convolutional detector for the shapes world.

The image is covered by a grid of cells (stride 2**(len(channels)-1) pixels). A cell
predicts whether an object's centre lies in it, the centre's offset inside the cell,
the object's diameter, and class logits for shape, colour, texture and size. Decoding
keeps confident cells that are 3x3 local maxima: non-overlapping objects keep their
centres > 2 cells apart, so one object never wins two cells.

It is trained on its own renders with uniform attributes (no rare-pair suppression),
so it knows every composition the prompts can ask for.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ..data import grammar as G
from ..data.io import DataError, atomic_dir, load_dataset, write_json
from ..data.world import COLORS, SHAPES, SIZES, TEXTURES, Obj, Scene, place, render
from ..training.loop import TrainConfig, infinite_batches, train
from ..training.text_encoder import to_pixels

# head order; each attribute's values in the renderer's order
ATTRS = ("shape", "color", "texture", "size")
ATTR_VALUES = {"shape": SHAPES, "color": tuple(COLORS), "texture": TEXTURES, "size": SIZES}
N_CLASSES = [len(ATTR_VALUES[a]) for a in ATTRS]
DEFAULT_ARCH = {"channels": [32, 64, 96], "context_dilations": [1, 2], "head_dim": 96}
DEFAULT_N_OBJECTS_P = [0.05, 0.3, 0.35, 0.3]  # P(0, 1, 2, 3 objects): empty scenes teach "nothing here"


class Detector(nn.Module):
    def __init__(self, channels=(32, 64, 96), context_dilations=(1, 2), head_dim=96, resolution=32):
        super().__init__()
        self.config = {"channels": list(channels), "context_dilations": list(context_dilations),
                       "head_dim": head_dim, "resolution": resolution}
        self.stride = 2 ** (len(channels) - 1)
        if resolution % self.stride:
            raise ValueError(f"resolution {resolution} is not a multiple of the detector stride {self.stride}")
        self.resolution = resolution

        def block(cin, cout, stride=1, dilation=1):
            return [nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
                    nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        layers, cin = [], 3
        for i, c in enumerate(channels):
            layers += block(cin, c, stride=1 if i == 0 else 2) + block(c, c)
            cin = c
        self.trunk = nn.Sequential(*layers)
        # dilated convs at the grid's stride widen the receptive field past a large object
        self.context = nn.ModuleList(nn.Sequential(*block(cin, cin, dilation=d)) for d in context_dilations)
        self.hidden = nn.Sequential(nn.Conv2d(cin, head_dim, 1), nn.ReLU(inplace=True))
        # objectness, centre offset (x, y), log diameter, then the class logits
        self.out = nn.Conv2d(head_dim, 4 + sum(N_CLASSES), 1)
        nn.init.constant_(self.out.bias[:1], -4.0)  # start near "no object": most cells are empty

    def _hidden(self, pixels: torch.Tensor) -> torch.Tensor:
        h = self.trunk(pixels)
        for c in self.context:
            h = h + c(h)
        return self.hidden(h)

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """pixels in [-1, 1], (B, 3, H, W) -> per-cell raw outputs on the (H/s, W/s) grid."""
        o = self.out(self._hidden(pixels))
        out = {"objectness": o[:, 0], "offset": o[:, 1:3], "log_diameter": o[:, 3]}
        i = 4
        for a, n in zip(ATTRS, N_CLASSES):
            out[a] = o[:, i:i + n]
            i += n
        return out

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, head_dim) global feature: the penultimate layer, averaged over the grid (FID)."""
        return self._hidden(pixels).mean(dim=(2, 3))


def build_detector(arch: dict | None, resolution: int) -> Detector:
    arch = {**DEFAULT_ARCH, **(arch or {})}
    unknown = set(arch) - set(DEFAULT_ARCH)
    if unknown:
        raise ValueError(f"unknown evaluator arch keys {sorted(unknown)}; expected some of {sorted(DEFAULT_ARCH)}")
    return Detector(arch["channels"], arch["context_dilations"], arch["head_dim"], resolution)


# ---------------------------------------------------------------- training data

def random_scene(rng: np.random.Generator, resolution: int, n_objects_p=DEFAULT_N_OBJECTS_P) -> Scene:
    """A scene of 0..len(p)-1 objects, every attribute uniform (no rare-pair suppression)."""
    while True:
        n = int(rng.choice(len(n_objects_p), p=n_objects_p))
        objs = [Obj(**G.sample_object_attrs(rng, set(), 1.0)) for _ in range(n)]
        placed = place(objs, resolution, rng)
        if placed is not None:
            return Scene(objects=placed, resolution=resolution)


def render_scenes(n: int, seed: int, resolution: int, n_objects_p=DEFAULT_N_OBJECTS_P
                  ) -> tuple[np.ndarray, list[Scene]]:
    """`n` scenes and their uint8 renders; scene i depends only on (seed, i)."""
    scenes = [random_scene(np.random.default_rng([seed, i]), resolution, n_objects_p) for i in range(n)]
    images = np.stack([render(s) for s in scenes]) if scenes else np.zeros((0, resolution, resolution, 3), np.uint8)
    return images, scenes


def make_targets(scenes: list[Scene], resolution: int, stride: int) -> dict[str, torch.Tensor]:
    """Per-cell training targets; class targets are -1 (ignored) in cells without a centre."""
    g = resolution // stride
    n = len(scenes)
    obj = torch.zeros(n, g, g)
    cls = torch.full((n, len(ATTRS), g, g), -1, dtype=torch.long)
    off = torch.zeros(n, 2, g, g)
    logd = torch.zeros(n, g, g)
    for k, s in enumerate(scenes):
        for o in s.objects:
            # clamp: a centre exactly on the far edge still belongs to the last cell
            j = min(int(o.cx // stride), g - 1)
            i = min(int(o.cy // stride), g - 1)
            obj[k, i, j] = 1
            off[k, 0, i, j] = o.cx / stride - j
            off[k, 1, i, j] = o.cy / stride - i
            logd[k, i, j] = float(np.log(o.diameter / resolution))
            for a_i, a in enumerate(ATTRS):
                cls[k, a_i, i, j] = ATTR_VALUES[a].index(getattr(o, a))
    return {"obj": obj, "cls": cls, "offset": off, "log_diameter": logd}


def scenes_from_labels(labels: list[dict]) -> list[Scene]:
    return [Scene.from_json({k: v for k, v in r.items() if k != "file"}) for r in labels]


class DetectorObjective(nn.Module):
    """Objectness BCE (normalised by the number of objects, as CenterNet does, so that
    the many empty cells do not drown the few positive ones) + class CE, offset and
    diameter L1 on the cells that hold a centre. Optional pixel noise keeps the
    detector from relying on the renderer's exact colours (generated images are noisy)."""

    def __init__(self, model: Detector, noise_std: float = 0.0, weights: dict | None = None):
        super().__init__()
        self.model = model
        self.noise_std = noise_std
        self.w = {"obj": 1.0, "cls": 1.0, "offset": 1.0, "diameter": 1.0, **(weights or {})}

    def forward(self, batch: dict) -> torch.Tensor:
        x = batch["pixels"]
        if self.noise_std > 0:
            # per-image noise level in [0, noise_std]: clean images stay in the mix
            x = x + torch.randn_like(x) * torch.rand(len(x), 1, 1, 1, device=x.device) * self.noise_std
        out = self.model(x)
        obj = batch["obj"]
        pos = obj > 0.5
        n_pos = pos.sum().clamp(min=1)
        loss = self.w["obj"] * F.binary_cross_entropy_with_logits(out["objectness"].float(), obj,
                                                                 reduction="sum") / n_pos
        if pos.any():
            for a_i, a in enumerate(ATTRS):
                logits = out[a].float().permute(0, 2, 3, 1)[pos]
                loss = loss + self.w["cls"] * F.cross_entropy(logits, batch["cls"][:, a_i][pos])
            off = torch.sigmoid(out["offset"].float()).permute(0, 2, 3, 1)[pos]
            loss = loss + self.w["offset"] * F.l1_loss(off, batch["offset"].permute(0, 2, 3, 1)[pos])
            loss = loss + self.w["diameter"] * F.l1_loss(out["log_diameter"].float()[pos],
                                                         batch["log_diameter"][pos])
        return loss


def train_evaluator(cfg: dict, resolution: int, out_dir, data_dir=None) -> dict:
    """Train the detector on its own renders (or on a rendered split in `data_dir`) and save
    weights (safetensors), config.json, loss.csv and stats.json into `out_dir` atomically."""
    torch.manual_seed(cfg["train"].get("seed", 0))
    model = build_detector(cfg.get("arch"), resolution)
    if data_dir is not None:
        images, labels = load_dataset(data_dir)
        if images.shape[1] != resolution:
            raise DataError(f"{data_dir}: images are {images.shape[1]} px, the evaluator is configured for {resolution}")
        scenes = scenes_from_labels(labels)
    else:
        d = cfg["data"]
        images, scenes = render_scenes(d["n"], d["seed"], resolution, d.get("n_objects_p", DEFAULT_N_OBJECTS_P))
    tensors = {"pixels": to_pixels(images), **make_targets(scenes, resolution, model.stride)}
    tcfg = TrainConfig.from_dict(cfg["train"])
    objective = DetectorObjective(model, cfg.get("noise_std", 0.0), cfg.get("loss_weights"))
    with atomic_dir(out_dir) as tmp:
        tmp = Path(tmp)
        stats = train(objective, model.parameters(), infinite_batches(tensors, tcfg.batch_size, tcfg.seed),
                      tcfg, tmp / "loss.csv", desc="evaluator (detector)")
        model.eval()
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
                  tmp / "model.safetensors")
        write_json(tmp / "config.json", {**model.config, "threshold": cfg.get("threshold", 0.5)})
        stats.update(params=sum(p.numel() for p in model.parameters()), n_train_images=len(images),
                     n_train_objects=sum(len(s.objects) for s in scenes))
        write_json(tmp / "stats.json", stats)
    return stats


def load_evaluator(path) -> Detector:
    path = Path(path)
    for f in ("config.json", "model.safetensors"):
        if not (path / f).is_file():
            raise DataError(f"{path}: not a trained evaluator ({f} missing)")
    cfg = json.loads((path / "config.json").read_text())
    threshold = cfg.pop("threshold", 0.5)
    model = Detector(**cfg)
    model.load_state_dict(load_file(path / "model.safetensors"))
    model.threshold = threshold
    return model.eval()


# ---------------------------------------------------------------- inference

@torch.no_grad()
def detect(model: Detector, images: np.ndarray, batch_size: int = 256,
           threshold: float | None = None) -> list[list[dict]]:
    """Detections for uint8 (N, H, W, 3) images.

    Each detection: cx, cy, diameter (pixels), objectness, and for each of shape, colour,
    texture and size a {value: probability} dict.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (N, H, W, 3), got shape {images.shape}")
    thr = threshold if threshold is not None else getattr(model, "threshold", 0.5)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    stride = model.stride
    res = images.shape[1]
    out: list[list[dict]] = []
    for s in range(0, len(images), batch_size):
        o = model(to_pixels(np.ascontiguousarray(images[s:s + batch_size])).to(device))
        p = torch.sigmoid(o["objectness"].float())
        peak = (p >= thr) & (p == F.max_pool2d(p[:, None], 3, 1, 1)[:, 0])
        off = torch.sigmoid(o["offset"].float())
        diam = torch.exp(o["log_diameter"].float()) * res
        probs = {a: torch.softmax(o[a].float(), dim=1) for a in ATTRS}
        p, peak, off, diam = p.cpu(), peak.cpu(), off.cpu(), diam.cpu()
        probs = {a: v.cpu() for a, v in probs.items()}
        for b in range(len(p)):
            dets = []
            for i, j in peak[b].nonzero().tolist():
                d = {"cx": float((j + off[b, 0, i, j]) * stride), "cy": float((i + off[b, 1, i, j]) * stride),
                     "diameter": float(diam[b, i, j]), "objectness": float(p[b, i, j])}
                for a in ATTRS:
                    d[a] = {v: float(probs[a][b, k, i, j]) for k, v in enumerate(ATTR_VALUES[a])}
                dets.append(d)
            dets.sort(key=lambda d: -d["objectness"])
            out.append(dets)
    model.train(was_training)
    return out


def argmax_label(det: dict, attr: str) -> str:
    return max(det[attr], key=det[attr].get)
