"""A small fully-convolutional detector for the shapes world.

A CNN maps the image to a grid of cells (stride 2**(len(channels)-1) px, 4 by default).
Each cell predicts
- `centre`: an object's centre lies in this cell (used only to pick one peak per object),
- `objectness`: an object's centre lies within one cell of here (its probability),
- the centre's offset from the cell, the object's log diameter, and class logits for
  shape, colour, texture and size.
Decoding keeps cells whose centre logit is a 3x3 local maximum and whose objectness
passes the threshold; non-overlapping objects keep their centres > 2 cells apart.

It is trained on its own renders with uniform attributes (no rare-pair suppression),
so it knows every composition the prompts can ask for. Resolution comes from the data.
"""
from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from accelerate.utils import set_seed
from safetensors.torch import load_file, save_file

from ..data import grammar as G
from ..data.io import DataError, load_dataset, write_json
from ..data.world import BACKGROUND, COLORS, SHAPES, SIZE_FRACTION, SIZES, TEXTURES, Obj, Scene, place, render
from ..training.loop import TrainConfig, infinite_batches, make_accelerator, resumable_output, to_pixels, train

# head order; each attribute's values in the renderer's order
ATTRS = ("shape", "color", "texture", "size")
ATTR_VALUES = {"shape": SHAPES, "color": tuple(COLORS), "texture": TEXTURES, "size": SIZES}
N_CLASSES = [len(ATTR_VALUES[a]) for a in ATTRS]
DEFAULT_ARCH = {"channels": [32, 64, 96], "context_dilations": [1, 2], "head_dim": 96}
CONFIG_KEYS = {"data", "arch", "augment", "lr_drop", "loss_weights", "threshold", "calibration", "train",
               "validation", "thresholds"}
DEFAULT_N_OBJECTS_P = [0.05, 0.3, 0.35, 0.3]  # P(0, 1, 2, 3 objects): empty scenes teach "nothing here"


