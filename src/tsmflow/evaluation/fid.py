"""FID with clean-fid, using the evaluator's penultimate features instead of Inception's.

clean-fid reads the folder, resizes every image to 299x299 (its "clean" PIL bicubic
resize) and hands float (B, 3, 299, 299) batches in 0..255 to the feature extractor;
ours resizes them back to the evaluator's resolution with an antialiased filter, so
the features are those of (nearly) the images as generated. `native=True` skips the
299 round trip instead (exact features, faster; not clean-fid's standard pipeline).
"""
from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from cleanfid import fid as cfid
from cleanfid.features import build_feature_extractor

from ..data.io import DataError, atomic_path
from .evaluator import Detector


class FeatureExtractor(nn.Module):
    """clean-fid custom extractor: float (B, 3, H, W) in 0..255 -> (B, D) evaluator features.

    patches=True is Patch-FID: each image's four half-size quadrants are upsampled to the
    evaluator's resolution and featurised separately, (B, ...) -> (4B, D), so local detail
    (edges, textures) weighs more than the global layout, as the TSM paper's Patch-FID intends.
    """

    def __init__(self, model: Detector, patches: bool = False):
        super().__init__()
        self.model = model.eval()
        self.resolution = model.resolution
        self.patches = patches

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] == (self.resolution, self.resolution):
            return x
        return F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear",
                             align_corners=False, antialias=True)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._resize(x.float())
        if self.patches:
            h = self.resolution // 2
            x = self._resize(torch.cat([x[..., i:i + h, j:j + h] for i in (0, h) for j in (0, h)]))
        return self.model.features(x.clamp(0, 255) / 127.5 - 1)


def _native(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32)


