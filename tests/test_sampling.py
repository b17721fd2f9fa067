"""Sampling: per-image seeds, CFG plumbing, the model_fn hook, decoding."""
import numpy as np
import pytest
import torch

from conftest import save_inception_stand_in
from tsmflow.data.io import load_image, read_labels
from tsmflow.sampling.folders import caption_folder
from tsmflow.sampling.sample import generate, initial_noise


@pytest.mark.parametrize("arch, objective", [("unet", "eps"), ("dit", "eps"), ("mmdit", "flow")])
def test_images_depend_on_seed_not_batching(mini_backbone, arch, objective):
    bb = mini_backbone(arch, objective)
    prompts = ["a red circle", "a blue square", "a red circle"]
    a = generate(bb, prompts, [0, 1, 2], steps=3, guidance_scale=3.0, batch_size=3, progress=False)
    b = generate(bb, prompts, [0, 1, 2], steps=3, guidance_scale=3.0, batch_size=1, progress=False)
    assert a.dtype == np.uint8 and a.shape == (3, 16, 16, 3)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert not np.array_equal(a[0], a[2])  # same prompt, other seed


@pytest.mark.parametrize("arch, objective", [("unet", "eps"), ("mmdit", "flow")])
def test_bf16_precision_runs_the_denoiser_in_bf16_and_stays_near_fp32(mini_backbone, arch, objective):
    bb = mini_backbone(arch, objective)
    dtypes = []

    def spy(x, t, cond):
        out = bb.predict(x, t, cond)
        dtypes.append(out.dtype)
        return out

    prompts, seeds = ["a red circle", "a blue square"], [0, 1]
    kw = dict(steps=3, guidance_scale=3.0, progress=False)
    ref = generate(bb, prompts, seeds, **kw)
    low = generate(bb, prompts, seeds, precision="bf16", model_fn=spy, **kw)
    assert set(dtypes) == {torch.bfloat16}
    assert next(bb.denoiser.parameters()).dtype == torch.float32  # the weights stay fp32
    # a random tiny model, 3 steps: bf16 rounding moves pixels a little, not the image
    assert np.abs(ref.astype(int) - low.astype(int)).mean() < 8
    assert np.array_equal(low, generate(bb, prompts, seeds, precision="bf16", **kw))  # still deterministic
    with pytest.raises(ValueError, match="unknown sampling precision 'fp8'"):
        generate(bb, prompts, seeds, precision="fp8", **kw)


def test_caption_folder_writes_what_generate_makes(mini_backbone, tmp_path):
    """Written batch by batch, the folder holds exactly generate's images, seeds and captions."""
    bb = mini_backbone("unet")
    captions = ["a red circle", "a blue square", "a green triangle", "two red circles", "a blue circle"]
    caption_folder(bb, captions, tmp_path / "fid", seed=7, steps=3, guidance_scale=3.0, batch_size=2)
    expected = generate(bb, captions, list(range(7, 12)), steps=3, guidance_scale=3.0, batch_size=2, progress=False)
    labels = read_labels(tmp_path / "fid/labels.jsonl")
    assert [(r["file"], r["caption"], r["seed"]) for r in labels] == [
        (f"{k:06d}.png", c, 7 + k) for k, c in enumerate(captions)]
    assert np.array_equal(np.stack([load_image(tmp_path / "fid" / r["file"]) for r in labels]), expected)
    # with latents: one sampling pass gives the same images and the latents they decode from, which clean-fid
    # does not mistake for images
    from safetensors.numpy import load_file

    from tsmflow.evaluation.fid import folder_features
    from tsmflow.sampling.folders import LATENTS
    caption_folder(bb, captions, tmp_path / "lat", seed=7, steps=3, guidance_scale=3.0, batch_size=2, latents=True)
    lat = load_file(str(tmp_path / "lat" / LATENTS))["latents"]
    assert lat.shape == (5, *bb.latent_shape)
    assert np.array_equal(lat, generate(bb, captions, list(range(7, 12)), steps=3, guidance_scale=3.0, batch_size=2,
                                        progress=False, latents=True))
    images = np.stack([load_image(tmp_path / "lat" / r["file"]) for r in labels])
    assert np.abs(images.astype(int) - expected.astype(int)).max() <= 1
    assert len(folder_features(None, tmp_path / "lat", feature_space="inception",
                               inception_weights=save_inception_stand_in(tmp_path / "inc.pt"))) == 5


def test_model_fn_sees_every_timestep_and_guidance_pairs(mini_backbone):
    bb = mini_backbone("unet")
    seen = []

    def spy(x, t, cond):
        seen.append(t.clone())
        assert x.shape[0] == 2 * 2 and cond["hidden"].shape[0] == 4  # [uncond; cond]
        return bb.predict(x, t, cond)

    generate(bb, ["a red circle", "a cyan diamond"], [0, 1], steps=5, model_fn=spy, progress=False)
    ts = [int(t[0]) for t in seen]
    assert len(ts) == 5 and ts == sorted(ts, reverse=True) and ts[0] == 999


def test_guidance_changes_the_image(mini_backbone):
    bb = mini_backbone("unet")
    for p in bb.denoiser.parameters():  # make the random model's conditioning matter
        p.data += 0.05 * torch.randn_like(p)
    a = generate(bb, ["a red circle"], [0], steps=3, guidance_scale=0.0, progress=False)
    b = generate(bb, ["a red circle"], [0], steps=3, guidance_scale=8.0, progress=False)
    assert not np.array_equal(a, b)


def test_mismatched_prompts_and_seeds(mini_backbone):
    with pytest.raises(ValueError, match="2 prompts but 1 seeds"):
        generate(mini_backbone("unet"), ["a", "b"], [0], progress=False)


