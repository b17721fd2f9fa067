"""DeMe: range sampling with out-of-range probability p, the consistency loss, task-vector merging, the
merge-weight searches and the before-merge ensemble."""
from __future__ import annotations

import copy
import csv
import math

import numpy as np
import pytest
import torch

from tsmflow.merging.deme import RangeEnsemble, cosine_matrix, grid_search, merge, pattern_search, task_vectors
from tsmflow.merging.fid_search import search_captions
from tsmflow.training.objectives import DiffusionObjective, RangeTimesteps

T = 1000


# ------------------------------------------------------------------ range sampling


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_range_sampler_draws_outside_at_rate_p(p):
    torch.manual_seed(0)
    n = 200_000
    t = RangeTimesteps(250, 500, p, T)(n, "cpu")
    assert t.dtype == torch.long and t.min() >= 0 and t.max() < T
    outside = (t < 250) | (t >= 500)
    tol = 5 * math.sqrt(p * (1 - p) / n) + 1e-12
    assert abs(outside.float().mean().item() - p) <= tol
    if p < 1:  # inside draws cover the range evenly: chi-square within 5 sigma of its 249 degrees of freedom
        counts = torch.bincount(t[~outside] - 250, minlength=250).double()
        assert counts.min() > 0
        e = counts.mean()
        assert ((counts - e) ** 2 / e).sum() < 249 + 5 * math.sqrt(2 * 249)
    if p > 0:  # outside draws come from both sides, in proportion to their sizes (250 below, 500 above)
        below = (t[outside] < 250).float().mean().item()
        assert abs(below - 1 / 3) < 0.01


def test_range_sampler_rejects_bad_settings():
    for bad_p in (1.5, -0.1):
        with pytest.raises(ValueError, match="not in"):
            RangeTimesteps(0, 500, bad_p, T)
    with pytest.raises(ValueError, match="covers every timestep"):
        RangeTimesteps(0, T, 0.3, T)
    with pytest.raises(ValueError, match="non-empty"):
        RangeTimesteps(500, 500, 0.0, T)
    assert (RangeTimesteps(0, T, 0.0, T)(1000, "cpu") < T).all()  # N=1: the whole range, p must be 0


# ------------------------------------------------------------------ consistency loss


def _batch(bb, n=4):
    torch.manual_seed(1)
    c, s, _ = bb.latent_shape
    return {"latent_mean": torch.randn(n, c, s, s), "latent_std": torch.full((n, c, s, s), 0.1),
            "caption": ["a red circle"] * n}


def test_consistency_loss_adds_the_distance_to_the_frozen_teacher(mini_backbone):
    bb = mini_backbone("unet")
    teacher = copy.deepcopy(bb.denoiser)
    batch = _batch(bb)
    plain = DiffusionObjective(bb, caption_dropout=0.0)
    with_teacher = DiffusionObjective(bb, caption_dropout=0.0, teacher=teacher, consistency_weight=2.0)
    torch.manual_seed(5)
    a = plain(batch)
    torch.manual_seed(5)
    b = with_teacher(batch)
    assert torch.equal(a, b)  # the student equals its teacher: the consistency term is exactly 0
    with torch.no_grad():
        for p in bb.denoiser.parameters():
            p.add_(0.01 * torch.randn_like(p))
    # redo the objective's draws to get the same x_t, t and condition, and compute the term by hand
    torch.manual_seed(5)
    x0 = batch["latent_mean"] + batch["latent_std"] * torch.randn_like(batch["latent_mean"])
    [torch.rand(()) for _ in range(4)]  # the caption-dropout draws
    t = torch.randint(0, T, (4,))
    cond = bb.encode(batch["caption"])
    noise = torch.randn_like(x0)
    xt = bb.noise_scheduler.add_noise(x0, noise, t)
    with torch.no_grad():
        per_sample = 2.0 * ((bb.predict(xt, t, cond) - bb.predict(xt, t, cond, denoiser=teacher)) ** 2).mean((1, 2, 3))
    assert per_sample.min() > 0
    torch.manual_seed(5)
    a = plain(batch)
    torch.manual_seed(5)
    b = with_teacher(batch)
    torch.testing.assert_close(b - a, per_sample.mean(), rtol=1e-4, atol=1e-7)
    # a per-sample loss weight (GORS) weights the consistency term like the denoising term
    w = torch.tensor([1.0, 0.0, 2.0, 0.5])
    with torch.no_grad():
        torch.manual_seed(5)
        aw = plain({**batch, "weight": w})
        torch.manual_seed(5)
        bw = with_teacher({**batch, "weight": w})
    torch.testing.assert_close(bw - aw, (per_sample * w).sum() / w.sum(), rtol=1e-4, atol=1e-7)
    b.backward()
    assert all(p.grad is None for p in teacher.parameters()) and "teacher" not in dict(with_teacher.named_modules())


