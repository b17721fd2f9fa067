"""CLIP score (TSM Table 6, WaDi): the cosine similarity of an image's and its prompt's CLIP embeddings, averaged
over a run's FID samples (one image per reference caption), as the papers print it (e.g. 0.31, not x 100).

The miniature scores with the workflow's own contrastive CLIP (rule train_clip_scorer: the pre-training renders,
its own seed, not the denoisers' text encoder); a paper model with a CLIP from transformers named in config
(`evaluation.clip.pretrained`, a hub id or a local directory), e.g. openai/clip-vit-large-patch14.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.io import DataError, load_image, read_labels


class ClipScorer:
    """A CLIPModel with its tokenizer and image preprocessing: `tokenize(captions)` gives the text inputs,
    `pixels(list of uint8 HxWx3)` the pixel values."""

    def __init__(self, model, tokenize, pixels):
        self.model, self.tokenize, self.pixels = model.eval(), tokenize, pixels

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def embed(self, images: list[np.ndarray], captions: list[str], batch_size: int = 64) -> tuple:
        """Unit-norm image and text embeddings (N, D) each, of images[i] and captions[i]."""
        if len(images) != len(captions):
            raise ValueError(f"{len(images)} images but {len(captions)} captions")
        img, txt = [], []
        for i in range(0, len(images), batch_size):
            tok = {k: v.to(self.device) for k, v in self.tokenize(captions[i: i + batch_size]).items()}
            px = self.pixels(images[i: i + batch_size]).to(self.device, self.model.dtype)
            emb = self.model(pixel_values=px, **tok)  # its image_embeds and text_embeds (projected)
            img.append(F.normalize(emb.image_embeds.float(), dim=-1).cpu())
            txt.append(F.normalize(emb.text_embeds.float(), dim=-1).cpu())
        return torch.cat(img), torch.cat(txt)

    def scores(self, images: list[np.ndarray], captions: list[str], batch_size: int = 64) -> np.ndarray:
        """Per image: the cosine of its image embedding and its caption's text embedding."""
        img, txt = self.embed(images, captions, batch_size)
        return (img * txt).sum(-1).numpy()


def mini_scorer(model, tokenizer) -> ClipScorer:
    """The workflow's own CLIP (rule train_clip_scorer): its word-level tokenizer, pixels in [-1, 1]."""
    from ..training.loop import to_pixels
    return ClipScorer(model, lambda c: tokenizer(c, padding="max_length", truncation=True, return_tensors="pt"),
                      lambda imgs: to_pixels(np.stack(imgs)))


def load_clip_scorer(params: dict, model_dir=None) -> ClipScorer:
    """`params` is config evaluation.clip: `pretrained` (a transformers CLIP, with its processor), or the
    miniature's settings, whose model is `model_dir` (rule train_clip_scorer's output)."""
    from transformers import CLIPModel
    if params.get("pretrained"):
        from transformers import CLIPProcessor
        kw = dict(local_files_only=params.get("local_files_only", False))
        model = CLIPModel.from_pretrained(params["pretrained"], use_safetensors=True, **kw)
        processor = CLIPProcessor.from_pretrained(params["pretrained"], **kw)
        return ClipScorer(model, lambda c: processor.tokenizer(c, padding=True, truncation=True, return_tensors="pt"),
                          lambda imgs: processor(images=list(imgs), return_tensors="pt")["pixel_values"])
    from transformers import PreTrainedTokenizerFast
    if model_dir is None or not Path(model_dir).is_dir():
        raise FileNotFoundError(f"{model_dir}: CLIP scorer not found (has rule train_clip_scorer run?)")
    return mini_scorer(CLIPModel.from_pretrained(model_dir, use_safetensors=True),
                       PreTrainedTokenizerFast.from_pretrained(model_dir))


def folder_clip_score(scorer: ClipScorer, folder, batch_size: int = 64) -> dict:
    """The mean CLIP score of a sample folder (labels.jsonl: file, caption), its standard error over images, and
    the image count. Images load a batch at a time (FID-30K at 512 px would not fit in memory at once)."""
    labels = read_labels(Path(folder) / "labels.jsonl")
    if len(labels) < 2:
        raise DataError(f"{folder}: a CLIP score needs at least 2 images, found {len(labels)}")
    s = np.concatenate([scorer.scores([load_image(Path(folder) / r["file"]) for r in chunk],
                                      [r["caption"] for r in chunk], len(chunk))
                        for chunk in (labels[i: i + batch_size] for i in range(0, len(labels), batch_size))])
    return {"clip_score": float(s.mean()), "clip_score_se": float(s.std(ddof=1) / np.sqrt(len(s))),
            "clip_n": int(len(s))}
