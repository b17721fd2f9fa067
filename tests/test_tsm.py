"""TimeStep Master: interval routing, expert training, routers, the merge fast path, saved adapters."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from tsmflow.adapters.experts import interval_bounds, interval_of
from tsmflow.adapters.lora import LoraSpec, add_lora, load_lora, lora_parts, save_lora
from tsmflow.adapters.router import ExpertMixture, MergedIntervalExperts, Router, Scale
from tsmflow.data.io import write_labels
from tsmflow.data.prompt_images import select
from tsmflow.expert_sets import ExpertSet, run_expert_sets
from tsmflow.reporting.tables import trainable_summary

T = 1000
LORA_CFG = {"alpha_over_rank": 1.0, "denoiser_targets": ["to_q", "to_k", "to_v", "to_out.0"],
            "text_encoder_targets": ["q_proj", "v_proj"], "caption_dropout": 0.1,
            "train": {"batch_size": 4, "lr": 0.01, "seed": 0}}


# ------------------------------------------------------------------ interval maths


@pytest.mark.parametrize("n", [1, 2, 3, 4, 8, 16])
def test_interval_of_is_eq7_in_diffusers_convention(n):
    # diffusers t = 0..T-1 is the paper's t = 1..T: i = ceil((t + 1) / T * n) - 1 (0-based)
    t = torch.arange(T)
    got = interval_of(t, n, T)
    assert got.tolist() == [math.ceil((k + 1) * n / T) - 1 for k in range(T)]
    for i in range(n):
        lo, hi = interval_bounds(i, n, T)
        assert (got == i).nonzero().flatten().tolist() == list(range(lo, hi))


def test_interval_boundaries_n8():
    t = torch.tensor([0, 124, 125, 249, 250, 874, 875, 999])
    assert interval_of(t, 8, T).tolist() == [0, 0, 1, 1, 2, 6, 7, 7]
    assert interval_bounds(0, 8, T) == (0, 125) and interval_bounds(7, 8, T) == (875, 1000)
    # flow-matching samplers pass float t in [0, T]: floored like the router's E(t) lookup, T clamps
    assert interval_of(torch.tensor([124.9, 125.0, 1000.0]), 8, T).tolist() == [0, 1, 7]
    with pytest.raises(ValueError, match="out of range"):
        interval_bounds(8, 8, T)


def test_expert_set_names_round_trip_and_reject_bad_names():
    es = ExpertSet.parse("unet-gors-n8-r4-s200-seed2")
    assert (es.backbone, es.task, es.n, es.rank, es.steps, es.seed) == ("unet", "gors", 8, 4, 200, 2)
    assert ExpertSet.parse(es.name) == es and ExpertSet.parse("dit-post-n1-r32-s100").seed == 0
    for bad in ["unet-gors-n8-r4", "unet_gors-n8-r4-s1", "unet-gors-n0-r4-s1", "unet-gors-n8-r4-s100-seedx"]:
        with pytest.raises(ValueError):
            ExpertSet.parse(bad)
    spec = {"method": "tsm2", "core": "unet-gors-n8-r4-s1", "context": ["unet-gors-n1-r4-s1"]}
    assert run_expert_sets(spec) == ["unet-gors-n8-r4-s1", "unet-gors-n1-r4-s1"]
    assert run_expert_sets({**spec, "core": None}) == ["unet-gors-n1-r4-s1"]


# ------------------------------------------------------------------ routing maths on one layer


class Toy(nn.Module):
    """One attention-like projection named like the real targets."""

    def __init__(self, d=6):
        super().__init__()
        self.to_q = nn.Linear(d, 5)


def toy_with_experts(names, rank=2, seed=0):
    torch.manual_seed(seed)
    model = Toy()
    spec = LoraSpec(rank=rank, alpha=rank, denoiser_targets=["to_q"], text_encoder_targets=[])
    from peft import inject_adapter_in_model
    for n in names:
        inject_adapter_in_model(spec.config(["to_q"]), model, adapter_name=n)
    for name, p in model.named_parameters():
        if "lora_" in name:
            nn.init.normal_(p, std=0.5)  # non-zero B so every expert changes the output
    return model


def expert_delta(layer, name, x):
    return layer.lora_B[name](layer.lora_A[name](x)) * layer.scaling[name]


def test_zero_router_reproduces_core_and_gates_weight_context_exactly():
    names = ["c0", "c1", "c2", "c3", "ctx"]
    model = toy_with_experts(names)
    layer = model.to_q
    base = layer.base_layer
    core, ctx = Scale(4, ("c0", "c1", "c2", "c3")), Scale(1, ("ctx",))
    mix = ExpertMixture({"m": model}, core, [ctx], T, router_input="both")
    x = torch.randn(5, 3, 6)
    t = torch.tensor([0, 249, 250, 700, 999])
    mix.set_timesteps(t)
    with torch.no_grad():
        out = model.to_q(x)
        want_core = torch.stack([base(x[b]) + expert_delta(layer, f"c{int(interval_of(t[b:b + 1], 4, T))}", x[b])
                                 for b in range(5)])
    assert torch.allclose(out, want_core, atol=1e-6)  # zero-initialised router: exactly the 1-stage core
    assert not torch.allclose(out, base(x), atol=1e-3)
    router = mix.routers["m__to_q"]
    with torch.no_grad():
        router.fc.weight.normal_()
        router.emb.weight.normal_()
        out = model.to_q(x)
        g = router.fc(x.mean(dim=1)) + router.emb(t)  # pooled z_t, E(t): Eq. 6
        want = want_core + g[:, 0].view(-1, 1, 1) * expert_delta(layer, "ctx", x)
    assert torch.allclose(out, want, atol=1e-5)


def test_per_token_symmetric_and_softmax_variants():
    names = ["a0", "a1", "b"]
    model = toy_with_experts(names)
    layer = model.to_q
    x, t = torch.randn(2, 3, 6), torch.tensor([10, 900])
    mix = ExpertMixture({"m": model}, None, [Scale(2, ("a0", "a1")), Scale(1, ("b",))], T, per_token=True)
    mix.set_timesteps(t)
    r = mix.routers["m__to_q"]
    with torch.no_grad():
        r.fc.weight.normal_()
        g = r.fc(x) + r.emb(t).unsqueeze(1)  # (B, L, 2): a gate per token, no core
        want = layer.base_layer(x) + torch.stack([
            g[b, :, 0:1] * expert_delta(layer, f"a{b}", x[b]) + g[b, :, 1:2] * expert_delta(layer, "b", x[b])
            for b in range(2)])
        assert torch.allclose(model.to_q(x), want, atol=1e-5)
    mix.remove()
    moe = ExpertMixture({"m": toy_with_experts(["e0", "e1"])}, None, [Scale(1, ("e0",)), Scale(1, ("e1",))], T,
                        router_input="z", gate="softmax")
    assert moe.routers["m__to_q"].emb is None
    gates = moe.gates("m__to_q", x, t)
    assert torch.allclose(gates, torch.full_like(gates, 0.5))  # zero-init softmax router: uniform


@pytest.mark.parametrize("router_input,has_fc,has_emb", [("both", True, True), ("z", True, False), ("t", False, True)])
def test_router_inputs(router_input, has_fc, has_emb):
    r = Router(6, 2, T, router_input)
    assert (r.fc is not None, r.emb is not None) == (has_fc, has_emb)
    assert all((p == 0).all() for p in r.parameters())
    with torch.no_grad():
        for p in r.parameters():
            p.normal_()
    z = torch.randn(3, 6)
    g1, g2 = r(z, torch.tensor([0, 0, 0])), r(z, torch.tensor([999, 999, 999]))
    assert torch.allclose(g1, g2) == (not has_emb)  # depends on t exactly when E(t) is used
    g3 = r(torch.randn(3, 6), torch.tensor([0, 0, 0]))
    assert torch.allclose(g1, g3) == (not has_fc)
    with pytest.raises(ValueError, match="router_input"):
        Router(6, 2, T, "x")


def test_mixture_requires_route_and_matching_batch():
    model = toy_with_experts(["e0"])
    mix = ExpertMixture({"m": model}, Scale(1, ("e0",)), [], T)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        model.to_q(torch.randn(2, 6))
    mix.set_timesteps(torch.tensor([1, 2, 3]))
    with pytest.raises(RuntimeError, match="3 timesteps for a batch of 2"):
        model.to_q(torch.randn(2, 6))
    with pytest.raises(ValueError, match="lacks experts"):
        ExpertMixture({"m": toy_with_experts(["e0"])}, Scale(1, ("zz",)), [], T)


def test_merge_unmerge_round_trips_to_original_weights():
    model = toy_with_experts(["c0", "c1", "c2", "c3"])
    w0 = model.to_q.base_layer.weight.detach().clone()
    fast = MergedIntervalExperts({"m": model}, Scale(4, ("c0", "c1", "c2", "c3")), T)
    x = torch.randn(2, 6)
    for t in [999, 990, 700, 300, 0]:
        fast.set_timesteps(torch.full((2,), t))
        with torch.no_grad():
            want = model.to_q.base_layer.weight  # merged now: compare with the routed computation
            i = int(interval_of(torch.tensor([t]), 4, T))
            ref = x @ (w0.T) + model.to_q.base_layer.bias + expert_delta(model.to_q, f"c{i}", x)
            assert torch.allclose(model.to_q(x), ref, atol=1e-5)
            assert not torch.allclose(want, w0)
    assert fast.merges == 4  # once per interval change, not per step
    fast.restore()
    assert torch.allclose(model.to_q.base_layer.weight, w0, atol=1e-6)
    # a batch spanning intervals (training-time use) is routed per sample, as if each sample ran alone
    t = torch.tensor([0, 999])
    fast.set_timesteps(t)
    with torch.no_grad():
        mixed = model.to_q(x)
        assert torch.allclose(model.to_q.base_layer.weight, w0, atol=1e-6)  # unmerged meanwhile
        for k in range(2):
            fast.set_timesteps(t[k:k + 1].repeat(2))
            assert torch.allclose(model.to_q(x)[k], mixed[k], atol=1e-5)
    assert fast.per_sample is None  # back on the merged path
    fast.restore()
    assert torch.allclose(model.to_q.base_layer.weight, w0, atol=1e-6)


def test_a_vanilla_lora_run_takes_any_batch_of_timesteps_on_its_merged_weights():
    model = toy_with_experts(["e0"])
    fast = MergedIntervalExperts({"m": model}, Scale(1, ("e0",)), T)
    assert fast.set_timesteps(torch.tensor([0, 500, 999]))  # one interval: merged, no per-sample routing
    assert fast.per_sample is None and fast.merges == 1


# ------------------------------------------------------------------ real denoisers


def _random_lora(bb, names, spec):
    for k, n in enumerate(names):
        torch.manual_seed(k)
        for p in add_lora(bb, n, spec):
            p.data.normal_(0, 0.2)
    return {k: m for k, (m, _) in lora_parts(bb, spec).items()}


@pytest.mark.parametrize("arch,objective", [("unet", "eps"), ("dit", "eps"), ("mmdit", "flow")])
def test_assembled_model_starts_as_1stage_and_fast_path_matches(mini_backbone, arch, objective):
    bb = mini_backbone(arch, objective)
    spec = LoraSpec(rank=2, alpha=2)
    names = ["e0", "e1", "e2", "e3", "ctx"]
    models = _random_lora(bb, names, spec)
    core = Scale(4, tuple(names[:4]))
    x = torch.randn(2, *bb.latent_shape)
    prompts = ["a red circle", "a blue square"]
    outs = {}
    for t in [999, 400, 0]:
        tt = torch.full((2,), t)
        mix = ExpertMixture(models, core, [Scale(1, ("ctx",))], T)
        bb.routers, bb.encode_per_step = [mix], True
        with torch.no_grad():
            bb.route(tt)
            routed = bb.predict(x, tt, bb.encode(prompts))
        mix.remove()
        fast = MergedIntervalExperts(models, core, T)
        bb.routers = [fast]
        with torch.no_grad():
            bb.route(tt)
            merged = bb.predict(x, tt, bb.encode(prompts))
        fast.restore()
        assert torch.allclose(routed, merged, atol=1e-5), t
        outs[t] = merged
    assert not torch.allclose(outs[999], outs[0], atol=1e-4)  # different experts act at different t


def _task_files(tmp_path, bb, n=8):
    c, s, _ = bb.latent_shape
    torch.manual_seed(0)
    save_file({"mean": torch.randn(n, c, s, s), "std": torch.full((n, c, s, s), 0.1)}, str(tmp_path / "lat.safetensors"))
    write_labels(tmp_path / "labels.jsonl", [{"file": f"{i}.png", "caption": "a red circle", "reward": 0.5 + i / 20}
                                             for i in range(n)])
    return tmp_path / "lat.safetensors", tmp_path / "labels.jsonl"


class Recorder:
    def __init__(self):
        self.seen = []

    def set_timesteps(self, t):
        self.seen.append(t.clone())


def test_expert_trains_only_on_its_interval_and_only_lora(mini_backbone, tmp_path):
    from tsmflow.training.experts import train_expert
    bb = mini_backbone("unet")
    before = {n: p.detach().clone() for n, p in bb.denoiser.named_parameters()}
    te_before = {n: p.detach().clone() for n, p in bb.text_encoders[0].named_parameters()}
    rec = Recorder()
    bb.routers.append(rec)
    lat, labels = _task_files(tmp_path, bb)
    es = ExpertSet("unet", "gors", 8, 2, 6)
    stats = train_expert(bb, es, 3, LORA_CFG, lat, labels, tmp_path / "expert3")
    seen = torch.cat(rec.seen)
    assert len(seen) == 6 * 4 and ((seen >= 375) & (seen < 500)).all()
    assert (interval_of(seen, 8, T) == 3).all()
    assert stats["t_range"] == [375, 500] and stats["weighted"]
    for n, p in bb.denoiser.named_parameters():
        if "lora_" in n:
            continue
        assert torch.equal(p, before[n.replace(".base_layer", "")]), n  # the base model is frozen
    lora_b = [p for n, p in bb.denoiser.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # B started at zero and moved
    te_b = [p for n, p in bb.text_encoders[0].named_parameters() if "lora_B" in n]
    assert te_b and any(p.abs().sum() > 0 for p in te_b)
    assert all(torch.equal(p, te_before[n.replace(".base_layer", "")])
               for n, p in bb.text_encoders[0].named_parameters() if "lora_" not in n)
    saved = json.loads((tmp_path / "expert3" / "adapter_config.json").read_text())
    assert saved["interval"] == 3 and saved["expert_set"] == es.name
    assert (tmp_path / "expert3" / "pytorch_lora_weights.safetensors").is_file()


def test_saved_adapter_reloads_identically(mini_backbone, tmp_path):
    bb = mini_backbone("dit")
    spec = LoraSpec(rank=2, alpha=4)
    _random_lora(bb, ["e"], spec)
    (tmp_path / "a").mkdir()
    save_lora(tmp_path / "a", bb, "e", spec)
    bb2 = mini_backbone("dit")
    load_lora(bb2, tmp_path / "a", "e")
    x, t = torch.randn(2, *bb.latent_shape), torch.tensor([5, 500])
    with torch.no_grad():
        a = bb.predict(x, t, bb.encode(["a red circle"] * 2))
        b = bb2.predict(x, t, bb2.encode(["a red circle"] * 2))
        base = mini_backbone("dit")
        c = base.predict(x, t, base.encode(["a red circle"] * 2))
    assert torch.allclose(a, b, atol=1e-6) and not torch.allclose(a, c, atol=1e-4)


def test_expert_loads_into_stock_stable_diffusion_pipeline(tmp_path):
    """An expert saved by itself loads with diffusers' load_lora_weights and acts the same."""
    from test_backbones import build_sd
    from tsmflow.models.backbone import load_backbone

    pipe = build_sd(tmp_path / "sd", sd2=False)
    pipe.save_pretrained(tmp_path / "sd_saved")
    bb = load_backbone({"family": "sd15", "pretrained": str(tmp_path / "sd_saved"), "local_files_only": True})
    spec = LoraSpec(rank=4, alpha=4)
    _random_lora(bb, ["expert"], spec)
    (tmp_path / "lora").mkdir()
    save_lora(tmp_path / "lora", bb, "expert", spec)

    from diffusers import StableDiffusionPipeline
    stock = StableDiffusionPipeline.from_pretrained(tmp_path / "sd_saved")
    stock.load_lora_weights(str(tmp_path / "lora"))
    ids = stock.tokenizer(["a red circle"], padding="max_length", max_length=stock.tokenizer.model_max_length,
                          return_tensors="pt").input_ids
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        h_ours = bb.text_encoders[0](ids)[0]
        h_stock = stock.text_encoder(ids)[0]
        assert torch.allclose(h_ours, h_stock, atol=1e-5)
        ours = bb.denoiser(x, torch.tensor([10]), encoder_hidden_states=h_ours).sample
        theirs = stock.unet(x, torch.tensor([10]), encoder_hidden_states=h_stock).sample
    assert torch.allclose(ours, theirs, atol=1e-5)
    plain = StableDiffusionPipeline.from_pretrained(tmp_path / "sd_saved")
    with torch.no_grad():
        h_plain = plain.text_encoder(ids)[0]
        assert not torch.allclose(plain.unet(x, torch.tensor([10]), encoder_hidden_states=h_plain).sample, theirs,
                                  atol=1e-4)