# ------------------------------------------------------------------ merging


def _states(n=3):
    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(4, 3, generator=g), "b": torch.randn(3, generator=g), "steps": torch.tensor([7])}
    models = [{"w": base["w"] + torch.randn(4, 3, generator=g) * 0.1, "b": base["b"] * (1 + i),
               "steps": torch.tensor([7])} for i in range(n)]
    return base, models


def test_merge_with_zero_and_unit_weights_is_exact():
    base, models = _states()
    taus = task_vectors(base, models)
    assert all(torch.equal(v, base[k]) for k, v in merge(base, taus, [0, 0, 0]).items())
    for i in range(3):
        e = [0.0] * 3
        e[i] = 1.0
        assert all(torch.equal(v, models[i][k]) for k, v in merge(base, taus, e).items()), i
    w = [0.2, -0.5, 1.3]
    m = merge(base, taus, w)
    expected = base["w"].double() + sum(wi * (mi["w"].double() - base["w"].double()) for wi, mi in zip(w, models))
    torch.testing.assert_close(m["w"], expected.float())
    assert m["w"].dtype == torch.float32 and torch.equal(m["steps"], base["steps"])


def test_merge_rejects_mismatched_models():
    base, models = _states(1)
    with pytest.raises(ValueError, match="keys differ"):
        task_vectors(base, [{"w": models[0]["w"]}])
    with pytest.raises(ValueError, match="non-float entry 'steps'"):
        task_vectors(base, [{**models[0], "steps": torch.tensor([8])}])
    with pytest.raises(ValueError, match="shape"):
        task_vectors(base, [{**models[0], "b": models[0]["b"][None]}])  # would broadcast silently
    with pytest.raises(ValueError, match="2 weights for 1"):
        merge(base, task_vectors(base, models), [1, 1])
    tau = task_vectors(base, models)[0]
    with pytest.raises(ValueError, match="task vector 1 does not match"):
        merge(base, [tau, {"w": tau["w"]}], [1, 1])


def test_cosine_matrix():
    taus = [{"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.0])},
            {"a": torch.tensor([1.0, 1.0]), "b": torch.tensor([0.0])},
            {"a": torch.tensor([0.0, 0.0]), "b": torch.tensor([2.0])}]
    c = cosine_matrix(taus)
    np.testing.assert_allclose(np.diag(c), 1.0, atol=1e-12)
    np.testing.assert_allclose(c, c.T)
    assert c[0, 1] == pytest.approx(1 / math.sqrt(2)) and c[0, 2] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="same entries"):
        cosine_matrix([taus[0], {"a": torch.tensor([1.0, 0.0])}])


# ------------------------------------------------------------------ searching the weights

OPT = (0.5, 1.0, 0.0, 0.5)


