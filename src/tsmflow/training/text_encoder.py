"""Stage `train_text_encoder`: a tiny CLIP trained on rendered (scene, caption) pairs."""
from __future__ import annotations

from pathlib import Path

from accelerate.utils import set_seed
from transformers import CLIPModel

from ..data.grammar import vocabulary
from ..data.io import load_dataset, write_json
from ..models.text import ContrastiveObjective, build_tokenizer, clip_config, export_text_encoder
from .loop import TrainConfig, infinite_batches, resumable_output, to_pixels, train


def train_text_encoder(data_dir, cfg: dict, out_dir) -> dict:
    images, labels = load_dataset(data_dir)
    tokenizer = build_tokenizer(vocabulary(), cfg["max_length"])
    tcfg = TrainConfig.from_dict(cfg["train"])
    set_seed(tcfg.seed)  # the initial weights too: a rerun gives the same model
    clip = CLIPModel(clip_config(tokenizer, cfg["arch"], images.shape[1]))
    batches = infinite_batches({"pixels": to_pixels(images)}, tcfg.batch_size, tcfg.seed,
                               extra={"caption": [r["caption"] for r in labels]})
    with resumable_output(out_dir) as (tmp, ckpt):
        stats = train(ContrastiveObjective(clip, tokenizer), clip.parameters(), batches, tcfg,
                      tmp / "loss.csv", desc="text encoder (CLIP)", checkpoint=ckpt / "train.safetensors")
        text = export_text_encoder(clip)
        text.save_pretrained(tmp)  # safetensors
        tokenizer.save_pretrained(tmp)
        stats["params"] = sum(p.numel() for p in text.parameters())
        write_json(Path(tmp) / "stats.json", stats)
    return stats
