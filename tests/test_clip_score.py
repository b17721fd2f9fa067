"""CLIP score: the cosine of image and prompt embeddings, from the workflow's own CLIP or a transformers one."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPModel

from tsmflow.data.grammar import vocabulary
from tsmflow.data.io import DataError
from tsmflow.evaluation.clip_score import folder_clip_score, load_clip_scorer
from tsmflow.models.text import build_tokenizer, clip_config

CAPTIONS = ["a red circle", "a blue square", "a green triangle"]


def _images(n=3, size=16):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def _mini_scorer(tmp_path, size=16):
    torch.manual_seed(0)
    tok = build_tokenizer(vocabulary(), 24)
    model = CLIPModel(clip_config(tok, {"hidden_size": 32, "layers": 1, "heads": 2, "projection_dim": 16,
                                        "patch_size": 4}, size))
    model.save_pretrained(tmp_path / "clip")
    tok.save_pretrained(tmp_path / "clip")
    return model, tok, load_clip_scorer({}, tmp_path / "clip")


def test_scores_are_the_cosine_of_the_projected_embeddings(tmp_path):
    model, tok, scorer = _mini_scorer(tmp_path)
    images = _images()
    got = scorer.scores(images, CAPTIONS, batch_size=2)  # batching does not change a score
    px = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    t = tok(CAPTIONS, padding="max_length", truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=t.input_ids, attention_mask=t.attention_mask, pixel_values=px)
    want = (out.image_embeds * out.text_embeds).sum(-1).numpy()  # CLIPModel's own normalised embeddings
    assert got.shape == (3,) and np.allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError, match="3 images but 2 captions"):
        scorer.scores(images, CAPTIONS[:2])


def test_folder_score_reads_its_labels_and_needs_two_images(tmp_path):
    _, _, scorer = _mini_scorer(tmp_path)
    folder = tmp_path / "samples"
    folder.mkdir()
    rows = []
    for i, (im, c) in enumerate(zip(_images(), CAPTIONS)):
        Image.fromarray(im).save(folder / f"{i:06d}.png")
        rows.append(json.dumps({"file": f"{i:06d}.png", "caption": c}))
    (folder / "labels.jsonl").write_text("\n".join(rows) + "\n")
    got = folder_clip_score(scorer, folder, batch_size=2)
    want = scorer.scores(_images(), CAPTIONS)
    assert got["clip_n"] == 3 and got["clip_score"] == pytest.approx(want.mean(), abs=1e-6)
    assert got["clip_score_se"] == pytest.approx(want.std(ddof=1) / np.sqrt(3), abs=1e-6)
    (folder / "labels.jsonl").write_text(rows[0] + "\n")
    with pytest.raises(DataError, match="at least 2 images"):
        folder_clip_score(scorer, folder)
    with pytest.raises(FileNotFoundError, match="train_clip_scorer"):
        load_clip_scorer({}, tmp_path / "absent")


def test_a_transformers_clip_loads_offline_from_a_local_directory_with_its_processor(tmp_path):
    """A paper model's scorer (evaluation.clip.pretrained): CLIPModel and CLIPProcessor from a local directory;
    the processor resizes the samples to the vision tower's input."""
    from test_backbones import save_tiny_clip
    scorer = load_clip_scorer({"pretrained": str(save_tiny_clip(tmp_path / "clip")), "local_files_only": True})
    s = scorer.scores(_images(size=48), CAPTIONS)
    assert s.shape == (3,) and np.all(np.abs(s) <= 1 + 1e-6) and len(set(np.round(s, 6))) == 3