def _quadratic(w):
    return sum((wi - oi) ** 2 * (i + 1) for i, (wi, oi) in enumerate(zip(w, OPT))) + 3.0


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_grid_and_pattern_search_find_the_optimum_and_log_every_evaluation(tmp_path):
    grid = grid_search(_quadratic, 4, 0.0, 1.5, 0.5, tmp_path / "grid.csv")
    assert grid.best_weights == OPT and grid.best_objective == 3.0 and grid.n_evals == 4 ** 4
    pattern = pattern_search(_quadratic, 4, 0.0, 1.5, 0.5, 0.125, 1.5, tmp_path / "pattern.csv")
    assert pattern.best_weights == OPT and pattern.best_objective == 3.0 and pattern.n_evals < grid.n_evals / 4
    for path, res in [(tmp_path / "grid.csv", grid), (tmp_path / "pattern.csv", pattern)]:
        rows = _rows(path)
        assert list(rows[0]) == ["eval", "phase", "w0", "w1", "w2", "w3", "objective", "seconds"]
        assert len(rows) == res.n_evals
        points = [tuple(float(r[f"w{i}"]) for i in range(4)) for r in rows]
        assert len(set(points)) == len(points)  # memoised: no point evaluated twice
        assert min(float(r["objective"]) for r in rows) == res.best_objective
    assert {r["phase"] for r in _rows(tmp_path / "pattern.csv")} >= {"step=0.5", "step=0.25"}


def test_pattern_search_respects_the_box_and_max_evals(tmp_path):
    seen = []

    def f(w):
        seen.append(w)
        return _quadratic(w)

    res = pattern_search(f, 4, 0.0, 1.0, 0.5, 0.125, 0.5, tmp_path / "p.csv", max_evals=7)
    assert res.n_evals == len(seen) == 7
    assert all(0.0 <= x <= 1.0 for w in seen for x in w)
    with pytest.raises(ValueError, match="min_step"):
        pattern_search(f, 2, 0.0, 1.0, 0.5, 1.0, 0.5, tmp_path / "q.csv")
    with pytest.raises(ValueError, match="max_evals=0"):
        pattern_search(f, 2, 0.0, 1.0, 0.5, 0.25, 0.5, tmp_path / "q.csv", max_evals=0)
    with pytest.raises(ValueError, match="not a point of the box"):
        pattern_search(f, 2, 0.0, 1.0, 0.5, 0.25, 2.0, tmp_path / "q.csv")


# ------------------------------------------------------------------ before merging


def test_search_captions_never_overlap_the_final_fid_captions():
    captions = [f"c{k}" for k in range(10)]
    assert search_captions(captions, 3, 7) == ["c7", "c8", "c9"]  # final FID samples c0..c6
    assert not set(search_captions(captions, 4, 6)) & set(captions[:6])
    with pytest.raises(ValueError, match=r"deme.search.n_samples=4 \+ evaluation.fid.n_samples=7 exceed the 10"):
        search_captions(captions, 4, 7)


def test_range_ensemble_switches_models_by_timestep_and_restores(mini_backbone):
    bb = mini_backbone("dit")
    base = {k: v.clone() for k, v in bb.denoiser.state_dict().items()}
    other = {k: (v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v) for k, v in base.items()}
    ens = RangeEnsemble(bb.denoiser, [base, other], T)
    assert ens.ranges == [(0, 500), (500, 1000)]
    bb.routers.append(ens)
    ref = copy.deepcopy(bb.denoiser)
    x = torch.randn(2, *bb.latent_shape)
    cond = bb.encode(["a red circle"] * 2)
    with torch.no_grad():
        for t, sd in [(100, base), (700, other), (999, other), (0, base)]:
            tt = torch.tensor([t, t])
            bb.route(tt)
            ref.load_state_dict(sd)
            assert torch.equal(bb.predict(x, tt, cond), bb.predict(x, tt, cond, denoiser=ref)), t
        assert ens.switches == 3
        with pytest.raises(ValueError, match="one timestep per call"):
            bb.route(torch.tensor([100, 700]))
    ens.restore()
    assert all(torch.equal(v, base[k]) for k, v in bb.denoiser.state_dict().items())
    with pytest.raises(ValueError, match="range model 1 does not match"):
        RangeEnsemble(bb.denoiser, [base, {k: v for k, v in other.items() if k != next(iter(other))}], T)