def test_assembling_trains_only_routers(mini_backbone, tmp_path):
    from tsmflow.runs import load_router
    from tsmflow.training.assemble import assemble_router
    from tsmflow.training.experts import train_expert

    lat, labels = _task_files(tmp_path, mini_backbone("unet"))
    dirs = []
    for es in [ExpertSet("unet", "gors", 2, 2, 2), ExpertSet("unet", "gors", 1, 2, 2)]:
        for i in range(es.n):
            train_expert(mini_backbone("unet"), es, i, LORA_CFG, lat, labels, tmp_path / f"{es.name}_{i}")
            dirs.append(tmp_path / f"{es.name}_{i}")
    spec = {"method": "tsm2", "backbone": "unet", "core": "unet-gors-n2-r2-s2", "context": ["unet-gors-n1-r2-s2"]}
    bb = mini_backbone("unet")
    stats = assemble_router(bb, spec, dirs, {"train": {"steps": 3, "batch_size": 4, "lr": 0.05}}, 0.1, lat, labels,
                            tmp_path / "router")
    assert stats["trainable_params"] == stats["router_params"] > 0
    # experts are exactly as saved; routers moved from zero
    from tsmflow.runs import build_mixture, load_expert_sets, lora_models
    fresh = mini_backbone("unet")
    scales = load_expert_sets(fresh, dirs)
    mix = build_mixture(fresh, spec, scales, lora_models(fresh, dirs[0]))
    load_router(mix, tmp_path / "router")
    assert any(p.abs().sum() > 0 for p in mix.parameters())
    sd_trained = {n: p for n, p in bb.denoiser.named_parameters() if "lora_" in n}
    sd_fresh = dict(fresh.denoiser.named_parameters())
    assert sd_trained and all(torch.equal(p, sd_fresh[n]) for n, p in sd_trained.items())
    summary = trainable_summary(spec, [json.loads((d / "stats.json").read_text()) for d in dirs] +
                                [json.loads((tmp_path / "router" / "stats.json").read_text())])
    assert summary["trainable_params"] == stats["router_params"]
    assert 0 < summary["trainable_pct"] < 100
    # the run's seed changes the routers (init, data order, t draws); the same seed repeats them exactly
    from safetensors.torch import load_file
    from tsmflow.runs import ROUTER_WEIGHTS
    for name, seed in (("again", 0), ("seed1", 1)):
        assemble_router(mini_backbone("unet"), {**spec, "seed": seed}, dirs,
                        {"train": {"steps": 3, "batch_size": 4, "lr": 0.05}}, 0.1, lat, labels, tmp_path / name)
    w0, again, w1 = (load_file(tmp_path / d / ROUTER_WEIGHTS) for d in ("router", "again", "seed1"))
    assert all(torch.equal(w0[k], again[k]) for k in w0)
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)