class Detector(nn.Module):
    """Conv trunk (one stride-2 stage per extra channel entry) + dilated residual context
    blocks at the grid stride + a 1x1 hidden layer (the FID features) + a 1x1 output layer."""

    def __init__(self, channels=(32, 64, 96), context_dilations=(1, 2), head_dim=96, resolution=32,
                 threshold=0.5):
        super().__init__()
        self.config = {"channels": list(channels), "context_dilations": list(context_dilations),
                       "head_dim": head_dim, "resolution": resolution, "threshold": threshold}
        self.threshold = threshold
        # per-attribute softmax temperatures, fitted after training (see `calibrate`)
        self.register_buffer("temperature", torch.ones(len(ATTRS)))
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
        # objectness, centre, centre offset (x, y), log diameter, then the class logits
        self.out = nn.Conv2d(head_dim, 5 + sum(N_CLASSES), 1)
        nn.init.constant_(self.out.bias[:2], -4.0)  # start near "no object": most cells are empty

    def _hidden(self, pixels: torch.Tensor) -> torch.Tensor:
        h = self.trunk(pixels)
        for c in self.context:
            h = h + c(h)
        return self.hidden(h)

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """pixels in [-1, 1], (B, 3, H, W) -> per-cell raw outputs on the (H/s, W/s) grid."""
        o = self.out(self._hidden(pixels))
        out = {"objectness": o[:, 0], "centre": o[:, 1], "offset": o[:, 2:4], "log_diameter": o[:, 4]}
        i = 5
        for a, n in zip(ATTRS, N_CLASSES):
            out[a] = o[:, i:i + n]
            i += n
        return out

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, head_dim) global feature: the penultimate layer, averaged over the grid (FID)."""
        return self._hidden(pixels).mean(dim=(2, 3))


def build_detector(arch: dict | None, resolution: int, threshold: float = 0.5) -> Detector:
    arch = {**DEFAULT_ARCH, **(arch or {})}
    unknown = set(arch) - set(DEFAULT_ARCH)
    if unknown:
        raise ValueError(f"unknown evaluator arch keys {sorted(unknown)}; expected some of {sorted(DEFAULT_ARCH)}")
    return Detector(arch["channels"], arch["context_dilations"], arch["head_dim"], resolution, threshold)


# ---------------------------------------------------------------- training data

def random_scene(rng: np.random.Generator, resolution: int, n_objects_p=DEFAULT_N_OBJECTS_P) -> Scene:
    """A scene of 0..len(p)-1 objects, every attribute uniform (no rare-pair suppression)."""
    while True:
        n = int(rng.choice(len(n_objects_p), p=n_objects_p))
        objs = [Obj(**G.sample_object_attrs(rng, set(), 1.0)) for _ in range(n)]
        placed = place(objs, resolution, rng)
        if placed is not None:
            return Scene(objects=placed, resolution=resolution)


def render_scenes(n: int, seed: int, resolution: int, n_objects_p=DEFAULT_N_OBJECTS_P, stream: int = 0
                  ) -> tuple[np.ndarray, list[Scene]]:
    """`n` scenes and their uint8 renders; scene i depends only on (seed, stream, i)."""
    key = (lambda i: [seed, i]) if stream == 0 else (lambda i: [seed, i, stream])
    scenes = [random_scene(np.random.default_rng(key(i)), resolution, n_objects_p) for i in range(n)]
    images = np.stack([render(s) for s in scenes]) if scenes else np.zeros((0, resolution, resolution, 3), np.uint8)
    return images, scenes


JUNK_KINDS = ("noise", "blank", "solid", "gauss")  # object-free images the detector must find empty


def junk_images(n: int, seed: int, resolution: int, kinds=JUNK_KINDS) -> tuple[np.ndarray, list[str]]:
    """`n` object-free uint8 images, kinds in turn; image i depends only on (seed, i).

    noise: uniform per-pixel noise; blank: the renderer's background; solid: one random
    colour; gauss: the background plus Gaussian noise of a random std (up to 0.3)."""
    out, names = np.zeros((n, resolution, resolution, 3), np.uint8), []
    for i in range(n):
        rng = np.random.default_rng([seed, i, 7])
        kind = kinds[i % len(kinds)]
        if kind == "noise":
            out[i] = rng.integers(0, 256, (resolution, resolution, 3))
        elif kind == "blank":
            out[i] = BACKGROUND
        elif kind == "solid":
            out[i] = rng.integers(0, 256, 3)
        elif kind == "gauss":
            x = np.asarray(BACKGROUND, np.float64) + rng.normal(0, 255 * rng.uniform(0.05, 0.3),
                                                                (resolution, resolution, 3))
            out[i] = np.clip(np.rint(x), 0, 255)
        else:
            raise ValueError(f"unknown junk kind {kind!r}; expected one of {JUNK_KINDS}")
        names.append(kind)
    return out, names


def make_targets(scenes: list[Scene], resolution: int, stride: int) -> dict[str, torch.Tensor]:
    """Per-cell training targets.

    `centre` is 1 only in the cell holding an object's centre; it picks the peak.
    Everything else is taught in the 3x3 cells around that cell (`near` = 1 there):
    objectness ("an object's centre is within a cell of here"), classes, the centre
    offset and the diameter. When a centre sits on a cell border either cell may win
    the peak, and both then know the object with certainty, so objectness stays a
    calibrated probability instead of being split between cells.
    """
    g = resolution // stride
    n = len(scenes)
    centre = torch.zeros(n, g, g)
    near = torch.zeros(n, g, g)
    cls = torch.full((n, len(ATTRS), g, g), -1, dtype=torch.long)
    off = torch.zeros(n, 2, g, g)
    logd = torch.zeros(n, g, g)
    for k, s in enumerate(scenes):
        for o in s.objects:
            # clamp: a centre exactly on the far edge still belongs to the last cell
            j = min(int(o.cx // stride), g - 1)
            i = min(int(o.cy // stride), g - 1)
            centre[k, i, j] = 1
            labels = torch.tensor([ATTR_VALUES[a].index(getattr(o, a)) for a in ATTRS])
            for ii in range(max(0, i - 1), min(g, i + 2)):
                for jj in range(max(0, j - 1), min(g, j + 2)):
                    near[k, ii, jj] = 1
                    cls[k, :, ii, jj] = labels
                    off[k, 0, ii, jj] = o.cx / stride - jj  # in cells, from this cell's corner
                    off[k, 1, ii, jj] = o.cy / stride - ii
                    logd[k, ii, jj] = float(np.log(o.diameter / resolution))
    return {"centre": centre, "near": near, "cls": cls, "offset": off, "log_diameter": logd}


def scenes_from_labels(labels: list[dict]) -> list[Scene]:
    return [Scene.from_json({k: v for k, v in r.items() if k != "file"}) for r in labels]


def random_blur(x: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """Gaussian blur with a per-image sigma drawn from [0, max_sigma] pixels."""
    b, c, h, w = x.shape
    r = max(1, int(np.ceil(2 * max_sigma)))
    sigma = (torch.rand(b, device=x.device) * max_sigma).clamp(min=1e-3)
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-t[None] ** 2 / (2 * sigma[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # one kernel per (image, channel)
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="replicate"), k[:, None, None, :], groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


def augment_images(images: np.ndarray, noise_std: float, blur_sigma: float, seed: int) -> np.ndarray:
    """uint8 images with the training augmentation applied once, reproducibly (calibration views)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        x = to_pixels(images)
        if blur_sigma > 0:
            x = random_blur(x, blur_sigma)
        if noise_std > 0:
            x = x + torch.randn_like(x) * torch.rand(len(x), 1, 1, 1) * noise_std  # as in training
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