def _device(device=None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


FEATURE_SPACES = ("shapes", "patch", "inception", "inception_patch")
INCEPTION_SIZE = 299


@functools.cache
def _clean_resizer():
    from cleanfid.resize import make_resizer
    return make_resizer("PIL", False, "bicubic", (INCEPTION_SIZE, INCEPTION_SIZE))


def quadrant_mosaic(img: np.ndarray) -> np.ndarray:
    """clean-fid's resize for Patch-FID on Inception: each of the image's four quadrants to 299 x 299 by clean-fid's
    own "clean" resizer (PIL bicubic on float channels), tiled 2 x 2 into one (598, 598, 3) array."""
    resize = _clean_resizer()
    h, w = img.shape[0] // 2, img.shape[1] // 2
    tiles = [resize(img[i:i + h, j:j + w]) for i in (0, h) for j in (0, w)]
    return np.concatenate([np.concatenate(tiles[:2], axis=1), np.concatenate(tiles[2:], axis=1)], axis=0)


class PatchInception(nn.Module):
    """Inception features of each tile of `quadrant_mosaic`'s output: (B, 3, 598, 598) -> (4B, 2048), quadrant by
    quadrant, as FeatureExtractor(patches=True) orders them."""

    def __init__(self, inception: nn.Module):
        super().__init__()
        self.inception = inception

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = INCEPTION_SIZE
        return self.inception(torch.cat([x[..., i:i + s, j:j + s] for i in (0, s) for j in (0, s)]))


INCEPTION_FILE = "inception-2015-12-05.pt"  # clean-fid's TorchScript Inception-V3, as NVIDIA publishes it
INCEPTION_KEY = "fid.inception_weights"


def inception_extractor(weights, device):
    """clean-fid's Inception-V3 ("clean" mode) from a local copy of its weights, or with `weights` None from
    clean-fid's own cache, which it fills by downloading (a node without internet cannot)."""
    from cleanfid.inception_torchscript import InceptionV3W
    if weights is None:
        try:
            return build_feature_extractor("clean", device, use_dataparallel=False)
        except OSError as e:  # URLError: an offline node
            raise DataError(f"clean-fid could not fetch its Inception weights ({e}); put {INCEPTION_FILE} on "
                            f"shared storage and set config key {INCEPTION_KEY} to it") from e
    path = Path(weights)
    if not path.is_file():
        raise DataError(f"{path}: Inception weights not found (config key {INCEPTION_KEY})")
    with tempfile.TemporaryDirectory() as d:  # clean-fid loads <dir>/<its file name>: point that at ours
        (Path(d) / INCEPTION_FILE).symlink_to(path.resolve())
        model = InceptionV3W(d, download=False, resize_inside=False).to(device).eval()
    return model


def folder_features(model: Detector | None, folder, batch_size: int = 128, num: int | None = None,
                    device=None, native: bool = False, verbose: bool = False,
                    feature_space: str = "shapes", inception_weights=None) -> np.ndarray:
    """(N, D) features of every image under `folder` (recursively), via clean-fid.

    feature_space "shapes": the evaluator's penultimate features (`model` required);
    "patch": the same features of each image's four quadrants (Patch-FID);
    "inception": clean-fid's standard Inception-V3, from `inception_weights` (a local file) or downloaded;
    "inception_patch": Patch-FID on it, each image's four quadrants resized to Inception's 299 by clean-fid.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found")
    if feature_space not in FEATURE_SPACES:
        raise ValueError(f"unknown FID feature space {feature_space!r}; expected one of {FEATURE_SPACES}")
    dev = _device(device)
    if feature_space in ("shapes", "patch"):
        if model is None:
            raise ValueError(f"FID in the {feature_space} feature space needs the evaluator model")
        extractor = FeatureExtractor(model.to(dev), patches=feature_space == "patch").to(dev)
        resize = _native if native else None
    elif feature_space == "inception":
        extractor, resize = inception_extractor(inception_weights, dev), None
    else:
        extractor, resize = PatchInception(inception_extractor(inception_weights, dev)), quadrant_mosaic
    try:
        # num_workers=0: the workflow runs this inside jobs that already own their cores
        return cfid.get_folder_features(str(folder), extractor, num_workers=0, num=num, batch_size=batch_size,
                                        device=dev, mode="clean", custom_fn_resize=resize,
                                        description=f"features {folder.name}: ", verbose=verbose)
    except ValueError as e:  # np.concatenate of no batches
        raise DataError(f"{folder}: no images found ({e})") from e


def folder_stats(model: Detector | None, folder, batch_size: int = 128, num: int | None = None, device=None,
                 native: bool = False, verbose: bool = False, feature_space: str = "shapes",
                 inception_weights=None) -> tuple[np.ndarray, np.ndarray, int]:
    """(mu, sigma, n) of the features of the images under `folder`."""
    feats = folder_features(model, folder, batch_size, num, device, native, verbose,
                            feature_space, inception_weights).astype(np.float64)
    if len(feats) < 2:
        raise DataError(f"{folder}: FID needs at least 2 images, found {len(feats)}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False), len(feats)


def save_stats(path, mu: np.ndarray, sigma: np.ndarray, n: int, feature_space: str = "",
               features: np.ndarray | None = None) -> None:
    """FID statistics; with `features` (the reference's own, N x D) precision and recall can be computed too."""
    extra = {} if features is None else {"features": np.asarray(features, dtype=np.float32)}
    with atomic_path(path) as tmp:
        # a file object: np.savez would append ".npz" to the temp name
        with open(tmp, "wb") as f:
            np.savez(f, mu=mu, sigma=sigma, n=np.int64(n), feature_space=np.str_(feature_space), **extra)


def precision_recall(generated: np.ndarray, reference: np.ndarray, neighborhood: int = 3) -> dict:
    """Improved precision and recall (Kynkaanniemi et al. 2019, as WaDi reports them) from torch-fidelity,
    on any features: k-NN balls around the reference (precision) and the generated samples (recall)."""
    from torch_fidelity.metric_prc import prc_features_to_metric
    for name, f in (("generated", generated), ("reference", reference)):
        if len(f) <= neighborhood:
            raise DataError(f"precision/recall with k={neighborhood} needs more than {neighborhood} {name} "
                            f"samples, got {len(f)}")
    dev = _device()  # FID-30K's 30K x 40K distances: on the GPU where there is one
    out = prc_features_to_metric(torch.from_numpy(np.asarray(generated, np.float32)).to(dev),
                                 torch.from_numpy(np.asarray(reference, np.float32)).to(dev),
                                 prc_neighborhood=neighborhood,
                                 prc_batch_size=10000, save_cpu_ram=False, verbose=False)
    return {"precision": out["precision"], "recall": out["recall"], "prc_neighborhood": neighborhood}


def load_stats(path) -> dict:
    """{"mu", "sigma", "n", "feature_space"} as saved by `save_stats`, and "features" where it saved them."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: FID statistics not found")
    try:
        with np.load(path) as z:
            out = {"mu": z["mu"], "sigma": z["sigma"], "n": int(z["n"]),
                   "feature_space": str(z["feature_space"]) if "feature_space" in z else ""}
            if "features" in z:
                out["features"] = z["features"]
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{path}: not an FID statistics file ({e})") from e
    d = len(out["mu"])
    if out["sigma"].shape != (d, d):
        raise DataError(f"{path}: sigma is {out['sigma'].shape}, expected {(d, d)}")
    return out


def psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """The symmetric square root of a covariance matrix (rounding's tiny negative eigenvalues count as 0)."""
    w, v = np.linalg.eigh(sigma)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def fid_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                   sigma2_sqrt: np.ndarray | None = None) -> float:
    """The Frechet distance of two Gaussians: clean-fid's `frechet_distance`, to rounding (tested), but with
    tr sqrt(S1 S2) summed from the eigenvalues of the symmetric S2^1/2 S1 S2^1/2, which has the same spectrum.
    scipy's `sqrtm` of the product took ~20 s for 2048-wide (Inception) features on one core here, and the
    bootstrap SE takes one FID per resample. `sigma2_sqrt`: `psd_sqrt(sigma2)`, for a reference used many times.

    A unit that never fires (zero variance) makes the product singular; it is still PSD, so this is exact there.
    """
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"feature sizes differ: {mu1.shape} vs {mu2.shape} (different evaluators?)")
    root = psd_sqrt(sigma2) if sigma2_sqrt is None else sigma2_sqrt
    inner = root @ sigma1 @ root
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def bootstrap_fid(feats: np.ndarray, ref_mu: np.ndarray, ref_sigma: np.ndarray, n_boot: int = 200,
                  seed: int = 0, paired: np.ndarray | None = None) -> dict:
    """FID of `feats` against reference stats, with a bootstrap SE over the samples. With `paired`
    (features of a second model's samples, row k from the same caption and seed as row k of
    `feats`), also the SE of FID(paired) - FID(feats) from joint resamples."""
    root = psd_sqrt(ref_sigma)

    def fid(x):
        return fid_from_stats(x.mean(0), np.cov(x, rowvar=False), ref_mu, ref_sigma, root)

    rng = np.random.default_rng(seed)
    a, b, d = [], [], []
    for _ in range(n_boot):
        idx = rng.integers(0, len(feats), len(feats))
        a.append(fid(feats[idx]))
        if paired is not None:
            b.append(fid(paired[idx]))
            d.append(b[-1] - a[-1])
    out = {"fid": fid(feats), "se": float(np.std(a, ddof=1)), "n": int(len(feats)), "n_boot": n_boot}
    if paired is not None:
        out.update(fid_other=fid(paired), se_other=float(np.std(b, ddof=1)), diff=fid(paired) - out["fid"],
                   se_diff=float(np.std(d, ddof=1)))
        out["z"] = out["diff"] / out["se_diff"]
    return out


def folder_fid(model: Detector, folder, ref_stats, **kw) -> float:
    """FID of the images under `folder` against reference stats (a path or a `load_stats` dict)."""
    ref = load_stats(ref_stats) if isinstance(ref_stats, (str, os.PathLike)) else ref_stats
    mu, sigma, _ = folder_stats(model, folder, **kw)
    return fid_from_stats(mu, sigma, ref["mu"], ref["sigma"])


def inception_fid(folder, ref_folder, batch_size: int = 32, device=None) -> float:
    """clean-fid's standard Inception-V3 FID between two folders.

    Downloads Inception weights on first use: never called by tests or by default.
    """
    return float(cfid.compute_fid(str(folder), str(ref_folder), mode="clean", num_workers=0,
                                  batch_size=batch_size, device=_device(device), verbose=False))
