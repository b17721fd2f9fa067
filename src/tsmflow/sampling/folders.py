"""Image folders for evaluation, laid out and named the way T2I-CompBench's generator does.

CompBench images are ``<out>/<category>/samples/<prompt>_<6-digit index>.png``. As in its
generator, the index is one running counter over a category's folder, in prompt-file
order, n images per prompt line: T2I-CompBench's evaluators read it as the image's
question_id, and its 3-in-1 script pairs the complex scores with ``complex_val.txt`` by
position, in blocks of 10 (so use 10 images per prompt for it). A prompt that repeats in
the file gets its own images, with fresh seeds: image i of the k-th occurrence of a prompt
uses seed ``seed + k * n + i`` (``seed + i`` for a prompt that occurs once).
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file
from tqdm.auto import tqdm

from ..data.io import atomic_dir, read_json, read_prompts, resumable_dir, save_png, write_json, write_labels
from ..models.backbone import Backbone
from .sample import decode, generate

log = logging.getLogger(__name__)

SAMPLES = "samples"  # T2I-CompBench's evaluators read <out_dir>/samples/


def image_name(prompt: str, idx: int) -> str:
    if "/" in prompt:
        raise ValueError(f"prompt {prompt!r} contains '/', which cannot be part of a file name")
    return f"{prompt}_{idx:06d}.png"


def compbench_jobs(prompts: list[str], n_per_prompt: int, seed: int) -> list[tuple[str, int, int]]:
    """(prompt, index, seed) of every image of a category, in T2I-CompBench's order and numbering."""
    seen: dict[str, int] = {}
    jobs = []
    for j, p in enumerate(prompts):
        k = seen.get(p, 0)
        seen[p] = k + 1
        jobs += [(p, j * n_per_prompt + i, seed + k * n_per_prompt + i) for i in range(n_per_prompt)]
    return jobs


def compbench_folder(backbone: Backbone, prompt_files: dict[str, str], out_dir, n_per_prompt: int, seed: int,
                     steps: int = 25, guidance_scale: float = 5.0, batch_size: int = 64, model_fn=None,
                     solver: str = "first_order", timesteps: list[int] | None = None, precision: str = "fp32") -> None:
    """Generate `n_per_prompt` images for every line of every category's prompt file."""
    with atomic_dir(out_dir) as tmp:
        for category, path in prompt_files.items():
            jobs = compbench_jobs(read_prompts(path), n_per_prompt, seed)
            images = generate(backbone, [p for p, _, _ in jobs], [s for _, _, s in jobs], steps=steps,
                              guidance_scale=guidance_scale, batch_size=batch_size, model_fn=model_fn,
                              desc=f"sampling {category}", solver=solver, timesteps=timesteps,
                              precision=precision)
            for (p, idx, _), img in zip(jobs, images):
                save_png(Path(tmp) / category / SAMPLES / image_name(p, idx), img)


# beside a caption folder's images, when asked for; not .npy, which clean-fid would read as an image
LATENTS = "latents.safetensors"


def caption_folder(backbone: Backbone, captions: list[str], out_dir, seed: int, steps: int = 25,
                   guidance_scale: float = 5.0, batch_size: int = 64, model_fn=None, resume_key: str | None = None,
                   solver: str = "first_order", timesteps: list[int] | None = None, latents: bool = False,
                   precision: str = "fp32") -> None:
    """One image per caption (e.g. held-out captions for FID), with a labels.jsonl of what was asked; with
    `latents`, also `latents.safetensors`: the final latents the images decode from, in caption order (DMP
    Table 5).

    Batch by batch (the batches `generate` makes), so memory holds one batch, not every image (FID-30K).
    With a `resume_key` (what identifies the model and settings), a killed job's rerun keeps the batches
    it finished; each batch's record is written after its images, so a recorded batch is complete."""
    key = None if resume_key is None else hashlib.sha256(json.dumps(
        {"model": resume_key, "captions": captions, "seed": seed, "steps": steps,
         "guidance_scale": guidance_scale, "batch_size": batch_size, "solver": solver,
         **({"timesteps": timesteps} if timesteps else {}), **({"latents": True} if latents else {}),
         **({"precision": precision} if precision != "fp32" else {})},
        sort_keys=True).encode()).hexdigest()
    with (atomic_dir(out_dir) if key is None else resumable_dir(out_dir, key)) as tmp:
        done_dir = Path(tmp) / ".batches"
        done_dir.mkdir(exist_ok=True)

        def record(start: int) -> Path:  # a batch's records, written once its images are
            return done_dir / f"{start:06d}.json"

        starts = range(0, len(captions), batch_size)
        skipped = sum(record(s).is_file() for s in starts)
        if skipped:
            log.info("resuming %s: %d of %d batches already written", out_dir, skipped, len(starts))
        for start in tqdm(starts, desc="sampling (FID)", mininterval=10.0):
            if record(start).is_file():
                continue
            chunk = captions[start:start + batch_size]
            seeds = [seed + start + k for k in range(len(chunk))]
            images = generate(backbone, chunk, seeds, steps=steps, guidance_scale=guidance_scale,
                              batch_size=batch_size, model_fn=model_fn, progress=False, solver=solver,
                              timesteps=timesteps, latents=latents, precision=precision)
            if latents:  # one sampling pass: keep the latents, decode them here
                np.save(done_dir / f"{start:06d}.npy", images)
                with torch.no_grad():
                    images = decode(backbone, torch.from_numpy(images).to(backbone.device))
            records = []
            for k, (c, img) in enumerate(zip(chunk, images)):
                name = f"{start + k:06d}.png"
                save_png(Path(tmp) / name, img)
                records.append({"file": name, "caption": c, "seed": seeds[k]})
            write_json(record(start), records)
        write_labels(Path(tmp) / "labels.jsonl", [r for s in starts for r in read_json(record(s))])
        if latents:
            save_file({"latents": np.concatenate([np.load(done_dir / f"{s:06d}.npy") for s in starts])},
                      str(Path(tmp) / LATENTS))
        shutil.rmtree(done_dir)
