"""The miniature's text side: a word-level tokenizer and a tiny CLIP trained contrastively.

The text tower stands in for Stable Diffusion's frozen CLIP text encoder: it is
trained once (CLIP-style, against a tiny vision tower on rendered scenes), then
frozen and shared by all three denoisers.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModelWithProjection, PreTrainedTokenizerFast

SPECIAL = ["<pad>", "<unk>", "<bos>", "<eos>"]


def build_tokenizer(words: list[str], max_length: int) -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(SPECIAL + [w for w in words if w not in SPECIAL])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        unk_token="<unk>", model_max_length=max_length, padding_side="right")


def clip_config(tokenizer: PreTrainedTokenizerFast, cfg: dict, resolution: int) -> CLIPConfig:
    ids = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id)
    text = dict(vocab_size=len(tokenizer), hidden_size=cfg["hidden_size"],
                intermediate_size=4 * cfg["hidden_size"], num_hidden_layers=cfg["layers"],
                num_attention_heads=cfg["heads"], max_position_embeddings=tokenizer.model_max_length,
                projection_dim=cfg["projection_dim"], **ids)
    vision = dict(hidden_size=cfg["hidden_size"], intermediate_size=4 * cfg["hidden_size"],
                  num_hidden_layers=cfg["layers"], num_attention_heads=cfg["heads"],
                  image_size=resolution, patch_size=cfg["patch_size"], num_channels=3,
                  projection_dim=cfg["projection_dim"])
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=cfg["projection_dim"])


class ContrastiveObjective(nn.Module):
    """CLIP's symmetric InfoNCE loss on (image, caption) batches; forward returns the loss."""

    def __init__(self, clip: CLIPModel, tokenizer: PreTrainedTokenizerFast):
        super().__init__()
        self.clip, self.tokenizer = clip, tokenizer

    def forward(self, batch: dict) -> torch.Tensor:
        tok = self.tokenizer(batch["caption"], padding="max_length", truncation=True, return_tensors="pt")
        device = batch["pixels"].device
        out = self.clip(input_ids=tok.input_ids.to(device), attention_mask=tok.attention_mask.to(device),
                        pixel_values=batch["pixels"], return_loss=True)
        return out.loss


def export_text_encoder(clip: CLIPModel) -> CLIPTextModelWithProjection:
    """The text tower plus its projection, as the class SD3 uses for its CLIP encoders."""
    text = CLIPTextModelWithProjection(CLIPTextConfig(**clip.config.text_config.to_dict()))
    missing, unexpected = text.load_state_dict(
        {k: v for k, v in clip.state_dict().items() if k.startswith(("text_model.", "text_projection."))},
        strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return text