def test_initial_noise_is_per_seed():
    a = initial_noise([3, 4], (4, 8, 8))
    assert torch.equal(a[0], initial_noise([3], (4, 8, 8))[0]) and not torch.equal(a[0], a[1])


def test_caption_folder_resumes_a_killed_job_only_for_the_same_model(mini_backbone, tmp_path):
    """A rerun keeps the batches written before the crash, samples the rest, and ends with the same folder;
    work left by another model (another resume key) is thrown away."""
    bb = mini_backbone("unet")
    captions = ["a red circle", "a blue square", "a green triangle", "two red circles", "a blue circle"]
    kw = dict(seed=7, steps=3, guidance_scale=3.0, batch_size=2)
    caption_folder(bb, captions, tmp_path / "ref", **kw)
    calls = []

    def crash_on_second_batch(x, t, cond):
        calls.append(x.shape[0])
        if len(calls) > 3:  # 3 steps per batch: the second batch dies
            raise RuntimeError("killed")
        return bb.predict(x, t, cond)

    with pytest.raises(RuntimeError, match="killed"):
        caption_folder(bb, captions, tmp_path / "fid", model_fn=crash_on_second_batch, resume_key="model-a", **kw)
    assert not (tmp_path / "fid").exists()
    assert sorted(p.name for p in (tmp_path / ".fid.partial").glob("*.png")) == ["000000.png", "000001.png"]

    def counting(x, t, cond):
        calls.append(x.shape[0])
        return bb.predict(x, t, cond)

    calls.clear()
    caption_folder(bb, captions, tmp_path / "fid", model_fn=counting, resume_key="model-a", **kw)
    assert len(calls) == 2 * 3  # batches 2 and 3 only
    assert not (tmp_path / ".fid.partial").exists()
    assert sorted(p.name for p in (tmp_path / "fid").iterdir()) == sorted(p.name for p in (tmp_path / "ref").iterdir())
    assert read_labels(tmp_path / "fid/labels.jsonl") == read_labels(tmp_path / "ref/labels.jsonl")
    for r in read_labels(tmp_path / "ref/labels.jsonl"):
        assert np.array_equal(load_image(tmp_path / "fid" / r["file"]), load_image(tmp_path / "ref" / r["file"]))

    # another model's partial work is not reused
    calls.clear()
    with pytest.raises(RuntimeError, match="killed"):
        caption_folder(bb, captions, tmp_path / "fid2", model_fn=crash_on_second_batch, resume_key="model-a", **kw)
    calls.clear()
    caption_folder(bb, captions, tmp_path / "fid2", model_fn=counting, resume_key="model-b", **kw)
    assert len(calls) == 3 * 3


@pytest.mark.parametrize("arch, objective", [("unet", "eps"), ("mmdit", "flow")])
@pytest.mark.parametrize("solver", ["first_order", "dpmsolver++", "unipc"])
def test_every_solver_lands_on_the_data_point_an_oracle_denoises_to(mini_backbone, monkeypatch, arch, objective,
                                                                     solver):
    """With data at one point x0, the exact prediction is known in closed form; a correct solver
    (any order, few steps) must end at x0."""
    import tsmflow.sampling.sample as S

    monkeypatch.setattr(S, "decode", lambda bb, x: x.float().numpy())  # keep the final latents
    bb = mini_backbone(arch, objective)
    x0 = 0.5 * torch.randn(1, *bb.latent_shape, generator=torch.Generator().manual_seed(3))

    def oracle(x, t, cond):
        if objective == "flow":
            sigma = (t.float() / bb.num_train_timesteps).view(-1, 1, 1, 1)
            return (x - x0) / sigma  # velocity noise - x0 of x_t = (1 - sigma) x0 + sigma noise
        ab = bb.noise_scheduler.alphas_cumprod[t.long()].view(-1, 1, 1, 1)
        return (x - ab.sqrt() * x0) / (1 - ab).sqrt()

    got = generate(bb, ["a red circle"] * 2, [0, 1], steps=6, guidance_scale=3.0, model_fn=oracle,
                   progress=False, solver=solver)
    err = np.abs(got - x0.numpy()).max()
    if objective == "eps" and solver == "first_order":
        # DDIM without set_alpha_to_one stops at t=0, leaving sqrt(1 - alpha_bar_0) of the noise
        assert err <= 5 * float((1 - bb.noise_scheduler.alphas_cumprod[0]).sqrt())
    else:  # 1e-2: the multistep flow solvers round timesteps to integers, the oracle reads sigma from them
        assert err <= 1e-2


def test_unknown_solver_is_named(mini_backbone):
    with pytest.raises(ValueError, match="euler_a"):
        generate(mini_backbone("unet"), ["a red circle"], [0], steps=2, progress=False, solver="euler_a")


@pytest.mark.parametrize("solver", ["first_order", "renoise"])
def test_latents_are_what_the_images_decode_from(mini_backbone, solver):
    from tsmflow.sampling.sample import decode
    bb = mini_backbone()
    kw = {"solver": solver, "steps": 3, "progress": False, **({"timesteps": [999, 499]} if solver == "renoise" else {})}
    images = generate(bb, ["a red circle", "a blue square"], [0, 1], **kw)
    latents = generate(bb, ["a red circle", "a blue square"], [0, 1], latents=True, **kw)
    assert latents.dtype == np.float32 and latents.shape == (2, *bb.latent_shape)
    with torch.no_grad():
        assert np.abs(decode(bb, torch.from_numpy(latents)).astype(int) - images.astype(int)).max() <= 1
