"""The foundation summary: VAE reconstruction error, model sizes, throughput, stage wall times."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..data.io import read_json

ARCH_CLASS = {"unet": "UNet2DConditionModel", "dit": "PixArtTransformer2DModel", "mmdit": "SD3Transformer2DModel"}


def foundation_summary(text_dir, vae_dir, vae_metrics, base_dirs, benchmarks_dir) -> str:
    rows = []
    for name, cls, d in [("text encoder", "CLIPTextModelWithProjection (trained as CLIPModel)", text_dir),
                         ("vae", "AutoencoderKL", vae_dir)] + \
            [(f"denoiser {Path(b).name}", ARCH_CLASS[Path(b).name], b) for b in base_dirs]:
        s = read_json(Path(d) / "stats.json")
        rows.append({"component": name, "class": cls, "params (M)": round(s["params"] / 1e6, 3),
                     "steps": s["steps"], "samples/s (train)": round(s["samples_per_s"], 1),
                     "train wall (s)": round(s["wall_s"], 1), "final loss": round(s["final_loss"], 5)})
    vm = read_json(vae_metrics)
    out = ["# Foundation: the miniature latent diffusion stack", "",
           "## Components", "", pd.DataFrame(rows).to_markdown(index=False), "",
           "`samples/s (train)` counts training images (or image-caption pairs) per second through the "
           "training loop, forward and backward, on this run's device.", "",
           "## VAE reconstruction (held-out reference split)", "",
           f"{vm['n_images']} images: MSE {vm['mse']:.5f} (pixels in [0, 1]), PSNR {vm['psnr_db']:.2f} dB, "
           f"MAE {vm['mae']:.4f}, 95th-percentile per-image MSE {vm['mse_p95']:.5f}.", ""]
    bench = sorted(Path(benchmarks_dir).glob("*/*.tsv"))
    if bench:
        rows = []
        for p in bench:
            t = pd.read_csv(p, sep="\t").iloc[0]
            rows.append({"job": f"{p.parent.name} {p.stem}" if p.stem != p.parent.name else p.stem,
                         "wall (s)": round(float(t["s"]), 1), "max RSS (MB)": round(float(t["max_rss"]), 0)})
        b = pd.DataFrame(rows)
        out += ["## Wall time per job (Snakemake benchmark files)", "", b.to_markdown(index=False), ""]
    return "\n".join(out)