class DetectorObjective(nn.Module):
    """BCE for objectness and centre, normalised by the number of objects (as CenterNet
    does, so the many empty cells do not drown the few positive ones), plus class CE and
    offset / log-diameter L1 on the cells near a centre.

    Optional mild blur and pixel noise keep the detector from relying on the renderer's
    exact pixels: generated images come through a VAE and a sampler, slightly soft and noisy.
    """

    def __init__(self, model: Detector, noise_std: float = 0.0, blur_sigma: float = 0.0,
                 weights: dict | None = None):
        super().__init__()
        self.model = model
        self.noise_std = noise_std
        self.blur_sigma = blur_sigma
        self.w = {"objectness": 1.0, "centre": 1.0, "cls": 1.0, "offset": 4.0, "diameter": 1.0,
                  **(weights or {})}

    def forward(self, batch: dict) -> torch.Tensor:
        x = batch["pixels"]
        if self.blur_sigma > 0:
            x = random_blur(x, self.blur_sigma)
        if self.noise_std > 0:
            # per-image noise level in [0, noise_std]: clean images stay in the mix
            x = x + torch.randn_like(x) * torch.rand(len(x), 1, 1, 1, device=x.device) * self.noise_std
        out = self.model(x)
        bce = F.binary_cross_entropy_with_logits
        # each map's sum over cells per positive cell: ~9 "near" cells per object vs one centre
        loss = (self.w["objectness"] * bce(out["objectness"].float(), batch["near"], reduction="sum")
                / batch["near"].sum().clamp(min=1)
                + self.w["centre"] * bce(out["centre"].float(), batch["centre"], reduction="sum")
                / batch["centre"].sum().clamp(min=1))
        near = batch["near"] > 0.5
        if near.any():
            for a_i, a in enumerate(ATTRS):
                logits = out[a].float().permute(0, 2, 3, 1)[near]
                loss = loss + self.w["cls"] * F.cross_entropy(logits, batch["cls"][:, a_i][near])
            off = out["offset"].float().permute(0, 2, 3, 1)[near]
            loss = loss + self.w["offset"] * F.l1_loss(off, batch["offset"].permute(0, 2, 3, 1)[near])
            loss = loss + self.w["diameter"] * F.l1_loss(out["log_diameter"].float()[near],
                                                         batch["log_diameter"][near])
        return loss


