"""Stage `deme_merge_search`: find DeMe's merge weights on an FID objective, then write the merged model.

Every candidate w gives theta = theta_0 + sum_i w_i tau_i; its objective is the FID
of a small sample set (the paper: FID-5K; here `deme.search.n_samples`) against the
reference statistics. The sample set uses the same captions and the same initial
noise for every candidate, so candidates differ only by their weights. The captions
are the last reference captions, disjoint from the first ones, which the final FID samples.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.io import atomic_dir, save_png, write_json
from ..evaluation.fid import fid_from_stats, folder_stats, load_stats, psd_sqrt
from ..models.backbone import Backbone
from ..sampling.sample import generate
from ..training.finetune import save_denoiser
from .deme import cosine_matrix, load_range_states, merge, pattern_search, task_vectors

class FidObjective:
    """w -> FID of the merged model's images (fixed captions and seeds) against reference stats."""

    def __init__(self, backbone: Backbone, base: dict, taus: list[dict], captions: list[str], seeds: list[int],
                 steps: int, guidance_scale: float, detector, ref_stats: dict, feature_space: str = "shapes",
                 precision: str = "fp32", batch_size: int = 64, inception_weights=None):
        self.bb, self.base, self.taus = backbone, base, taus
        self.captions, self.seeds, self.steps, self.gs = captions, seeds, steps, guidance_scale
        self.detector, self.ref, self.space, self.precision = detector, ref_stats, feature_space, precision
        self.batch_size, self.inception_weights = batch_size, inception_weights
        self.ref_root = psd_sqrt(ref_stats["sigma"])  # once: every evaluation of the search uses it

    def __call__(self, w) -> float:
        self.bb.denoiser.load_state_dict(merge(self.base, self.taus, w))
        images = generate(self.bb, self.captions, self.seeds, steps=self.steps, guidance_scale=self.gs,
                          batch_size=self.batch_size, progress=False, precision=self.precision)
        # through a folder, so the features go through clean-fid's resize exactly as the reference's did
        with tempfile.TemporaryDirectory() as d:
            for k, img in enumerate(images):
                save_png(Path(d) / f"{k:06d}.png", img)
            mu, sigma, _ = folder_stats(self.detector, d, feature_space=self.space,
                                        inception_weights=self.inception_weights)
        return fid_from_stats(mu, sigma, self.ref["mu"], self.ref["sigma"], self.ref_root)


def search_captions(reference_captions: list[str], n: int, n_final: int) -> list[str]:
    """The last n captions: the final FID samples the first n_final, so the search never sees those."""
    if n + n_final > len(reference_captions):
        raise ValueError(f"deme.search.n_samples={n} + evaluation.fid.n_samples={n_final} exceed the "
                         f"{len(reference_captions)} reference captions: the search must not see the final "
                         "FID's captions")
    return reference_captions[-n:]


def merge_search(backbone: Backbone, range_dirs, search: dict, guidance_scale: float, reference_captions,
                 n_final: int, detector, ref_stats_path, out_dir, feature_space: str = "shapes",
                 precision: str = "fp32", batch_size: int = 64, inception_weights=None) -> dict:
    """Search the weights, then save the merged denoiser, the search log and the task vectors' cosines.

    `n_final` is the final FID's sample count (evaluation.fid.n_samples), whose captions the search avoids.
    `detector` gives the shapes/patch features (None for Inception's, from `inception_weights` or clean-fid)."""
    # on the CPU, beside the range models' weights: the task vectors (float64) of a paper model would crowd its GPU
    base = {k: v.detach().cpu().clone() for k, v in backbone.denoiser.state_dict().items()}
    taus = task_vectors(base, load_range_states(range_dirs))
    n = len(taus)
    captions = search_captions(list(reference_captions), search["n_samples"], n_final)
    objective = FidObjective(backbone, base, taus, captions, [search["seed"] + k for k in range(len(captions))],
                             search["steps"], guidance_scale, detector, load_stats(ref_stats_path), feature_space,
                             precision, batch_size, inception_weights)
    with atomic_dir(out_dir) as tmp:
        t0 = time.perf_counter()
        result = pattern_search(objective, n, search["lo"], search["hi"], search["step"], search["min_step"],
                                search["init"], tmp / "search.csv", max_evals=search.get("max_evals"))
        backbone.denoiser.load_state_dict(merge(base, taus, result.best_weights))
        save_denoiser(backbone, tmp)
        cos = cosine_matrix(taus)
        pd.DataFrame(cos, index=[f"range{i}" for i in range(n)],
                     columns=[f"range{i}" for i in range(n)]).to_csv(tmp / "cosine.csv")
        stats = {"weights": list(map(float, result.best_weights)), "objective": float(result.best_objective),
                 "n_evals": result.n_evals, "search_s": time.perf_counter() - t0, "search": search,
                 "objective_name": f"FID ({feature_space} features, {len(captions)} samples, "
                                   f"{search['steps']} sampler steps)",
                 "mean_offdiag_cosine": float(np.mean(cos[~np.eye(n, dtype=bool)])) if n > 1 else None}
        write_json(tmp / "weights.json", stats)
    return stats
