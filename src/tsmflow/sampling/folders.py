"""Image folders for evaluation, named the way T2I-CompBench names them.

CompBench images are ``<out>/<category>/<prompt>_<6-digit index>.png``, one
folder per category, so T2I-CompBench's official evaluators can score the same
folders at real scale. Image ``idx`` of every prompt uses seed ``seed + idx``.
"""
from __future__ import annotations

from pathlib import Path

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
    """One image per caption (e.g. held-out captions for FID), with a labels.jsonl of what was asked."""
    images = generate(backbone, captions, [seed + i for i in range(len(captions))], steps=steps,
                      guidance_scale=guidance_scale, batch_size=batch_size, model_fn=model_fn, desc="sampling (FID)")
    with atomic_dir(out_dir) as tmp:
        records = []
        for i, (c, img) in enumerate(zip(captions, images)):
            name = f"{i:06d}.png"
            save_png(Path(tmp) / name, img)
            records.append({"file": name, "caption": c, "seed": seed + i})
        write_labels(Path(tmp) / "labels.jsonl", records)
