"""DMP: zero-initialised prompts change nothing, gate shapes per backbone, balancing losses by hand,
hard and uniform variants, prepend, saving and the activation map."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tsmflow.adapters.dmp import DMPConfig, MixtureOfPrompts, add_dmp, importance_loss, load_dmp, load_loss, save_dmp

ARCHS = [("unet", "eps"), ("dit", "eps"), ("mmdit", "flow"), ("cdit", "eps")]  # cdit: class captions


def _inputs(bb, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, *bb.latent_shape, generator=g)
    return x, torch.tensor([10, 900]), bb.encode(["a red circle", "a blue square"])


def _perturb(module, scale=0.5):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


@pytest.mark.parametrize("arch,objective", ARCHS)
@pytest.mark.parametrize("gate", ["soft", "hard", "none"])
def test_zero_initialised_prompts_reproduce_the_frozen_model(mini_backbone, arch, objective, gate):
    bb = mini_backbone(arch, objective)
    x, t, cond = _inputs(bb)
    with torch.no_grad():
        before = bb.predict(x, t, cond)
        dmp = add_dmp(bb, DMPConfig(gate=gate))
        assert torch.equal(bb.predict(x, t, cond), before)
        _perturb(dmp)
        assert not torch.allclose(bb.predict(x, t, cond), before, atol=1e-6)
        dmp.detach()
        assert torch.equal(bb.predict(x, t, cond), before)


@pytest.mark.parametrize("arch,objective", ARCHS)
def test_gate_and_prompt_shapes_per_backbone(mini_backbone, arch, objective):
    bb = mini_backbone(arch, objective)
    dmp = MixtureOfPrompts(bb.denoiser, arch, DMPConfig())
    if arch == "unet":  # tiny unet: 8x8 x 16 channels down, 4x4 x 32 in the middle, two 8x8 up; forward order
        assert dmp.shapes == [(64, 16), (16, 32), (64, 16), (64, 16)]
        assert dmp.block_names == ["down_blocks.0.attentions.0", "mid_block.attentions.0",
                                   "up_blocks.1.attentions.0", "up_blocks.1.attentions.1"]
    else:  # one block, 8x8 latent patches of 1 -> 64 tokens of width 2 heads x 8 (cdit: its class embedding's too)
        assert dmp.shapes == [(64, 16)] and dmp.block_names == ["transformer_blocks.0"]
    text_dim = 16  # the text encoder's width; the cdit's class embedding (2 heads x 8) is as wide
    L = len(dmp.shapes)
    assert (dmp.gate.in_features, dmp.gate.out_features) == (64 + text_dim + L, 64)
    assert MixtureOfPrompts(bb.denoiser, arch, DMPConfig(selection="uniform", condition=False)).gate.in_features == 64
    assert MixtureOfPrompts(bb.denoiser, arch, DMPConfig(gate="none")).gate is None
    x, t, cond = _inputs(bb)
    dmp.attach()
    with torch.no_grad():
        bb.predict(x, t, cond)
    assert [tuple(g.shape) for g in dmp.last_gates] == [(2, n) for n, _ in dmp.shapes]
    for g in dmp.last_gates:
        torch.testing.assert_close(g.sum(-1), torch.ones(2))


def test_only_prompts_and_gate_get_gradients_and_depth_makes_blocks_differ(mini_backbone):
    bb = mini_backbone("unet")
    bb.denoiser.requires_grad_(False)
    dmp = add_dmp(bb, DMPConfig())
    _perturb(dmp, 0.1)
    x, t, cond = _inputs(bb)
    bb.predict(x, t, cond).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in dmp.parameters())
    assert all(p.grad is None for p in bb.denoiser.parameters())
    w = dmp.weights(t, cond["hidden"], cond["mask"])
    assert not torch.allclose(w[0], w[2])  # distinct: the depth input gives each block its own mixture
    uni = MixtureOfPrompts(bb.denoiser, "unet", DMPConfig(selection="uniform"))
    _perturb(uni, 0.1)
    w = uni.weights(t, cond["hidden"], cond["mask"])
    assert torch.equal(w[0], w[2])  # uniform: one mixture for every block of a size
    # the 16-prompt mid block uses the first 16 of the same logits: the big block's weights, renormalised
    torch.testing.assert_close(w[1], w[0][:, :16] / w[0][:, :16].sum(-1, keepdim=True))


def test_importance_loss_by_hand():
    # two blocks, three prompts, batch of one: summed gates g~ = (0.7, 0.4, 0.9); mean 2/3,
    # variance ((0.7-2/3)^2 + (0.4-2/3)^2 + (0.9-2/3)^2) / 3 = 0.0422222; loss = 0.0422222 / (4/9 + 1e-5)
    gates = [torch.tensor([[0.5, 0.2, 0.3]]), torch.tensor([[0.2, 0.2, 0.6]])]
    assert importance_loss(gates).item() == pytest.approx(0.0422222 / (4 / 9 + 1e-5), rel=1e-4)
    assert importance_loss([torch.full((2, 4), 0.25)] * 3).item() == pytest.approx(0.0, abs=1e-12)  # balanced
    # groups of different sizes (UNet) are scored separately and averaged: (0 + loss above) / 2
    mixed = [torch.full((1, 2), 0.5), *gates]
    assert importance_loss(mixed).item() == pytest.approx(0.0422222 / (4 / 9 + 1e-5) / 2, rel=1e-4)


def test_load_loss_counts_negatives_and_has_no_gradient():
    soft = torch.softmax(torch.randn(3, 5, requires_grad=True), -1)
    assert load_loss([soft, soft]).item() == 0.0  # softmax weights are positive: always 0
    logits = torch.tensor([[-1.0, 2.0, -0.5], [1.0, 1.0, -3.0]], requires_grad=True)
    # block 1: 2 and 1 negatives (batch mean 1.5); block 2: none; (1.5 + 0) / 2 blocks = 0.75
    loss = load_loss([logits, logits.abs()])
    assert loss.item() == 0.75 and not loss.requires_grad


def test_hard_gate_keeps_top_k_with_weight_one_and_passes_gradient(mini_backbone):
    bb = mini_backbone("dit")
    dmp = MixtureOfPrompts(bb.denoiser, "dit", DMPConfig(gate="hard", top_k_frac=0.75))
    _perturb(dmp, 0.1)
    x, t, cond = _inputs(bb)
    (w,) = dmp.weights(t, cond["hidden"], cond["mask"])
    assert torch.equal(w.detach().sum(-1), torch.full((2,), float(math.ceil(0.75 * 64))))
    assert set(w.detach().unique().tolist()) <= {0.0, 1.0}
    (w * torch.arange(64.0)).sum().backward()
    assert dmp.gate.weight.grad.abs().sum() > 0  # straight-through


@pytest.mark.parametrize("arch,objective", [("dit", "eps"), ("mmdit", "flow")])
def test_prepend_adds_tokens_inside_blocks_only(mini_backbone, arch, objective):
    bb = mini_backbone(arch, objective)
    x, t, cond = _inputs(bb)
    with torch.no_grad():
        before = bb.predict(x, t, cond)
        dmp = add_dmp(bb, DMPConfig(position="prepend"))
        _perturb(dmp)
        after = bb.predict(x, t, cond)
    assert after.shape == before.shape and not torch.allclose(after, before, atol=1e-6)


def test_prepend_on_a_unet_fails_clearly(mini_backbone):
    bb = mini_backbone("unet")
    with pytest.raises(ValueError, match="position=prepend needs a token sequence"):
        add_dmp(bb, DMPConfig(position="prepend"))
    with pytest.raises(ValueError, match="dmp.gate='sparse'"):
        DMPConfig(gate="sparse")


def test_save_and_load_round_trip(mini_backbone, tmp_path):
    bb = mini_backbone("mmdit", "flow")
    dmp = add_dmp(bb, DMPConfig(gate="hard"))
    _perturb(dmp)
    x, t, cond = _inputs(bb)
    with torch.no_grad():
        out = bb.predict(x, t, cond)
    save_dmp(tmp_path, dmp)
    fresh = mini_backbone("mmdit", "flow")
    loaded = load_dmp(fresh, tmp_path)
    assert loaded.cfg.gate == "hard"
    with torch.no_grad():
        assert torch.equal(fresh.predict(x, t, cond), out)
    with pytest.raises(ValueError, match="trained on 'mmdit', not 'dit'"):
        load_dmp(mini_backbone("dit"), tmp_path)
    with pytest.raises(FileNotFoundError, match="not a saved DMP patch"):
        load_dmp(fresh, tmp_path / "nothing")


def test_activation_map_shape_and_padding(mini_backbone):
    bb = mini_backbone("dit")
    dmp = MixtureOfPrompts(bb.denoiser, "dit", DMPConfig())
    dmp.shapes = [(64, 16), (40, 16)]  # pretend a smaller second block, as in a UNet
    dmp.gate = torch.nn.Linear(64 + 16 + 2, 64)
    cond = bb.encode(["a red circle"])
    m = dmp.activation_map(torch.arange(0, 1000, 100), cond["hidden"], cond["mask"])
    assert m.shape == (10, 2, 64) and np.isnan(m[:, 1, 40:]).all() and not np.isnan(m[:, :, :40]).any()
    np.testing.assert_allclose(np.nansum(m, axis=-1), 1.0, rtol=1e-5)