def test_gors_selection_thresholds_and_rewards():
    import pandas as pd
    scores = pd.DataFrame({"category": ["color", "color", "shape"], "prompt": ["a", "b", "c"],
                           "idx": [0, 0, 0], "file": ["x", "y", "z"], "score": [80.0, 4.0, 10.0]})
    keep = select(scores, {"threshold": {"color": 5, "shape": 50}})
    assert keep["prompt"].tolist() == ["a"] and np.isclose(keep["reward"].iloc[0], 0.8)
    assert select(scores, {"threshold": {"color": 4, "shape": 50}})["prompt"].tolist() == ["a", "b"]  # >=
    with pytest.raises(ValueError, match="shape"):
        select(scores, {"threshold": {"color": 5}})


def test_gors_t2i_compbench_recipe_tiers_by_prompt_line(tmp_path):
    """Its two tiers: prompts first seen before tier_split take the first threshold; a strict >."""
    import pandas as pd
    from tsmflow.data.prompt_images import first_lines
    (tmp_path / "color_train.txt").write_text("a\nb\nc\na\n")
    lines = first_lines({"color": str(tmp_path / "color_train.txt")})
    assert lines == {"color": {"a": 0, "b": 1, "c": 2}}  # a repeat keeps its first line, as theirs does
    scores = pd.DataFrame({"category": ["color"] * 4, "prompt": ["a", "b", "c", "c"], "idx": [0, 1, 2, 3],
                           "file": list("wxyz"), "score": [92.0, 93.0, 70.0, 71.0]})
    cfg = {"recipe": "t2i_compbench", "tier_split": 2, "threshold": {"color": [92, 70]}}
    keep = select(scores, cfg, lines)
    assert keep["idx"].tolist() == [1, 3]  # 92 is not above 92; c is in the second tier, 70 is not above 70
    assert (keep["reward_loss"] == "mean").all() and np.allclose(keep["reward"], [0.93, 0.71])
    with pytest.raises(ValueError, match="needs each prompt's line"):
        select(scores, cfg)


