"""The shared training loop, objectives and timestep samplers."""
import math

import pandas as pd
import pytest
import torch
import torch.nn as nn

from tsmflow.models.mini import build_scheduler
from tsmflow.training.loop import NonFiniteLossError, TrainConfig, infinite_batches, train
from tsmflow.training.objectives import DiffusionObjective, UniformTimesteps, noisy_and_target


class Regression(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 1)

    def forward(self, batch):
        return ((self.lin(batch["x"]) - batch["y"]) ** 2).mean()


def toy_data(n=256):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return {"x": x, "y": x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.7}


def test_loop_fits_and_writes_loss_curve(tmp_path):
    model = Regression()
    cfg = TrainConfig(steps=200, batch_size=32, lr=0.05, log_every=20)
    stats = train(model, model.parameters(), infinite_batches(toy_data(), 32, 0), cfg, tmp_path / "loss.csv")
    curve = pd.read_csv(tmp_path / "loss.csv")
    assert list(curve.columns) == ["step", "loss", "lr", "samples_per_s", "elapsed_s"]
    assert curve["step"].iloc[-1] == 200 and len(curve) == 10
    assert curve["loss"].iloc[-1] < 0.01 * curve["loss"].iloc[0]
    assert stats["samples_seen"] == 200 * 32 and stats["trainable_params"] == 5


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    model = Regression()
    cfg = TrainConfig(steps=10, batch_size=8, lr=0.01, grad_accum=4, log_every=5)
    stats = train(model, model.parameters(), infinite_batches(toy_data(), 8, 0), cfg, tmp_path / "loss.csv")
    assert stats["steps"] == 10 and stats["samples_seen"] == 10 * 4 * 8
    assert pd.read_csv(tmp_path / "loss.csv")["step"].tolist() == [5, 10]


def test_nan_loss_stops_naming_the_step(tmp_path):
    class Explodes(Regression):
        def forward(self, batch):
            self.calls = getattr(self, "calls", 0) + 1
            loss = super().forward(batch)
            return loss * float("nan") if self.calls == 3 else loss

    model = Explodes()
    with pytest.raises(NonFiniteLossError, match="loss is nan at optimizer step 3"):
        train(model, model.parameters(), infinite_batches(toy_data(), 8, 0),
              TrainConfig(steps=5, batch_size=8, lr=0.01), tmp_path / "loss.csv")
    assert not (tmp_path / "loss.csv").exists()


def test_param_groups_keep_their_own_lr_and_weight_decay(tmp_path):
    """A text-encoder group at its own lr: Adam's first step moves each weight by about its group's lr."""
    a, b = nn.Linear(4, 1), nn.Linear(4, 1)
    frozen = nn.Parameter(torch.zeros(3), requires_grad=False)

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = a, b

        def forward(self, batch):
            return ((self.a(batch["x"]) + self.b(batch["x"]) - batch["y"]) ** 2).mean()

    before = [p.detach().clone() for p in (*a.parameters(), *b.parameters())]
    groups = [{"params": list(a.parameters()), "lr": 1e-3, "weight_decay": 0.0},
              {"params": [*b.parameters(), frozen], "lr": 0.1, "weight_decay": 0.0}]
    cfg = TrainConfig(steps=1, batch_size=32, lr=0.5, weight_decay=0.3, max_grad_norm=None, log_every=1)
    stats = train(Two(), groups, infinite_batches(toy_data(), 32, 0), cfg, tmp_path / "loss.csv")
    after = [p.detach() for p in (*a.parameters(), *b.parameters())]
    moved = [float((x - y).abs().max()) for x, y in zip(after, before)]
    assert moved[0] == pytest.approx(1e-3, rel=1e-3) and moved[1] == pytest.approx(1e-3, rel=1e-3)
    assert moved[2] == pytest.approx(0.1, rel=1e-3) and moved[3] == pytest.approx(0.1, rel=1e-3)
    assert stats["trainable_params"] == 10  # the frozen parameter is left out of its group


