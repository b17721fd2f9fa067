"""Stages `train_text_encoder` and `train_clip_scorer`: a tiny CLIP trained on rendered (scene, caption) pairs.

The denoisers' text encoder is its text tower. The CLIP scorer (evaluation.clip) is a second one with its own
seed, kept whole (image and text towers), so CLIP scores do not come from the generators' own text encoder.
"""
from __future__ import annotations

from pathlib import Path

from accelerate.utils import set_seed
from transformers import CLIPModel

from ..data.grammar import vocabulary
from ..data.io import load_dataset, write_json
from ..evaluation.clip_score import mini_scorer
from ..models.text import ContrastiveObjective, build_tokenizer, clip_config, export_text_encoder
from .loop import TrainConfig, infinite_batches, resumable_output, to_pixels, train


def _train_clip(data_dir, cfg: dict, out_dir, desc: str, export, check=None) -> dict:
    """Train a CLIP on `data_dir`'s scenes and captions; `export(clip)` is the model saved beside the tokenizer;
    `check(clip, tokenizer)`, if given, adds its dict to stats.json."""
    images, labels = load_dataset(data_dir)
    tokenizer = build_tokenizer(vocabulary(), cfg["max_length"])
    tcfg = TrainConfig.from_dict(cfg["train"])
    set_seed(tcfg.seed)  # the initial weights too: a rerun gives the same model
    clip = CLIPModel(clip_config(tokenizer, cfg["arch"], images.shape[1]))
    batches = infinite_batches({"pixels": to_pixels(images)}, tcfg.batch_size, tcfg.seed,
                               extra={"caption": [r["caption"] for r in labels]})
    with resumable_output(out_dir) as (tmp, ckpt):
        stats = train(ContrastiveObjective(clip, tokenizer), clip.parameters(), batches, tcfg,
                      tmp / "loss.csv", desc=desc, checkpoint=ckpt / "train.safetensors")
        model = export(clip)
        model.save_pretrained(tmp)  # safetensors
        tokenizer.save_pretrained(tmp)
        stats["params"] = sum(p.numel() for p in model.parameters())
        if check is not None:
            stats.update(check(clip, tokenizer))
        write_json(Path(tmp) / "stats.json", stats)
    return stats


def train_text_encoder(data_dir, cfg: dict, out_dir) -> dict:
    return _train_clip(data_dir, cfg, out_dir, "text encoder (CLIP)", export_text_encoder)


def train_clip_scorer(data_dir, cfg: dict, out_dir, heldout_dir) -> dict:
    """The CLIP scorer, checked on held-out renders: its mean score with each scene's own caption against a caption
    of another scene (stats.json `heldout_matched`, `heldout_shuffled`; a scorer that reads the prompt scores the
    first higher)."""
    def check(clip, tokenizer) -> dict:
        images, labels = load_dataset(heldout_dir)
        img, txt = mini_scorer(clip, tokenizer).embed(list(images), [r["caption"] for r in labels])
        return {"heldout_matched": float((img * txt).sum(-1).mean()),
                "heldout_shuffled": float((img * txt.roll(1, dims=0)).sum(-1).mean()), "heldout_n": len(labels)}
    return _train_clip(data_dir, cfg, out_dir, "CLIP scorer", lambda clip: clip, check)
