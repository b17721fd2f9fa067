"""Image folders for evaluation, named the way T2I-CompBench names them.

CompBench images are ``<out>/<category>/<prompt>_<6-digit index>.png``, one
folder per category, so T2I-CompBench's official evaluators can score the same
folders at real scale. Image ``idx`` of every prompt uses seed ``seed + idx``.
"""
from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from ..data.io import atomic_dir, read_prompts, save_png, write_labels
from ..models.backbone import Backbone
from .sample import generate


def image_name(prompt: str, idx: int) -> str:
    if "/" in prompt:
        raise ValueError(f"prompt {prompt!r} contains '/', which cannot be part of a file name")
    return f"{prompt}_{idx:06d}.png"


def compbench_folder(backbone: Backbone, prompt_files: dict[str, str], out_dir, n_per_prompt: int, seed: int,
                     steps: int, guidance_scale: float, batch_size: int = 64, model_fn=None) -> None:
    """Generate `n_per_prompt` images for every prompt of every category's val file."""
    with atomic_dir(out_dir) as tmp:
        for category, path in prompt_files.items():
            prompts = read_prompts(path)
            jobs = [(p, i) for p in prompts for i in range(n_per_prompt)]
            images = generate(backbone, [p for p, _ in jobs], [seed + i for _, i in jobs], steps=steps,
                              guidance_scale=guidance_scale, batch_size=batch_size, model_fn=model_fn,
                              desc=f"sampling {category}")
            for (p, i), img in zip(jobs, images):
                save_png(Path(tmp) / category / image_name(p, i), img)


def caption_folder(backbone: Backbone, captions: list[str], out_dir, seed: int, steps: int,
                   guidance_scale: float, batch_size: int = 64, model_fn=None) -> None:
    """One image per caption (e.g. held-out captions for FID), with a labels.jsonl of what was asked.

    Batch by batch (the batches `generate` makes), so memory holds one batch, not every image (FID-30K)."""
    with atomic_dir(out_dir) as tmp:
        records = []
        for start in tqdm(range(0, len(captions), batch_size), desc="sampling (FID)", mininterval=10.0):
            chunk = captions[start:start + batch_size]
            seeds = [seed + start + k for k in range(len(chunk))]
            images = generate(backbone, chunk, seeds, steps=steps, guidance_scale=guidance_scale,
                              batch_size=batch_size, model_fn=model_fn, progress=False)
            for k, (c, img) in enumerate(zip(chunk, images)):
                name = f"{start + k:06d}.png"
                save_png(Path(tmp) / name, img)
                records.append({"file": name, "caption": c, "seed": seeds[k]})
        write_labels(Path(tmp) / "labels.jsonl", records)