def test_cosine_schedule_warms_up_then_decays_to_zero():
    from tsmflow.training.loop import lr_factor
    cfg = TrainConfig(steps=110, batch_size=1, lr=1.0, warmup_steps=10, lr_schedule="cosine")
    assert lr_factor(cfg, 0) == pytest.approx(0.1) and lr_factor(cfg, 9) == pytest.approx(1.0)
    assert lr_factor(cfg, 60) == pytest.approx(0.5) and lr_factor(cfg, 110) == pytest.approx(0.0)
    const = TrainConfig(steps=110, batch_size=1, lr=1.0, warmup_steps=10)
    assert lr_factor(const, 100) == 1.0
    with pytest.raises(ValueError, match="lr_schedule"):
        lr_factor(TrainConfig(steps=1, batch_size=1, lr=1.0, lr_schedule="linear"), 0)


def test_unknown_train_key_is_rejected():
    with pytest.raises(ValueError, match="unknown training keys"):
        TrainConfig.from_dict({"steps": 1, "batch_size": 1, "lr": 1e-3, "lr_shedule": "cosine"})


def test_uniform_timesteps_stay_in_range():
    s = UniformTimesteps(250, 375)
    t = s(10_000, "cpu")
    assert t.min() == 250 and t.max() == 374
    with pytest.raises(ValueError):
        UniformTimesteps(10, 10)


@pytest.mark.parametrize("objective", ["eps", "v", "flow"])
def test_noisy_and_target_formulas(objective):
    sched = build_scheduler(objective, 1000)
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 500, 999])
    xt, target = noisy_and_target(sched, objective, x0, noise, t)
    if objective == "flow":
        s = (t / 1000).view(-1, 1, 1, 1)
        assert torch.allclose(xt, (1 - s) * x0 + s * noise) and torch.allclose(target, noise - x0)
        return
    ab = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(xt, ab.sqrt() * x0 + (1 - ab).sqrt() * noise, atol=1e-5)
    want = noise if objective == "eps" else ab.sqrt() * noise - (1 - ab).sqrt() * x0
    assert torch.allclose(target, want, atol=1e-5)