def train_evaluator(cfg: dict, resolution: int, out_dir, data_dir=None, vae_dir=None) -> dict:
    """Train the detector on its own renders (or on a rendered split in `data_dir`) and save
    weights (safetensors), config.json, loss.csv and stats.json into `out_dir` atomically.

    Every generated image passes through the VAE decoder, so with `vae_dir` and
    `data.reconstructions` the training set also holds each render's VAE reconstruction
    (same labels), and calibration fits on renders, reconstructions and augmented
    reconstructions. `data.junk_p` adds that share of object-free images (noise, blank,
    one colour, background noise), reconstructed as well."""
    unknown = set(cfg) - CONFIG_KEYS
    if unknown:
        raise ValueError(f"unknown evaluator keys {sorted(unknown)}; expected some of {sorted(CONFIG_KEYS)}")
    torch.manual_seed(cfg["train"].get("seed", 0))
    set_seed(cfg["train"].get("seed", 0))  # the initial weights too: a rerun gives the same evaluator
    model = build_detector(cfg.get("arch"), resolution, cfg.get("threshold", 0.5))
    if data_dir is not None:
        images, labels = load_dataset(data_dir)
        if images.shape[1] != resolution:
            raise DataError(f"{data_dir}: images are {images.shape[1]} px, the evaluator is configured for {resolution}")
        scenes = scenes_from_labels(labels)
    else:
        d = cfg["data"]
        images, scenes = render_scenes(d["n"], d["seed"], resolution, d.get("n_objects_p", DEFAULT_N_OBJECTS_P))
    d = cfg.get("data", {})
    n_junk = round(len(images) * d.get("junk_p", 0.0))
    if n_junk:
        junk, _ = junk_images(n_junk, d.get("seed", 0), resolution)
        images = np.concatenate([images, junk])
        scenes = scenes + [Scene(objects=[], resolution=resolution) for _ in range(n_junk)]
    recon = _reconstructor(d, vae_dir)
    if recon is not None:
        # junk too: the decoder turns uniform noise into blobs the detector must not read as objects
        images, scenes = np.concatenate([images, recon(images)]), scenes + scenes
    tensors = {"pixels": to_pixels(images), **make_targets(scenes, resolution, model.stride)}
    tcfg = TrainConfig.from_dict(cfg["train"])
    aug = cfg.get("augment", {})
    objective = DetectorObjective(model, aug.get("noise_std", 0.0), aug.get("blur_sigma", 0.0),
                                  cfg.get("loss_weights"))
    batches = infinite_batches(tensors, tcfg.batch_size, tcfg.seed)
    # the shared loop has no decay schedule: a second, short phase at a lower rate
    # settles the weights (it gains ~0.5-1 point of shape accuracy for the same steps)
    drop = cfg.get("lr_drop", {"at": 1.0, "factor": 1.0})
    n1 = max(1, min(tcfg.steps, round(tcfg.steps * drop["at"])))
    phases = [replace(tcfg, steps=n1)]
    if n1 < tcfg.steps:
        phases.append(replace(tcfg, steps=tcfg.steps - n1, lr=tcfg.lr * drop["factor"], warmup_steps=0,
                              seed=tcfg.seed + 1))
    acc = make_accelerator(tcfg)
    with resumable_output(out_dir) as (tmp, ckpt):
        runs = []
        for k, pcfg in enumerate(phases):
            runs.append(train(objective, model.parameters(), batches, pcfg, tmp / f"loss_phase{k}.csv",
                              desc=f"evaluator (detector) phase {k + 1}/{len(phases)}", accelerator=acc,
                              checkpoint=ckpt / f"phase{k}.safetensors"))
        _merge_curves([tmp / f"loss_phase{k}.csv" for k in range(len(phases))], tmp / "loss.csv")
        stats = {"steps": tcfg.steps, "samples_seen": sum(r["samples_seen"] for r in runs),
                 "wall_s": sum(r["wall_s"] for r in runs), "final_loss": runs[-1]["final_loss"],
                 "trainable_params": runs[0]["trainable_params"]}
        stats["samples_per_s"] = stats["samples_seen"] / stats["wall_s"]
        model.eval()
        cal = cfg.get("calibration", {})
        if cal.get("n", 0) > 0:
            # scenes from another stream of the training seed: held out from training, and
            # never the validation scenes (those need a different seed)
            c_images, c_scenes = render_scenes(cal["n"], d.get("seed", 0), resolution,
                                               d.get("n_objects_p", DEFAULT_N_OBJECTS_P), stream=1)
            if recon is not None:
                # decoder output, and decoder output as soft and noisy as the augmentation allows:
                # generated images are softer than reconstructions, and those views are not separable
                r = recon(c_images)
                soft = augment_images(r, aug.get("noise_std", 0.0), aug.get("blur_sigma", 0.0), d.get("seed", 0))
                c_images, c_scenes = np.concatenate([c_images, r, soft]), c_scenes * 3
            stats["temperature"] = calibrate(model, c_images, c_scenes, cal.get("min_temperature", 0.5))
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
                  tmp / "model.safetensors")
        write_json(tmp / "config.json", model.config)
        stats.update(params=sum(p.numel() for p in model.parameters()), n_train_images=len(images),
                     n_train_objects=sum(len(s.objects) for s in scenes), n_junk_images=n_junk,
                     reconstructions=recon is not None)
        write_json(tmp / "stats.json", stats)
    return stats


def _reconstructor(data_cfg: dict, vae_dir):
    """images -> their VAE reconstructions, when the config asks to train on them."""
    if not data_cfg.get("reconstructions", False):
        return None
    if vae_dir is None:
        raise ValueError("evaluator key data.reconstructions is true, but no VAE was given to train on its output")
    from ..training.vae import load_vae, reconstruct  # diffusers: only for training, not for scoring jobs
    vae = load_vae(vae_dir)
    return lambda images: reconstruct(vae, images)