def test_generate_with_merged_and_routed_experts_across_batches(mini_backbone):
    from tsmflow.sampling.sample import generate
    bb = mini_backbone("unet")
    prompts, seeds = ["a red circle", "a blue square", "a green triangle"], [0, 1, 2]
    base = generate(bb, prompts, seeds, steps=3, batch_size=2, progress=False)
    models = _random_lora(bb, ["e0", "e1", "ctx"], LoraSpec(rank=2, alpha=2))
    # n=1 stays merged from one batch to the next: the prompt encoding must still be done per batch
    bb.routers, bb.encode_per_step = [MergedIntervalExperts(models, Scale(1, ("e0",)), T)], True
    lora = generate(bb, prompts, seeds, steps=3, batch_size=2, progress=False)
    bb.routers[0].restore()
    mix = ExpertMixture(models, Scale(2, ("e0", "e1")), [Scale(1, ("ctx",))], T)
    bb.routers = [mix]
    routed = generate(bb, prompts, seeds, steps=3, batch_size=2, progress=False)
    assert lora.shape == routed.shape == base.shape
    assert np.abs(lora.astype(int) - base).max() > 0 and np.abs(routed.astype(int) - lora).max() > 0


def test_moe_lora_trains_experts_and_router_jointly_and_reloads(mini_backbone, tmp_path):
    from types import SimpleNamespace

    from tsmflow.runs import load_run_backbone
    from tsmflow.training.assemble import train_moe_lora
    bb = mini_backbone("unet")
    lat, labels = _task_files(tmp_path, bb)
    spec = {"method": "moe_lora", "backbone": "unet", "task": "gors", "n_experts": 3, "rank": 2, "steps": 3}
    stats = train_moe_lora(bb, spec, LORA_CFG, lat, labels, tmp_path / "moe")
    assert stats["trainable_params"] == stats["router_params"] + stats["expert_params"]
    assert any(p.abs().sum() > 0 for n, p in bb.denoiser.named_parameters() if "lora_B" in n)
    # reload as a run (the fixture saved the base model under tmp_path/unet_eps): same prediction
    base_dirs = SimpleNamespace(model=tmp_path / "unet_eps" / "den", vae=tmp_path / "unet_eps" / "vae",
                                text_encoder=tmp_path / "unet_eps" / "text", router=tmp_path / "moe")
    run_bb = load_run_backbone(spec, base_dirs)
    x, t = torch.randn(2, *bb.latent_shape), torch.tensor([3, 800])
    with torch.no_grad():
        bb.route(t)
        a = bb.predict(x, t, bb.encode(["a red circle"] * 2))
        run_bb.route(t)
        b = run_bb.predict(x, t, run_bb.encode(["a red circle"] * 2))
    assert torch.allclose(a, b, atol=1e-5)


