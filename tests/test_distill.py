"""Distillation: the student adapters (LoRA, DoRA, LoRaD), the DMD objective, the loop's phases, the renoise sampler."""
import copy
import shutil

import pytest
import torch
import torch.nn as nn
from peft import inject_adapter_in_model, set_peft_model_state_dict
from safetensors.torch import load_file

from tsmflow.adapters.lora import (WEIGHTS, LoraSpec, adapter_parameters, inject, lora_layers, merge_adapters,
                                   read_lora_spec)
from tsmflow.adapters.lorad import LoRaDLinear, lorad_config, lorad_param_count, rotate_pairs
from tsmflow.data.io import read_json
from tsmflow.models.backbone import load_mini_backbone
from tsmflow.sampling.sample import generate
from tsmflow.students import scaled_timesteps
from tsmflow.training.distill import AdapterSpec, DMDObjective, adapted_copy, distill_student
from tsmflow.training.loop import TrainConfig, train
from tsmflow.training.objectives import noisy_and_target, predicted_x0

VARIANTS = ["lora", "dora", "lorad"]


def _mlp(in_f=7, hidden=6, out_f=5):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(in_f, hidden), nn.SiLU(), nn.Linear(hidden, out_f))


def _adapted(variant, rank=2):
    base = _mlp()
    model = copy.deepcopy(base)
    inject(LoraSpec(rank=rank, alpha=float(rank), variant=variant), ["0", "2"], model, "a")
    return base, model


def _randomise(model):
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_fresh_adapter_computes_exactly_the_base_model(variant):
    base, model = _adapted(variant)
    x = torch.randn(8, 7)
    assert torch.equal(model(x), base(x))