@torch.no_grad()
def calibrate(model: Detector, images: np.ndarray, scenes: list[Scene], min_temperature: float = 0.5,
              batch_size: int = 256) -> dict:
    """Fit each attribute's softmax temperature by likelihood on held-out renders.

    A short training run leaves the detector underconfident (mean P(true shape) ~0.95
    at ~99.6% accuracy), and a score multiplies up to 15 probabilities, so a correct
    scene would score ~0.8. Renders are (nearly) separable, so likelihood alone would
    sharpen without bound into a hard classifier; `min_temperature` caps the sharpening
    so that ambiguous generated objects keep graded probabilities. On decoder output (as
    train_evaluator passes it) shape and texture find an interior optimum; colour and
    size stay separable on every view and sit at the cap.
    """
    model.eval()
    targets = make_targets(scenes, images.shape[1], model.stride)
    at = targets["centre"] > 0.5
    logits = {a: [] for a in ATTRS}
    for s in range(0, len(images), batch_size):
        o = model(to_pixels(images[s:s + batch_size]).to(model.temperature.device))
        for a in ATTRS:
            logits[a].append(o[a].float().permute(0, 2, 3, 1)[at[s:s + batch_size]].cpu())
    grid = torch.exp(torch.linspace(np.log(min_temperature), np.log(max(3.0, min_temperature)), 100))
    fitted = {}
    for k, a in enumerate(ATTRS):
        z = torch.cat(logits[a])
        y = targets["cls"][:, k][at]
        if len(y) == 0:
            continue
        nll = torch.stack([F.cross_entropy(z / t, y) for t in grid])
        fitted[a] = float(grid[nll.argmin()])
        model.temperature[k] = fitted[a]
    return fitted


def _merge_curves(parts: list[Path], out: Path) -> None:
    """One loss curve with steps and elapsed time continuing across phases."""
    frames, step0, t0 = [], 0, 0.0
    for p in parts:
        with open(p, newline="") as f:
            rows = list(csv.DictReader(f))
        for r in rows:
            r["step"] = int(r["step"]) + step0
            r["elapsed_s"] = float(r["elapsed_s"]) + t0
        if rows:
            step0, t0 = rows[-1]["step"], rows[-1]["elapsed_s"]
        frames += rows
        p.unlink()
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["step", "loss", "lr", "samples_per_s", "elapsed_s"])
        w.writeheader()
        w.writerows(frames)


def load_evaluator(path) -> Detector:
    path = Path(path)
    for f in ("config.json", "model.safetensors"):
        if not (path / f).is_file():
            raise DataError(f"{path}: not a trained evaluator ({f} missing)")
    model = Detector(**json.loads((path / "config.json").read_text()))
    model.load_state_dict(load_file(path / "model.safetensors"))
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
    if images.shape[1:3] != (model.resolution, model.resolution):
        # sizes are fractions of the image side: another resolution would misread them
        raise ValueError(f"images are {images.shape[2]}x{images.shape[1]}, the evaluator was trained at "
                         f"{model.resolution}x{model.resolution}")
    thr = threshold if threshold is not None else getattr(model, "threshold", 0.5)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    stride = model.stride
    res = images.shape[1]
    # half the closest centre distance two non-overlapping small objects can have
    min_dist = 0.5 * SIZE_FRACTION["small"] * res
    out: list[list[dict]] = []
    for s in range(0, len(images), batch_size):
        o = model(to_pixels(np.ascontiguousarray(images[s:s + batch_size])).to(device))
        p = torch.sigmoid(o["objectness"].float())
        c = o["centre"].float()
        peak = (p >= thr) & (c == F.max_pool2d(c[:, None], 3, 1, 1)[:, 0])
        off = o["offset"].float()
        diam = torch.exp(o["log_diameter"].float()) * res
        probs = {a: torch.softmax(o[a].float() / model.temperature[k], dim=1) for k, a in enumerate(ATTRS)}
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
            out.append(_suppress_duplicates(dets, min_dist))
    model.train(was_training)
    return out


def _suppress_duplicates(dets: list[dict], min_dist: float) -> list[dict]:
    """Drop a detection whose centre is within `min_dist` of a stronger one (tied peaks)."""
    kept: list[dict] = []
    for d in dets:
        if all((d["cx"] - k["cx"]) ** 2 + (d["cy"] - k["cy"]) ** 2 >= min_dist ** 2 for k in kept):
            kept.append(d)
    return kept


def argmax_label(det: dict, attr: str) -> str:
    return max(det[attr], key=det[attr].get)
