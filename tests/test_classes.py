"""The class-conditional miniature (DMP Tables 8-9): class captions, the classes splits, and the cdit backbone:
a label reaches the denoiser, classifier-free guidance drops it, the model's own label dropout is off, and
pre-training, DMP and sampling run on it."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tsmflow.data.classes import CLASSES, NULL, WORLD, class_caption, class_index
from tsmflow.data.io import read_labels, write_labels
from tsmflow.data.render import render_split
from tsmflow.models.backbone import load_mini_backbone


def test_class_captions_round_trip_and_bad_captions_name_the_problem():
    assert len(CLASSES) == 24 and NULL == 24
    assert [class_index(class_caption(c)) for c in CLASSES] == list(range(24))
    assert class_caption("red circle") == "a red circle"
    assert class_index("") == class_index("  ") == NULL
    with pytest.raises(ValueError, match="no colour"):
        class_index("a circle")
    with pytest.raises(ValueError, match="also texture"):
        class_index("a red striped circle")
    with pytest.raises(ValueError, match="one object"):
        class_index("a red circle and a blue square")


def test_a_classes_split_has_one_object_per_image_captioned_with_its_class(tmp_path):
    render_split(tmp_path / "split", 60, 5, 32, WORLD)
    labels = read_labels(tmp_path / "split" / "labels.jsonl")
    assert len(labels) == 60 and all(len(r["objects"]) == 1 for r in labels)
    for r in labels:
        o = r["objects"][0]
        assert r["caption"] == f"a {o['color']} {o['shape']}"
    # size and texture vary within a class; no colour-shape pair is held back
    assert len({r["objects"][0]["texture"] for r in labels}) == 3 and len({r["caption"] for r in labels}) > 15


@pytest.fixture
def cdit(mini_backbone):
    return mini_backbone("cdit")


def test_the_label_reaches_the_denoiser_and_the_empty_caption_is_the_null_class(cdit):
    assert cdit.text_encoders == []
    cond = cdit.encode(["a red circle", "a blue square", ""])
    assert cond["class_labels"].tolist() == [CLASSES.index("red circle"), CLASSES.index("blue square"), NULL]
    x = torch.randn(1, *cdit.latent_shape).expand(3, -1, -1, -1)
    with torch.no_grad():
        out = cdit.predict(x, torch.tensor([500, 500, 500]), cond)
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[0], out[2])


def test_training_mode_does_not_drop_labels_itself(cdit):
    """The objective's caption_dropout is the only CFG dropout: the DiT's built-in label dropout is off, also
    after a reload (`from_pretrained` rebuilds it at p=0.1)."""
    cdit.denoiser.train()
    x, t = torch.randn(64, *cdit.latent_shape), torch.full((64,), 300)
    cond = cdit.encode(["a red circle"] * 64)
    with torch.no_grad():
        a, b = cdit.predict(x, t, cond), cdit.predict(x, t, cond)
    torch.testing.assert_close(a, b)


def test_guidance_feeds_the_null_class_as_the_unconditional_half(cdit):
    from tsmflow.sampling.sample import generate
    seen = []

    def spy(x, t, cond):
        seen.append(cond["class_labels"].tolist())
        return cdit.predict(x, t, cond)

    imgs = generate(cdit, ["a red circle", "a green diamond"], [0, 1], steps=2, guidance_scale=3.0,
                    model_fn=spy, progress=False)
    assert imgs.shape == (2, 16, 16, 3)
    assert seen[0] == [NULL, NULL, CLASSES.index("red circle"), CLASSES.index("green diamond")]


def test_dmp_gate_reads_the_class_embedding(cdit):
    from tsmflow.adapters.dmp import DMPConfig, add_dmp, class_embedding
    dmp = add_dmp(cdit, DMPConfig())
    with torch.no_grad():
        dmp.gate.weight.normal_()
        cdit.predict(torch.randn(2, *cdit.latent_shape), torch.tensor([400, 400]),
                     cdit.encode(["a red circle", "a cyan square"]))
    g = dmp.last_gates[0]
    assert not torch.allclose(g[0], g[1])  # same t, two classes: two mixtures
    emb = class_embedding(cdit.denoiser, torch.tensor([3]))
    assert emb.shape == (1, dmp.cond_dim)


def test_pretraining_a_cdit_from_scratch_and_loading_it_as_a_run(tmp_path, mini_backbone):
    from conftest import _mini_components
    from tsmflow.runs import load_run_backbone
    from tsmflow.training.pretrain import pretrain_denoiser
    _, vae, _ = _mini_components(tmp_path / "parts", "cdit")
    bb = mini_backbone("cdit")
    c, s, _ = bb.latent_shape
    save_file({"mean": torch.randn(8, c, s, s), "std": torch.full((8, c, s, s), 0.1)}, str(tmp_path / "lat.safetensors"))
    write_labels(tmp_path / "labels.jsonl", [{"file": f"{i}.png", "caption": class_caption(CLASSES[i % 24])}
                                              for i in range(8)])
    cfg = {"arch": {"patch_size": 1, "layers": 1, "heads": 2, "head_dim": 8}, "objective": "eps",
           "num_train_timesteps": 1000, "caption_dropout": 0.1,
           "train": {"steps": 2, "batch_size": 4, "lr": 0.001, "seed": 0}}
    stats = pretrain_denoiser("cdit", cfg, tmp_path / "lat.safetensors", tmp_path / "labels.jsonl", vae, None,
                              tmp_path / "model")
    assert stats["arch"] == "cdit" and stats["params"] > 0
    run = load_run_backbone({"backbone": "cdit", "method": "base"}, SimpleNamespace(model=tmp_path / "model", vae=vae))
    assert type(run.denoiser).__name__ == "DiTTransformer2DModel"
    assert np.isfinite(run.predict(torch.randn(1, c, s, s), torch.tensor([10]), run.encode(["a red circle"]))
                       .detach().numpy()).all()