@pytest.mark.parametrize("variant", VARIANTS)
def test_merge_then_unmerge_round_trips_and_merged_matches_unmerged(variant):
    base, model = _adapted(variant)
    _randomise(model)
    x = torch.randn(8, 7)
    y = model(x)
    assert not torch.allclose(y, base(x), atol=1e-3)  # the adapter does something
    for layer in lora_layers(model).values():
        layer.merge()
    assert torch.allclose(model(x), y, atol=1e-5)
    for layer in lora_layers(model).values():
        layer.unmerge()
    for i in (0, 2):
        assert torch.allclose(model[i].base_layer.weight, base[i].weight, atol=1e-6)
    plain = merge_adapters(model)
    assert not lora_layers(plain) and torch.allclose(plain(x), y, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_trainable_parameters_match_the_closed_form(variant):
    _, model = _adapted(variant, rank=3)
    got = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    r, shapes = 3, [(7, 6), (6, 5)]  # (in, out) of the two Linears
    want = {"lora": sum(r * (i + o) for i, o in shapes),
            "dora": sum(r * (i + o) + o for i, o in shapes),  # plus one magnitude per output
            "lorad": sum(lorad_param_count(i, o, r) for i, o in shapes)}[variant]
    assert got == want
    assert lorad_param_count(7, 6, 3) == 3 * (6 + 3)


def test_lorad_rotates_adjacent_column_pairs_keeping_every_norm():
    torch.manual_seed(1)
    w = torch.randn(4, 7)  # odd: the last column has no partner
    theta = torch.randn(4, 3)
    r = rotate_pairs(w, theta)
    assert torch.allclose(r.norm(dim=1), w.norm(dim=1), atol=1e-5)  # each output row's vector keeps its norm
    for j in range(3):  # and so does each rotated pair
        assert torch.allclose(r[:, 2 * j:2 * j + 2].norm(dim=1), w[:, 2 * j:2 * j + 2].norm(dim=1), atol=1e-5)
    assert torch.equal(r[:, 6], w[:, 6])
    c, s = torch.cos(theta[0, 1]), torch.sin(theta[0, 1])  # pair (2, 3) of row 0, by hand
    assert torch.allclose(r[0, 2], w[0, 2] * c - w[0, 3] * s) and torch.allclose(r[0, 3], w[0, 2] * s + w[0, 3] * c)
    assert torch.allclose(rotate_pairs(r, -theta), w, atol=1e-5)
    with pytest.raises(ValueError, match="do not fit"):
        rotate_pairs(w, torch.zeros(4, 4))


def test_lorad_state_dict_reloads_through_peft():
    _, model = _adapted("lorad")
    _randomise(model)
    from peft import get_peft_model_state_dict
    sd = get_peft_model_state_dict(model, adapter_name="a")
    fresh = _mlp()
    inject_adapter_in_model(lorad_config(r=2, lora_alpha=2.0, target_modules=["0", "2"]), fresh, adapter_name="a")
    assert isinstance(fresh[0], LoRaDLinear)
    set_peft_model_state_dict(fresh, sd, adapter_name="a")
    x = torch.randn(3, 7)
    assert torch.allclose(fresh(x), model(x), atol=1e-6)


def test_unknown_variant_and_adapter_are_named():
    with pytest.raises(ValueError, match="unknown LoRA variant"):
        LoraSpec(rank=2, alpha=2.0, variant="lorax").config(["0"])
    with pytest.raises(ValueError, match="unknown adapter"):
        AdapterSpec(kind="lorax", rank=2)
    with pytest.raises(ValueError, match="needs a rank"):
        AdapterSpec(kind="lora")


@pytest.mark.parametrize("objective", ["eps", "v", "flow"])
def test_predicted_x0_inverts_the_forward_process(mini_backbone, objective):
    bb = mini_backbone("unet", objective)
    torch.manual_seed(0)
    x0, noise = torch.randn(4, 4, 4, 4), torch.randn(4, 4, 4, 4)
    t = torch.tensor([0, 250, 600, 990])
    xt, target = noisy_and_target(bb.noise_scheduler, objective, x0, noise, t)
    assert torch.allclose(predicted_x0(bb.noise_scheduler, objective, xt, target, t), x0, atol=1e-3)


def test_student_timesteps_scale_and_must_decrease():
    assert scaled_timesteps([999, 749, 499, 249], 1000) == [999, 749, 499, 249]
    assert scaled_timesteps([999, 499], 100) == [99, 50]
    with pytest.raises(ValueError, match="decreasing"):
        scaled_timesteps([499, 999], 1000)


class _Phased(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(3))
        self.calls = []

    def forward(self, batch, phase):
        self.calls.append(phase)
        return ((self.a if phase == "a" else self.b) * batch["x"]).pow(2).sum()


def test_loop_phases_step_only_their_own_parameters(tmp_path):
    obj = _Phased()
    cfg = TrainConfig(steps=6, batch_size=1, lr=0.1, weight_decay=0.1, log_every=3, checkpoint_every=0)
    groups = [{"params": [obj.a], "phase": "a"}, {"params": [obj.b], "lr": 0.01, "phase": "b"}]
    before_b = []

    def batches():
        while True:
            yield {"x": torch.ones(1, 3)}
    stats = train(obj, groups, batches(), cfg, tmp_path / "loss.csv", phases=["b", "b", "a"],
                  on_step=lambda s: before_b.append(obj.b.detach().clone()))
    assert obj.calls == ["b", "b", "a"] * 2
    # b does not move in a's steps (weight decay and momentum included): steps 3 and 6 leave it as it was
    assert torch.equal(before_b[2], before_b[1]) and torch.equal(before_b[5], before_b[4])
    assert not torch.equal(before_b[1], before_b[0])
    header = (tmp_path / "loss.csv").read_text().splitlines()[0]
    assert "loss_a" in header and "loss_b" in header and stats["steps"] == 6


def _captions():
    return ["a red circle", "a blue square", "a green triangle on the left of a red circle", "a yellow star"]


def test_dm_loss_is_zero_when_fake_equals_real(mini_backbone):
    """With guidance 1 and the fake score still equal to the teacher, DMD's gradient vanishes exactly."""
    bb = mini_backbone("unet")
    student, _ = adapted_copy(bb.denoiser, AdapterSpec("lora", rank=2), "student")
    fake, _ = adapted_copy(bb.denoiser, AdapterSpec("lora", rank=2), "fake")
    obj = DMDObjective(bb, student, fake, bb.denoiser, [999, 499], guidance_scale=1.0)
    torch.manual_seed(0)
    assert obj({"caption": _captions()}, phase="student").item() == 0.0
    guided = DMDObjective(bb, student, fake, bb.denoiser, [999, 499], guidance_scale=3.0)
    assert guided({"caption": _captions()}, phase="student").item() > 0
    assert obj({"caption": _captions()}, phase="fake").item() > 0
    with pytest.raises(ValueError, match="phase"):
        obj({"caption": _captions()}, phase="gan")


def _distill_cfg(kind, steps=2):
    return {"student": {"kind": kind, "rank": 2}, "fake": {"kind": "lora", "rank": 2, "lr": 0.01},
            "timesteps": [999, 499], "guidance_scale": 1.5, "fake_updates_per_student": 2, "steps": steps,
            "train": {"batch_size": 2, "lr": 0.001, "log_every": 1, "checkpoint_every": 0}}


@pytest.mark.parametrize("arch,objective,kind", [("unet", "eps", "lorad"), ("unet", "eps", "full"),
                                                 ("mmdit", "flow", "dora"), ("dit", "eps", "lorad"),
                                                 ("mmdit", "flow", "lorad")])
def test_distill_student_trains_saves_a_merged_student_that_samples(tmp_path, mini_backbone, arch, objective, kind):
    from conftest import _mini_components
    den, vae, text = _mini_components(tmp_path / "parts", arch, objective)
    bb = load_mini_backbone(arch, den, vae, text)
    teacher = copy.deepcopy(bb.denoiser)
    stats = distill_student(bb, _distill_cfg(kind), _captions(), tmp_path / "student")
    out = tmp_path / "student"
    assert stats["nfe"] == 2 and stats["steps"] == 2 * 3  # 2 student updates, each after 2 fake updates
    assert read_json(out / "stats.json")["student_trainable_params"] == stats["student_trainable_params"]
    header = (out / "loss.csv").read_text().splitlines()[0]
    assert "loss_student" in header and "loss_fake" in header
    # the teacher is untouched; the saved student differs from it and loads as a plain model
    assert all(torch.equal(a, b) for a, b in zip(teacher.parameters(), bb.denoiser.parameters()))
    student = load_mini_backbone(arch, out, vae, text)
    changed = any(not torch.equal(a, b) for a, b in zip(teacher.parameters(), student.denoiser.parameters()))
    assert changed
    if kind != "full":
        spec, _ = read_lora_spec(out / "adapter")
        assert spec.variant == kind and set(load_file(str(out / "adapter" / WEIGHTS)))
    imgs = generate(student, ["a red circle"] * 2, [0, 1], solver="renoise", timesteps=stats["timesteps"],
                    progress=False)
    assert imgs.shape == (2, 16, 16, 3)


def test_a_snapshot_is_the_student_that_training_to_its_step_gives_and_training_goes_on_unmerged(tmp_path):
    """FID over distillation steps samples snapshots: step k of a longer run must be the k-step student."""
    from types import SimpleNamespace

    from conftest import _mini_components
    from tsmflow.runs import attach_run_adapters
    den, vae, text = _mini_components(tmp_path / "parts", "unet", "eps")
    fresh = lambda: load_mini_backbone("unet", den, vae, text)  # noqa: E731
    long = distill_student(fresh(), {**_distill_cfg("lora", steps=3), "snapshots": [1, 2]}, _captions(),
                           tmp_path / "long")
    short = distill_student(fresh(), _distill_cfg("lora", steps=1), _captions(), tmp_path / "short")
    assert long["snapshots"] == [1, 2] and short["snapshots"] == []
    weights = lambda d: list(load_mini_backbone("unet", d, vae, text).denoiser.parameters())  # noqa: E731
    snap1, snap2, end = (weights(d) for d in (tmp_path / "long" / "step1", tmp_path / "long" / "step2",
                                              tmp_path / "long"))
    assert all(torch.equal(a, b) for a, b in zip(snap1, weights(tmp_path / "short")))
    assert not all(torch.equal(a, b) for a, b in zip(snap1, snap2))
    assert not all(torch.equal(a, b) for a, b in zip(snap2, end))
    assert read_lora_spec(tmp_path / "long" / "step1" / "adapter")[0].variant == "lora"
    # a routed student's snapshot holds its experts, loadable as the run loader loads the final one
    tsm = distill_student(fresh(), {**_tsm_cfg("tsm", experts=4), "steps": 2, "snapshots": [1]}, _captions(),
                          tmp_path / "tsm")
    snap = attach_run_adapters(fresh(), {"method": "distill"}, SimpleNamespace(student=tmp_path / "tsm" / "step1"))
    assert generate(snap, ["a red circle"], [0], solver="renoise", timesteps=tsm["timesteps"],
                    progress=False).shape == (1, 16, 16, 3)
    for bad in ([0], [3]):
        with pytest.raises(ValueError, match="snapshot"):
            distill_student(fresh(), {**_distill_cfg("lora", steps=3), "snapshots": bad}, _captions(),
                            tmp_path / "bad")


def test_renoise_sampler_depends_on_seed_not_batching_and_calls_once_per_step(mini_backbone):
    bb = mini_backbone("unet")
    calls = []
    predict = bb.predict
    bb.predict = lambda x, t, cond, denoiser=None: calls.append(int(t[0])) or predict(x, t, cond, denoiser)
    one = generate(bb, ["a red circle", "a blue square"], [3, 4], solver="renoise", timesteps=[999, 749, 499, 249],
                   batch_size=1, progress=False)
    assert calls == [999, 749, 499, 249] * 2
    both = generate(bb, ["a red circle", "a blue square"], [3, 4], solver="renoise", timesteps=[999, 749, 499, 249],
                    batch_size=2, progress=False)
    assert (abs(one.astype(int) - both.astype(int)) <= 1).all()
    other = generate(bb, ["a red circle"], [5], solver="renoise", timesteps=[999, 749, 499, 249], progress=False)
    assert not (other[0] == one[0]).all()
    with pytest.raises(ValueError, match="timesteps"):
        generate(bb, ["a red circle"], [0], solver="renoise")


def test_weight_change_separates_norm_from_direction():
    from tsmflow.evaluation.weights import change_summary, weight_change
    teacher = _mlp()
    same = weight_change(teacher, copy.deepcopy(teacher))
    assert (same[["norm_change", "direction_change"]].abs().max() < 1e-9).all()
    scaled = copy.deepcopy(teacher)
    with torch.no_grad():
        scaled[0].weight.mul_(1.1)
    df = weight_change(teacher, scaled).set_index("layer")
    assert df.loc["0.weight", "norm_change"] == pytest.approx(10.0) and df.loc["0.weight", "direction_change"] < 1e-9
    _, rotated = _adapted("lorad")
    _randomise(rotated)
    s = change_summary(weight_change(teacher, merge_adapters(rotated)))
    assert s["norm_change"] < 1e-4 and s["direction_change"] > 1 and s["weight_layers"] == 2


def _tsm_cfg(kind, **student):
    cfg = _distill_cfg(kind)
    cfg["student"] = {"kind": kind, "rank": 2 if kind != "tsm2" else 0, **student}
    cfg["timesteps"] = [999, 749, 499, 249]
    return cfg


def test_a_tsm_student_starts_as_the_teacher_and_each_expert_learns_only_its_own_step(mini_backbone):
    from tsmflow.training.distill import expert_student
    bb = mini_backbone("unet")
    student, params, router = expert_student(bb.denoiser, AdapterSpec("tsm", rank=2, experts=4), 1000, "unet")
    assert len(params) == 4 * len(adapter_parameters(student, "student0"))
    torch.manual_seed(0)
    x, cond = torch.randn(2, *bb.latent_shape), bb.encode(["a red circle", "a blue square"])
    for t, active in [(999, 3), (749, 2), (499, 1), (249, 0)]:
        tt = torch.full((2,), t)
        router.set_timesteps(tt)
        for p in params:
            p.grad = None
        out = bb.predict(x, tt, cond, denoiser=student)
        assert torch.equal(out, bb.predict(x, tt, cond))  # every expert's B starts at zero
        out.square().mean().backward()
        for name, p in student.named_parameters():
            if "lora_B" in name:
                got = p.grad is not None and bool(p.grad.abs().sum() > 0)
                assert got == (f".student{active}." in name), (t, name)
    with pytest.raises(ValueError, match="experts"):
        AdapterSpec("lora", rank=2, experts=4)
    with pytest.raises(ValueError, match="experts"):
        AdapterSpec("tsm", rank=2)


def test_tsm_1_and_2_stage_students_train_save_and_sample_through_the_run_loader(tmp_path):
    from types import SimpleNamespace

    from conftest import _mini_components
    from tsmflow.runs import attach_run_adapters
    from tsmflow.training.distill import assembled_student
    den, vae, text = _mini_components(tmp_path / "parts", "unet", "eps")
    fresh = lambda: load_mini_backbone("unet", den, vae, text)  # noqa: E731
    one = distill_student(fresh(), _tsm_cfg("tsm", experts=4), _captions(), tmp_path / "tsm1")
    lora = distill_student(fresh(), {**_tsm_cfg("lora"), "steps": 1}, _captions(), tmp_path / "lora")
    assert one["student_trainable_params"] == 4 * lora["student_trainable_params"]
    assert one["experts"] == [4] and "norm_change" not in one
    for d in ("tsm1", "lora"):
        assert read_lora_spec(tmp_path / d / "fake")[0].rank == 2
    assert sorted(p.name for p in (tmp_path / "tsm1" / "experts").iterdir()) == [f"student{i}" for i in range(4)]
    # the 2-stage student starts exactly as the 1-stage one: zero routers over its experts, plus the LoRA context
    bb = fresh()
    x, cond = torch.randn(2, *bb.latent_shape), bb.encode(["a red circle", "a blue square"])
    model, params, mixture, _ = assembled_student(bb.denoiser, tmp_path / "tsm1", [tmp_path / "lora"], "both",
                                                  1000, "unet")
    routed = attach_run_adapters(fresh(), {"method": "distill"}, SimpleNamespace(student=tmp_path / "tsm1"))
    moved = []
    for t in (torch.full((2,), s) for s in (999, 749, 499, 249)):
        mixture.set_timesteps(t)
        routed.route(t)
        assembled = bb.predict(x, t, cond, denoiser=model)
        assert torch.allclose(assembled, routed.predict(x, t, cond), atol=1e-5)
        moved.append(not torch.allclose(assembled, bb.predict(x, t, cond), atol=1e-5))
    assert any(moved)  # the experts of the steps drawn in training moved
    assert all(p.requires_grad for p in params) and all("routers" in n for n, _ in mixture.named_parameters())
    cfg = {**_tsm_cfg("tsm2"), "assemble": {"core": tmp_path / "tsm1", "context": [tmp_path / "lora"],
                                            "router_input": "both"}}
    two = distill_student(fresh(), cfg, _captions(), tmp_path / "tsm2")
    assert two["student_trainable_params"] == sum(p.numel() for p in params) and two["experts"] == [4, 1]
    assert (tmp_path / "tsm2" / "router.safetensors").is_file()
    student = attach_run_adapters(fresh(), {"method": "distill"}, SimpleNamespace(student=tmp_path / "tsm2"))
    imgs = generate(student, ["a red circle"] * 2, [0, 1], solver="renoise", timesteps=two["timesteps"],
                    progress=False)
    assert imgs.shape == (2, 16, 16, 3)
    shutil.copytree(tmp_path / "tsm1", tmp_path / "nofake", ignore=shutil.ignore_patterns("fake"))
    with pytest.raises(ValueError, match="fake"):
        distill_student(fresh(), {**cfg, "assemble": {**cfg["assemble"], "core": tmp_path / "nofake"}}, _captions(),
                        tmp_path / "bad")


def test_adapter_alpha_sets_the_scale_and_a_full_copy_of_a_half_model_trains_in_fp32():
    """TSM Sup. A.3's student LoRA is r64 with alpha 8 (scale 1/8); full fine-tuning of a float16 teacher keeps
    fp32 weights, since AdamW steps on fp16 weights underflow."""
    assert AdapterSpec(kind="lora", rank=64, alpha=8).lora().alpha == 8.0
    assert AdapterSpec(kind="lorad", rank=4).lora().alpha == 4.0  # default alpha = rank: scale 1
    teacher = _mlp().half()
    model, params = adapted_copy(teacher, AdapterSpec(kind="full"), "student")
    assert {p.dtype for p in params} == {torch.float32} and len(params) == len(list(teacher.parameters()))
    assert next(teacher.parameters()).dtype == torch.float16  # the teacher itself is untouched
    lora, lora_params = adapted_copy(teacher, AdapterSpec(kind="lora", rank=2, targets=["0"]), "student")
    assert {p.dtype for p in lora_params} == {torch.float32} and lora[0].base_layer.weight.dtype == torch.float16