def test_router_on_a_convolution_reads_its_channels_averaged_over_pixels():
    """TSM Sup. A.3 puts LoRA on the UNet's convolutions too: a context expert there is gated by G(mean over
    pixels of its input, t), one gate per sample over the whole feature map."""
    from peft import inject_adapter_in_model
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1))
    spec = LoraSpec(rank=2, alpha=2, denoiser_targets=["0"], text_encoder_targets=[])
    for n in ("c0", "c1", "ctx"):
        inject_adapter_in_model(spec.config(["0"]), model, adapter_name=n)
    for name, p in model.named_parameters():
        if "lora_" in name:
            nn.init.normal_(p, std=0.5)
    layer = model[0]
    mix = ExpertMixture({"m": model}, Scale(2, ("c0", "c1")), [Scale(1, ("ctx",))], T)
    router = mix.routers["m__0"]
    assert router.fc.in_features == 3
    x, t = torch.randn(2, 3, 5, 5), torch.tensor([100, 900])
    mix.set_timesteps(t)
    with torch.no_grad():
        router.fc.weight.normal_()
        router.emb.weight.normal_()
        out = model(x)
        g = router.fc(x.mean(dim=(2, 3))) + router.emb(t)
        core = torch.cat([expert_delta(layer, f"c{b}", x[b:b + 1]) for b in range(2)])
        want = layer.base_layer(x) + core + g[:, 0].view(-1, 1, 1, 1) * expert_delta(layer, "ctx", x)
    assert out.shape == (2, 4, 5, 5) and torch.allclose(out, want, atol=1e-5)
