"""DMD2's GAN phase in the distillation stage: the realism head on the fake score's bottleneck, its losses, and a
student distilled with it."""
import copy
import math

import pytest
import torch
from safetensors.torch import load_file

from tsmflow.data.io import read_json
from tsmflow.training.distill import AdapterSpec, DMDObjective, adapted_copy, distill_student
from tsmflow.training.gan import GanSpec, bottleneck, classifier_loss, generator_loss

CAPTIONS = ["a red circle", "a blue square", "a green triangle on the left of a red circle", "a yellow star"]


def _objective(bb, gan, guidance=1.0):
    student, _ = adapted_copy(bb.denoiser, AdapterSpec("lora", rank=2), "student")
    fake, _ = adapted_copy(bb.denoiser, AdapterSpec("lora", rank=2), "fake")
    return DMDObjective(bb, student, fake, bb.denoiser, [999, 499], guidance_scale=guidance, gan=gan)


@pytest.mark.parametrize("arch,objective", [("unet", "eps"), ("dit", "eps"), ("mmdit", "flow")])
def test_the_head_reads_each_backbones_bottleneck_and_gives_one_logit_per_sample(mini_backbone, arch, objective):
    bb = mini_backbone(arch, objective)
    obj = _objective(bb, GanSpec())
    tapped = bottleneck(obj.fake)
    if arch == "unet":
        assert tapped is obj.fake.mid_block
    else:
        blocks = obj.fake.transformer_blocks
        assert tapped is blocks[len(blocks) // 2]
    x0 = torch.randn(3, *bb.latent_shape)
    logits = obj.realism(x0, bb.encode(CAPTIONS[:3]))
    assert logits.shape == (3,) and torch.isfinite(logits).all()


def test_losses_are_logistic_and_the_generator_term_is_non_saturating():
    zero = torch.zeros(4)
    assert classifier_loss(zero, zero).item() == pytest.approx(2 * math.log(2))
    assert generator_loss(zero).item() == pytest.approx(math.log(2))
    # a classifier that is right and sure has no loss; the generator then has a large one, with a live gradient
    assert classifier_loss(torch.full((4,), 20.0), torch.full((4,), -20.0)).item() < 1e-6
    fooled = torch.full((4,), -20.0, requires_grad=True)
    generator_loss(fooled).backward()
    assert generator_loss(fooled).item() > 19 and fooled.grad.abs().min() > 0.2


def test_the_generator_term_moves_the_student_where_the_dm_gradient_vanishes(mini_backbone):
    """Guidance 1 and a fake equal to the teacher make DMD's loss exactly 0 (test_distill); the GAN term is then the
    student's whole loss, and its gradient reaches the student's adapter through the fake score."""
    bb = mini_backbone("unet")
    plain = _objective(bb, None)
    torch.manual_seed(0)
    assert plain({"caption": CAPTIONS}, phase="student").item() == 0.0
    obj = _objective(bb, GanSpec(student_weight=1.0, fake_weight=1.0))
    torch.manual_seed(0)
    loss = obj({"caption": CAPTIONS}, phase="student")
    assert loss.item() > 0
    loss.backward()
    grads = [p.grad for n, p in obj.student.named_parameters() if "lora_" in n and p.grad is not None]
    assert grads and max(g.abs().max().item() for g in grads) > 0
    # the fake phase reads real latents from the batch
    batch = {"caption": CAPTIONS, "latent_mean": torch.randn(4, *bb.latent_shape),
             "latent_std": torch.zeros(4, *bb.latent_shape)}
    assert torch.isfinite(obj(batch, phase="fake"))


def test_a_gan_spec_out_of_range_is_named():
    with pytest.raises(ValueError, match="fake_weight"):
        GanSpec(fake_weight=0.0)
    with pytest.raises(ValueError, match="max_t"):
        GanSpec(max_t=1.5)


def _cfg(gan):
    return {"student": {"kind": "lora", "rank": 2}, "fake": {"kind": "lora", "rank": 2, "lr": 0.01},
            "timesteps": [999, 499], "guidance_scale": 1.5, "fake_updates_per_student": 2, "steps": 2,
            "train": {"batch_size": 2, "lr": 0.001, "log_every": 1, "checkpoint_every": 0}, "gan": gan}


@pytest.mark.parametrize("arch,objective", [("unet", "eps"), ("mmdit", "flow")])
def test_a_student_with_the_gan_phase_trains_its_head_and_saves_it(tmp_path, mini_backbone, arch, objective):
    bb = mini_backbone(arch, objective)
    shape = bb.latent_shape
    real = {"latent_mean": torch.randn(len(CAPTIONS), *shape), "latent_std": 0.1 * torch.ones(len(CAPTIONS), *shape)}
    with pytest.raises(ValueError, match="one real latent per caption"):
        distill_student(copy.copy(bb), _cfg({"fake_weight": 0.5}), CAPTIONS, tmp_path / "none")
    gan = {"student_weight": 0.01, "fake_weight": 0.5, "max_t": 0.5}
    stats = distill_student(bb, _cfg(gan), CAPTIONS, tmp_path / "student", real)
    out = tmp_path / "student"
    assert read_json(out / "stats.json")["gan"] == gan and stats["nfe"] == 2
    head = load_file(str(out / "gan_head.safetensors"))
    assert head and all(torch.isfinite(v).all() for v in head.values())
    # the head trains with the fake score: its parameters count in the fake phase's group, not the student's
    plain = distill_student(mini_backbone(arch, objective), _cfg(None), CAPTIONS, tmp_path / "plain")
    n_head = sum(v.numel() for v in head.values())
    assert stats["trainable_params"] == plain["trainable_params"] + n_head
    assert stats["student_trainable_params"] == plain["student_trainable_params"]
    assert not (tmp_path / "plain" / "gan_head.safetensors").exists()
