"""Further training stages: full fine-tuning with snapshots, DMP / prompt tuning, DeMe range models, and
loading every such run the way the sampling rules do."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from tsmflow.data.io import write_labels
from tsmflow.models.backbone import load_mini_backbone
from tsmflow.reporting.tables import trainable_summary
from tsmflow.runs import load_run_backbone

TRAIN = {"batch_size": 4, "lr": 0.001, "seed": 0, "checkpoint_every": 1}


def _task_files(tmp_path, bb, n=8):
    c, s, _ = bb.latent_shape
    torch.manual_seed(0)
    save_file({"mean": torch.randn(n, c, s, s), "std": torch.full((n, c, s, s), 0.1)}, str(tmp_path / "lat.safetensors"))
    write_labels(tmp_path / "labels.jsonl", [{"file": f"{i}.png", "caption": "a red circle"} for i in range(n)])
    return tmp_path / "lat.safetensors", tmp_path / "labels.jsonl"


def _predict(bb, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, *bb.latent_shape, generator=g)
    with torch.no_grad():
        return bb.predict(x, torch.tensor([10, 900]), bb.encode(["a red circle", ""]))


@pytest.fixture
def unet_dirs(tmp_path):
    from conftest import _mini_components
    return _mini_components(tmp_path / "unet", "unet")


def test_full_finetune_trains_the_denoiser_only_and_saves_snapshots(unet_dirs, tmp_path):
    from tsmflow.training.finetune import full_finetune
    den, vae, text = unet_dirs
    bb = load_mini_backbone("unet", den, vae, text)
    te_before = {n: p.clone() for n, p in bb.text_encoders[0].named_parameters()}
    lat, labels = _task_files(tmp_path, bb)
    stats = full_finetune(bb, {"train": TRAIN, "steps": 3, "snapshots": [1, 2]}, lat, labels, tmp_path / "ft", 0.1)
    assert stats["method"] == "full" and stats["snapshots"] == [1, 2]
    assert stats["trainable_params"] == sum(p.numel() for p in bb.denoiser.parameters())
    assert all(torch.equal(p, te_before[n]) for n, p in bb.text_encoders[0].named_parameters())
    weights = {k: load_file(str(tmp_path / d / "diffusion_pytorch_model.safetensors"))
               for k, d in [("base", den), ("s1", "ft/step1"), ("s2", "ft/step2"), ("end", "ft")]}
    key = next(k for k in weights["base"] if k.endswith("to_q.weight"))
    values = [weights[k][key] for k in ("base", "s1", "s2", "end")]
    assert all(not torch.equal(a, b) for a, b in zip(values, values[1:]))  # every snapshot is a later model
    assert not list(tmp_path.glob(".ft.ckpt"))  # checkpoints (and snapshot copies) removed once done
    with pytest.raises(ValueError, match="snapshot steps"):
        full_finetune(load_mini_backbone("unet", den, vae, text), {"train": TRAIN, "steps": 3, "snapshots": [3]},
                      lat, labels, tmp_path / "bad", 0.1)


def test_deme_range_model_samples_outside_its_range_and_lora_variant_merges(unet_dirs, tmp_path):
    from tsmflow.training.finetune import train_range_model
    den, vae, text = unet_dirs
    bb = load_mini_backbone("unet", den, vae, text)
    lat, labels = _task_files(tmp_path, bb)
    seen = []
    bb.routers.append(SimpleNamespace(set_timesteps=lambda t: seen.append(t.clone())))
    cfg = {"train": {**TRAIN, "batch_size": 8}, "steps": 25, "p": 0.3, "consistency_weight": 1.0,
           "variant": "lora", "rank": 2, "lora_targets": ["to_q", "to_k", "to_v", "to_out.0"]}
    stats = train_range_model(bb, cfg, 4, 1, lat, labels, tmp_path / "range1", 0.1)
    t = torch.cat(seen)
    inside = ((t >= 250) & (t < 500)).float().mean().item()
    assert stats["range"] == [250, 500] and 0.5 < inside < 0.9  # p=0.3 out of range, 200 draws
    assert stats["trainable_params"] < stats["model_params"] / 10  # LoRA only
    # the saved plain model computes what the trained LoRA model computes
    merged = load_mini_backbone("unet", tmp_path / "range1", vae, text)
    torch.testing.assert_close(_predict(merged), _predict(bb), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(_predict(merged), _predict(load_mini_backbone("unet", den, vae, text)), atol=1e-6)


def test_dmp_training_moves_only_prompts_and_gate_and_reloads(tmp_path):
    from conftest import _mini_components
    from tsmflow.adapters.dmp import load_dmp
    from tsmflow.training.finetune import train_dmp
    den, vae, text = _mini_components(tmp_path / "dit", "dit")
    bb = load_mini_backbone("dit", den, vae, text)
    before = {n: p.clone() for n, p in bb.denoiser.named_parameters()}
    lat, labels = _task_files(tmp_path, bb)
    cfg = {"train": {**TRAIN, "lr": 0.05}, "steps": 3, "snapshots": [2], "importance_weight": 1.0, "load_weight": 1.0}
    stats = train_dmp(bb, cfg, lat, labels, tmp_path / "dmp", 0.1)
    assert all(torch.equal(p, before[n]) for n, p in bb.denoiser.named_parameters())  # the backbone is frozen
    assert stats["method"] == "dmp" and 0 < stats["trainable_params"] < stats["model_params"]
    patched = _predict(bb)
    fresh = load_mini_backbone("dit", den, vae, text)
    base = _predict(fresh)
    load_dmp(fresh, tmp_path / "dmp")
    assert torch.equal(_predict(fresh), patched) and not torch.allclose(patched, base, atol=1e-6)
    assert (tmp_path / "dmp" / "step2" / "dmp.safetensors").is_file()


def test_runs_load_finetune_and_deme_models(unet_dirs, tmp_path):
    """A finetune run loads its weights (or snapshot); the ensemble switches range models by t."""
    den, vae, text = unet_dirs
    base = load_mini_backbone("unet", den, vae, text)
    other = load_mini_backbone("unet", den, vae, text)
    with torch.no_grad():
        for p in other.denoiser.parameters():
            p.add_(0.01 * torch.randn_like(p))
    d1 = tmp_path / "r1"
    other.denoiser.save_pretrained(d1)
    other.noise_scheduler.save_pretrained(d1 / "scheduler")
    (tmp_path / "ft").mkdir()
    other.denoiser.save_pretrained(tmp_path / "ft" / "step5")
    spec = {"backbone": "unet", "method": "finetune", "finetune": "x", "step": 5}
    bb = load_run_backbone(spec, SimpleNamespace(model=tmp_path / "ft", vae=vae, text_encoder=text))
    torch.testing.assert_close(_predict(bb), _predict(other))
    ens = load_run_backbone({"backbone": "unet", "method": "deme_ensemble", "deme": "x"},
                            SimpleNamespace(model=den, vae=vae, text_encoder=text, ranges=[den, d1]))
    x = torch.randn(1, *ens.latent_shape)
    cond = ens.encode(["a red circle"])
    with torch.no_grad():
        for t, ref in [(900, other), (10, base)]:  # t=900 is in range 1 of 2
            tt = torch.tensor([t])
            ens.route(tt)
            torch.testing.assert_close(ens.predict(x, tt, cond), ref.predict(x, tt, ref.encode(["a red circle"])))
    assert trainable_summary({"method": "deme_merged"}, [{"trainable_params": 5, "model_params": 100}] * 4) == \
        {"trainable_params": 20, "trainable_pct": 20.0}
    assert trainable_summary({"method": "base"}, []) == {}


def test_dmp_from_scratch_trains_prompts_and_a_fresh_denoiser_that_starts_as_the_plain_run_does(tmp_path):
    """DMP Table 6: both jobs start from the same fresh denoiser; with DMP, prompts and denoiser both train, and a
    run loads the job's own denoiser and patch, at its end or at a snapshot."""
    from conftest import _mini_components
    from tsmflow.training.finetune import train_scratch
    den, vae, text = _mini_components(tmp_path / "dit", "dit")
    arch = {"arch": {"patch_size": 1, "layers": 1, "heads": 2, "head_dim": 8}, "objective": "eps",
            "num_train_timesteps": 1000}
    lat, labels = _task_files(tmp_path, load_mini_backbone("dit", den, vae, text))
    cfg = {"train": TRAIN, "steps": 3, "snapshots": [1]}
    plain = train_scratch(load_mini_backbone("dit", None, vae, text), cfg, arch, lat, labels, tmp_path / "plain", 0.1)
    bb = load_mini_backbone("dit", None, vae, text)
    patched = train_scratch(bb, {**cfg, "with_dmp": True, "importance_weight": 1.0}, arch, lat, labels,
                            tmp_path / "dmp", 0.1)
    assert plain["trainable_params"] == plain["denoiser_params"]
    assert patched["trainable_params"] > patched["denoiser_params"] == plain["denoiser_params"]
    w = {k: load_file(str(tmp_path / d / "diffusion_pytorch_model.safetensors"))
         for k, d in [("plain", "plain"), ("dmp", "dmp"), ("dmp1", "dmp/step1"), ("pre", den)]}
    key = next(k for k in w["plain"] if k.endswith("to_q.weight"))
    assert not torch.equal(w["dmp"][key], w["pre"][key]) and not torch.equal(w["dmp1"][key], w["dmp"][key])
    # at lr 0 nothing moves: both jobs start from the same fresh denoiser (the seed sets it, not the patch)
    still = {**cfg, "train": {**TRAIN, "lr": 0.0}, "snapshots": []}
    for name, extra in [("p0", {}), ("d0", {"with_dmp": True})]:
        train_scratch(load_mini_backbone("dit", None, vae, text), {**still, **extra}, arch, lat, labels,
                      tmp_path / name, 0.1)
    w0 = [load_file(str(tmp_path / n / "diffusion_pytorch_model.safetensors")) for n in ("p0", "d0")]
    assert all(torch.equal(w0[0][k], w0[1][k]) for k in w0[0])
    prompts = load_file(str(tmp_path / "dmp" / "dmp.safetensors"))
    assert any(v.abs().sum() > 0 for k, v in prompts.items() if "prompt" in k)  # prompts start at 0: they trained
    run = {"backbone": "dit", "method": "finetune", "finetune": "x"}
    for step, d in [(None, tmp_path / "dmp"), (1, tmp_path / "dmp" / "step1")]:
        spec = {**run, **({"step": step} if step else {})}
        loaded = load_run_backbone(spec, SimpleNamespace(model=tmp_path / "dmp", dmp=tmp_path / "dmp", vae=vae,
                                                         text_encoder=text))
        assert torch.equal(loaded.denoiser.state_dict()[key], load_file(
            str(d / "diffusion_pytorch_model.safetensors"))[key])
    # the patch acts: the end model with its patch differs from the same denoiser alone
    with_patch = load_run_backbone(run, SimpleNamespace(model=tmp_path / "dmp", dmp=tmp_path / "dmp", vae=vae,
                                                        text_encoder=text))
    alone = load_run_backbone(run, SimpleNamespace(model=tmp_path / "dmp", vae=vae, text_encoder=text))
    assert torch.equal(with_patch.denoiser.state_dict()[key], alone.denoiser.state_dict()[key])
    assert not torch.allclose(_predict(with_patch), _predict(alone), atol=1e-7)