@pytest.mark.parametrize("arch, objective", [("unet", "eps"), ("dit", "eps"), ("mmdit", "flow")])
def test_diffusion_objective_trains_only_the_denoiser(mini_backbone, tmp_path, arch, objective):
    bb = mini_backbone(arch, objective)
    text_before = {k: v.clone() for k, v in bb.text_encoders[0].state_dict().items()}
    n = 16
    data = {"latent_mean": torch.randn(n, 4, 8, 8), "latent_std": torch.full((n, 4, 8, 8), 0.1)}
    caps = ["a red circle", "a small blue striped square on the left of a green triangle"] * (n // 2)
    obj = DiffusionObjective(bb, caption_dropout=0.5)
    stats = train(obj, bb.denoiser.parameters(), infinite_batches(data, 8, 0, extra={"caption": caps}),
                  TrainConfig(steps=4, batch_size=8, lr=1e-3, log_every=2), tmp_path / "loss.csv")
    assert math.isfinite(stats["final_loss"])
    for k, v in bb.text_encoders[0].state_dict().items():
        assert torch.equal(v, text_before[k]), k


def test_sample_weights_weight_the_loss(mini_backbone):
    """A zero-weighted sample (e.g. a GORS image below threshold) contributes nothing."""
    bb = mini_backbone("unet")
    obj = DiffusionObjective(bb, caption_dropout=0.0)
    batch = {"latent_mean": torch.randn(2, 4, 8, 8), "latent_std": torch.zeros(2, 4, 8, 8),
             "caption": ["a red circle", "a blue square"], "weight": torch.tensor([1.0, 0.0])}
    garbage = {**batch, "latent_mean": torch.stack([batch["latent_mean"][0], torch.full((4, 8, 8), 1e3)])}

    def loss(b):
        torch.manual_seed(0)
        return obj(b)

    assert torch.allclose(loss(batch), loss(garbage))
    first, second = loss(batch), loss({**batch, "weight": torch.tensor([0.0, 1.0])})
    assert not torch.allclose(first, second)
    assert torch.allclose(loss({**batch, "weight": torch.tensor([3.0, 1.0])}), 0.75 * first + 0.25 * second)
    # T2I-CompBench's GORS loss: the batch mean of reward * mse, not normalised by the rewards' sum
    rewards = {k: v for k, v in batch.items() if k != "weight"}
    assert torch.allclose(loss({**rewards, "reward": torch.tensor([0.6, 0.2])}), (0.6 * first + 0.2 * second) / 2)


def test_task_data_reward_forms(tmp_path):
    from safetensors.torch import save_file
    from tsmflow.data.io import DataError, write_labels
    from tsmflow.training.experts import load_task_data
    save_file({"mean": torch.zeros(2, 4, 2, 2), "std": torch.ones(2, 4, 2, 2)}, str(tmp_path / "lat.safetensors"))
    rows = [{"caption": "a", "reward": 0.9}, {"caption": "b", "reward": 0.5}]
    for form, key in ((None, "weight"), ("mean", "reward")):
        write_labels(tmp_path / "labels.jsonl", [{**r, **({"reward_loss": form} if form else {})} for r in rows])
        tensors, extra = load_task_data(tmp_path / "lat.safetensors", tmp_path / "labels.jsonl")
        assert set(tensors) == {"latent_mean", "latent_std", key} and torch.allclose(tensors[key], torch.tensor([0.9, 0.5]))
    write_labels(tmp_path / "labels.jsonl", [{**rows[0], "reward_loss": "mean"}, rows[1]])
    with pytest.raises(DataError, match=r"labels.jsonl: reward_loss must be one of weighted_mean, mean for all rows"):
        load_task_data(tmp_path / "lat.safetensors", tmp_path / "labels.jsonl")


def test_unet_cross_attention_is_chosen_per_level():
    from tsmflow.models.mini import build_denoiser
    arch = {"channels": [8, 16, 16], "layers_per_block": 1, "head_dim": 8, "norm_groups": 4}
    default = build_denoiser("unet", arch, 4, 16, 16, 16)
    assert [type(b).__name__ for b in default.down_blocks] == ["CrossAttnDownBlock2D"] * 2 + ["DownBlock2D"]
    middle = build_denoiser("unet", {**arch, "cross_attention": [False, True, False]}, 4, 16, 16, 16)
    assert [type(b).__name__ for b in middle.down_blocks] == ["DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
    # the up path mirrors the down path
    assert [type(b).__name__ for b in middle.up_blocks] == ["UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]
    out = middle(torch.randn(2, 4, 16, 16), torch.tensor([1, 500]), encoder_hidden_states=torch.randn(2, 5, 16)).sample
    assert out.shape == (2, 4, 16, 16)
    with pytest.raises(ValueError, match="cross_attention has 2 entries for 3 levels"):
        build_denoiser("unet", {**arch, "cross_attention": [True, False]}, 4, 16, 16, 16)


def test_unet_heads_have_the_configured_width():
    """`head_dim` is a head's width on every backbone; diffusers' UNet takes a head count in its place."""
    from tsmflow.models.mini import build_denoiser
    arch = {"channels": [16, 32], "layers_per_block": 1, "head_dim": 8, "norm_groups": 4,
            "cross_attention": [True, True]}
    unet = build_denoiser("unet", arch, 4, 8, 16, 16)
    for block, width in zip(unet.down_blocks, arch["channels"]):
        attn = block.attentions[0].transformer_blocks[0].attn2
        assert attn.heads == width // 8 and attn.inner_dim // attn.heads == 8
    with pytest.raises(ValueError, match="head_dim 12 does not divide channels"):
        build_denoiser("unet", {**arch, "head_dim": 12}, 4, 8, 16, 16)


def test_seeded_shifts_only_the_seed():
    from tsmflow.training.loop import seeded
    cfg = {"seed": 3, "lr": 0.1}
    assert seeded(cfg, 2, 5) == {"seed": 2008, "lr": 0.1} and cfg == {"seed": 3, "lr": 0.1}
    assert seeded({}, 0)["seed"] == 0
