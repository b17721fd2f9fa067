"""The real-model loading path (`load_backbone` -> `load_pipeline_backbone`) on tiny random pipelines.

For each family a tiny random pipeline of the family's real diffusers pipeline class
(with the family's real text-encoder and tokenizer classes) is built in code, saved
with `save_pretrained`, and loaded back only through
`load_backbone({"family": ..., "pretrained": dir, "local_files_only": True})`,
exactly as a cluster run loads the hub checkpoint. Nothing is downloaded: the
tokenizers come from tiny vocab/merges files written next to the test.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    PixArtAlphaPipeline,
    PixArtTransformer2DModel,
    PNDMScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from tsmflow.models.backbone import FAMILIES, Backbone, load_backbone
from tsmflow.sampling.sample import generate
from tsmflow.training.objectives import DiffusionObjective

PROMPTS = ["a red circle", "a blue square"]
IMAGE_SIZE = 32  # pixels; every tiny VAE below downsamples 4x -> 8x8 latents
CLIP_MAX_LEN = 16
EXPECTED = {  # family -> (arch, objective, latent channels)
    "sd15": ("unet", "eps", 4),
    "sd2": ("unet", "v", 4),
    "pixart_alpha": ("dit", "eps", 4),
    "sd3": ("mmdit", "flow", 16),
}
FAMILY_NAMES = list(EXPECTED)
assert sorted(FAMILY_NAMES) == sorted(FAMILIES)


# ---------------------------------------------------------------- tiny tokenizers, built offline


def _byte_chars() -> list[str]:
    """GPT-2 / CLIP byte-to-unicode table: the base alphabet of a byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def clip_tokenizer(dirpath, pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """A CLIP BPE tokenizer from a tiny vocab.json / merges.txt written to `dirpath`."""
    dirpath.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {}
    for c in _byte_chars():
        vocab.setdefault(c, len(vocab))
    for c in _byte_chars():
        vocab.setdefault(c + "</w>", len(vocab))
    merges = ["r e", "re d</w>", "c i", "ci r", "b l", "bl u", "q u", "a r"]
    for m in merges:
        vocab.setdefault(m.replace(" ", ""), len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    (dirpath / "vocab.json").write_text(json.dumps(vocab))
    (dirpath / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(vocab=str(dirpath / "vocab.json"), merges=str(dirpath / "merges.txt"),
                         pad_token=pad_token, model_max_length=CLIP_MAX_LEN)


def t5_tokenizer(dirpath) -> T5Tokenizer:
    """T5's own (tokenizers-backed Unigram) tokenizer from a tiny vocab written to `dirpath`.

    No sentencepiece model is needed: transformers' T5Tokenizer builds its Unigram
    model from a list of (piece, log-probability) pairs.
    """
    dirpath.mkdir(parents=True, exist_ok=True)
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(f"▁{w}", -3.0) for w in ("a", "red", "blue", "circle", "square")]
    pieces += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    (dirpath / "unigram.json").write_text(json.dumps(pieces))
    vocab = [tuple(p) for p in json.loads((dirpath / "unigram.json").read_text())]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=120)


def clip_text_config(tok: CLIPTokenizer, hidden: int, projection: int = 16, act: str = "quick_gelu") -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=CLIP_MAX_LEN, projection_dim=projection,
                          hidden_act=act, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id)


def save_tiny_clip(dirpath) -> Path:
    """A tiny random transformers CLIP with its processor (CLIP score at real scale: evaluation.clip.pretrained)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor
    tokenizer = clip_tokenizer(Path(dirpath) / "tokenizer")
    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=clip_text_config(tokenizer, 32).to_dict(),
                     vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1,
                                    "num_attention_heads": 2, "image_size": 30, "patch_size": 6,
                                    "projection_dim": 16}, projection_dim=16)
    CLIPModel(cfg).save_pretrained(dirpath)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 30}, crop_size=30),
                  tokenizer=tokenizer).save_pretrained(dirpath)
    return Path(dirpath)


# ---------------------------------------------------------------- tiny VAEs and pipelines


def tiny_vae(latent_channels: int = 4, **kw) -> AutoencoderKL:
    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16, 16), layers_per_block=1,
                         down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                         latent_channels=latent_channels, norm_num_groups=8, sample_size=IMAGE_SIZE, **kw)


def tiny_unet(sd2: bool) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8,
        # SD2's UNet: per-block head counts and linear projections in its transformer blocks
        attention_head_dim=(2, 4) if sd2 else 8, use_linear_projection=sd2)


def build_sd(tmp, sd2: bool) -> StableDiffusionPipeline:
    tok = clip_tokenizer(tmp / "tok", pad_token="!" if sd2 else "<|endoftext|>")
    text_encoder = CLIPTextModel(clip_text_config(tok, 32, act="gelu" if sd2 else "quick_gelu"))
    sched_kw = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    scheduler = (DDIMScheduler(prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False, **sched_kw)
                 if sd2 else PNDMScheduler(skip_prk_steps=True, **sched_kw))
    return StableDiffusionPipeline(vae=tiny_vae(scaling_factor=0.18215), text_encoder=text_encoder, tokenizer=tok,
                                   unet=tiny_unet(sd2), scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def build_pixart(tmp) -> PixArtAlphaPipeline:
    tok = t5_tokenizer(tmp / "tok")
    text_encoder = T5EncoderModel(T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=37, num_layers=2,
                                           num_heads=4, relative_attention_num_buckets=8, pad_token_id=0,
                                           eos_token_id=1, decoder_start_token_id=0))
    transformer = PixArtTransformer2DModel(
        sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=2, caption_channels=32,
        in_channels=4, out_channels=8, cross_attention_dim=16, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6)
    scheduler = DPMSolverMultistepScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                                            prediction_type="epsilon", num_train_timesteps=1000)
    return PixArtAlphaPipeline(tokenizer=tok, text_encoder=text_encoder, vae=tiny_vae(scaling_factor=0.18215),
                               transformer=transformer, scheduler=scheduler)


def build_sd3(tmp) -> StableDiffusion3Pipeline:
    tok1, tok2 = clip_tokenizer(tmp / "tok1"), clip_tokenizer(tmp / "tok2", pad_token="!")
    te1 = CLIPTextModelWithProjection(clip_text_config(tok1, 32, projection=16))
    te2 = CLIPTextModelWithProjection(clip_text_config(tok2, 32, projection=16, act="gelu"))
    latent_channels = 16
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=latent_channels, out_channels=latent_channels, num_layers=2,
        attention_head_dim=8, num_attention_heads=4, joint_attention_dim=64,  # = 32 + 32 (both CLIPs' hidden)
        caption_projection_dim=32, pooled_projection_dim=32,  # = 16 + 16 (both CLIPs' projections)
        pos_embed_max_size=16)
    vae = tiny_vae(latent_channels, scaling_factor=1.5305, shift_factor=0.0609,
                   use_quant_conv=False, use_post_quant_conv=False)
    tok3 = t5_tokenizer(tmp / "tok3")  # T5-XXL's role: its d_model is the joint attention width
    te3 = T5EncoderModel(T5Config(vocab_size=len(tok3), d_model=64, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                  relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                                  decoder_start_token_id=0))
    return StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=vae, text_encoder=te1, tokenizer=tok1, text_encoder_2=te2, tokenizer_2=tok2,
                                    text_encoder_3=te3, tokenizer_3=tok3)


def build_pipeline(family: str, tmp):
    torch.manual_seed(0)
    pipe = {"sd15": lambda: build_sd(tmp, sd2=False), "sd2": lambda: build_sd(tmp, sd2=True),
            "pixart_alpha": lambda: build_pixart(tmp), "sd3": lambda: build_sd3(tmp)}[family]()
    # zero-initialised layers (adaLN-zero, output projections) would make the denoiser's output
    # and most of its gradients trivially zero; perturb every weight so both are informative
    denoiser = pipe.transformer if hasattr(pipe, "transformer") else pipe.unet
    with torch.no_grad():
        for p in denoiser.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return pipe


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def saved(request, tmp_path_factory):
    """(family, saved directory, the state dicts of what was saved), one tiny pipeline per family."""
    family = request.param
    tmp = tmp_path_factory.mktemp(family)
    pipe = build_pipeline(family, tmp / "tokenizer_src")
    path = tmp / "pipeline"
    pipe.save_pretrained(path)
    states = {name: {k: v.detach().clone() for k, v in module.state_dict().items()}
              for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)}
    return family, path, states


@pytest.fixture
def backbone(saved) -> Backbone:
    family, path, _ = saved
    torch.manual_seed(0)
    return load_backbone({"family": family, "pretrained": str(path), "local_files_only": True})


def _denoiser_name(family: str) -> str:
    return FAMILIES[family][2]


# ---------------------------------------------------------------- tests


def test_arch_objective_and_latent_shape(saved, backbone):
    family = saved[0]
    arch, objective, channels = EXPECTED[family]
    assert backbone.family == family
    assert backbone.arch == arch
    assert backbone.objective == objective
    assert backbone.latent_shape == (channels, 8, 8)
    assert backbone.num_train_timesteps == 1000
    if family == "sd3":
        assert isinstance(backbone.noise_scheduler, FlowMatchEulerDiscreteScheduler)
        assert backbone.noise_scheduler.config.shift == 3.0
    else:  # training uses the DDPM schedule with the pipeline's betas
        assert type(backbone.noise_scheduler).__name__ == "DDPMScheduler"
        assert backbone.noise_scheduler.config.beta_schedule == ("linear" if family == "pixart_alpha"
                                                                 else "scaled_linear")
    assert [type(m).__name__ for m in backbone.text_encoders] == {
        "sd15": ["CLIPTextModel"], "sd2": ["CLIPTextModel"], "pixart_alpha": ["T5EncoderModel"],
        "sd3": ["CLIPTextModelWithProjection", "CLIPTextModelWithProjection", "T5EncoderModel"]}[family]
    # the denoiser trains; the VAE and text encoders are frozen
    assert all(p.requires_grad for p in backbone.denoiser.parameters())
    for m in [backbone.vae, *backbone.text_encoders]:
        assert not any(p.requires_grad for p in m.parameters())
        assert not m.training


REAL_CLASSES = {  # family -> model_index.json entries of the saved pipeline
    "sd15": {"_class_name": "StableDiffusionPipeline", "unet": "UNet2DConditionModel", "text_encoder": "CLIPTextModel",
             "tokenizer": "CLIPTokenizer", "scheduler": "PNDMScheduler"},
    "sd2": {"_class_name": "StableDiffusionPipeline", "unet": "UNet2DConditionModel", "text_encoder": "CLIPTextModel",
            "tokenizer": "CLIPTokenizer", "scheduler": "DDIMScheduler"},
    "pixart_alpha": {"_class_name": "PixArtAlphaPipeline", "transformer": "PixArtTransformer2DModel",
                     "text_encoder": "T5EncoderModel", "tokenizer": "T5Tokenizer",
                     "scheduler": "DPMSolverMultistepScheduler"},
    "sd3": {"_class_name": "StableDiffusion3Pipeline", "transformer": "SD3Transformer2DModel",
            "text_encoder": "CLIPTextModelWithProjection", "text_encoder_2": "CLIPTextModelWithProjection",
            "tokenizer": "CLIPTokenizer", "tokenizer_2": "CLIPTokenizer", "text_encoder_3": "T5EncoderModel",
            "tokenizer_3": "T5Tokenizer",
            "scheduler": "FlowMatchEulerDiscreteScheduler"},
}


def test_saved_pipeline_uses_real_classes(saved):
    """The checkpoint on disk is the family's real pipeline, and its tokenizers reload offline."""
    family, path, _ = saved
    index = json.loads((path / "model_index.json").read_text())
    for name, cls in REAL_CLASSES[family].items():
        got = index[name] if name == "_class_name" else index[name][1]
        assert got == cls, name
    tok_cls = T5Tokenizer if family == "pixart_alpha" else CLIPTokenizer
    for sub in ("tokenizer", "tokenizer_2") if family == "sd3" else ("tokenizer",):
        tok = tok_cls.from_pretrained(path / sub, local_files_only=True)
        ids = tok(PROMPTS).input_ids
        assert ids[0] != ids[1]
        # no unknown tokens: the ids decode back to the prompts
        assert [tok.decode(row, skip_special_tokens=True).strip() for row in ids] == PROMPTS


def test_loaded_weights_equal_saved(saved, backbone):
    family, _, states = saved
    loaded = {_denoiser_name(family): backbone.denoiser, "vae": backbone.vae}
    names = ["text_encoder", "text_encoder_2", "text_encoder_3"] if family == "sd3" else ["text_encoder"]
    loaded.update(zip(names, backbone.text_encoders))
    assert set(loaded) == set(states)
    for name, module in loaded.items():
        got, want = module.state_dict(), states[name]
        assert set(got) == set(want), name
        for k in want:
            assert torch.equal(got[k], want[k]), f"{name}.{k} differs from the saved weights"
    # and the saved state dict loads strictly into the loaded denoiser's architecture
    result = backbone.denoiser.load_state_dict(states[_denoiser_name(family)], strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_encode(saved, backbone):
    family = saved[0]
    cond = backbone.encode(PROMPTS)
    hidden = cond["hidden"]
    assert hidden.ndim == 3 and hidden.shape[0] == 2 and torch.isfinite(hidden).all()
    if family in ("sd15", "sd2"):
        assert hidden.shape[1:] == (CLIP_MAX_LEN, backbone.denoiser.config.cross_attention_dim)
        assert cond["mask"] is None and cond["pooled"] is None
    elif family == "pixart_alpha":
        assert hidden.shape[1:] == (120, backbone.denoiser.config.caption_channels)
        mask = cond["mask"]
        assert mask.shape == (2, 120)
        assert set(mask.unique().tolist()) == {0, 1}  # real tokens, then padding
        assert cond["pooled"] is None
    else:  # sd3: CLIP-L / CLIP-G tokens (zero-padded to T5's width), then T5's 256 tokens
        assert hidden.shape[2] == backbone.denoiser.config.joint_attention_dim
        assert hidden.shape[1] == CLIP_MAX_LEN + 256
        assert cond["pooled"].shape == (2, backbone.denoiser.config.pooled_projection_dim)
        assert cond["mask"] is None
    # different prompts give different encodings
    assert not torch.allclose(hidden[0], hidden[1])


def test_predict_shape(backbone):
    cond = backbone.encode(PROMPTS)
    x = torch.randn(2, *backbone.latent_shape)
    with torch.no_grad():
        out = backbone.predict(x, torch.tensor([10, 900]), cond)
        out_scalar_t = backbone.predict(x, torch.tensor(500), cond)
    assert out.shape == x.shape and out_scalar_t.shape == x.shape
    assert torch.isfinite(out).all() and out.abs().sum() > 0


def test_objective_backward(backbone):
    torch.manual_seed(1)
    shape = (2, *backbone.latent_shape)
    batch = {"latent_mean": torch.randn(shape), "latent_std": 0.1 * torch.ones(shape), "caption": PROMPTS}
    loss = DiffusionObjective(backbone)(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in backbone.denoiser.parameters() if p.grad is not None]
    assert len(grads) > 0
    assert all(torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    # frozen parts get no gradient
    for m in [backbone.vae, *backbone.text_encoders]:
        assert all(p.grad is None for p in m.parameters())


def test_generate(backbone):
    preds = []

    def model_fn(x, t, cond):
        out = backbone.predict(x, t, cond)
        preds.append(out)
        return out

    images = generate(backbone, PROMPTS, [0, 1], steps=2, guidance_scale=2.0, progress=False, model_fn=model_fn)
    assert isinstance(images, np.ndarray) and images.dtype == np.uint8
    assert images.shape == (2, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert backbone.vae.config.sample_size == IMAGE_SIZE
    assert len(preds) == 2 and all(torch.isfinite(p).all() for p in preds)
    # same seed and prompt -> same image, independent of the batch it is generated in
    again = generate(backbone, PROMPTS[:1], [0], steps=2, guidance_scale=2.0, progress=False)
    assert np.abs(again[0].astype(int) - images[0].astype(int)).max() <= 1


def test_distillation_trains_lora_and_tsm_students_of_the_real_pipeline_classes(saved, backbone, tmp_path):
    """The distillation stage is backbone-agnostic: a merged LoRA student and TSM's 1- and 2-stage routed
    students of each family's tiny random pipeline train, save, reload over the base model and sample."""
    from types import SimpleNamespace

    from tsmflow.runs import attach_run_adapters
    from tsmflow.training.distill import distill_student
    family, path, _ = saved
    fresh = lambda: load_backbone({"family": family, "pretrained": str(path), "local_files_only": True})  # noqa: E731
    base = {"fake": {"kind": "lora", "rank": 2, "lr": 0.01}, "timesteps": [999, 499], "guidance_scale": 1.5,
            "fake_updates_per_student": 1, "steps": 1,
            "train": {"batch_size": 2, "lr": 0.01, "log_every": 1, "checkpoint_every": 0}}
    one = distill_student(backbone, {**base, "student": {"kind": "tsm", "rank": 2, "experts": 2}}, PROMPTS,
                          tmp_path / "tsm")
    lora = distill_student(fresh(), {**base, "student": {"kind": "lora", "rank": 2}}, PROMPTS, tmp_path / "lora")
    assert one["student_trainable_params"] == 2 * lora["student_trainable_params"] > 0
    assert (tmp_path / "lora" / "config.json").is_file()  # the merged student, a diffusers model dir
    cfg = {**base, "student": {"kind": "tsm2"},
           "assemble": {"core": tmp_path / "tsm", "context": [tmp_path / "lora"], "router_input": "both"}}
    two = distill_student(fresh(), cfg, PROMPTS, tmp_path / "tsm2")
    assert two["experts"] == [2, 1] and two["student_trainable_params"] > 0
    for d in ("tsm", "tsm2"):
        student = attach_run_adapters(fresh(), {"method": "distill"}, SimpleNamespace(student=tmp_path / d))
        images = generate(student, PROMPTS, [0, 1], solver="renoise", timesteps=one["timesteps"], progress=False)
        assert images.shape == (2, IMAGE_SIZE, IMAGE_SIZE, 3)


@pytest.mark.parametrize("variant", ["lora", "dora"])
def test_a_saved_adapter_with_alpha_not_rank_loads_in_a_stock_pipeline_with_our_outputs(saved, tmp_path, variant):
    """Stock diffusers' `load_lora_weights` must scale by alpha / rank as we do (it assumed alpha = rank before
    the files carried their LoraConfig): denoiser and text-encoder outputs match ours. DoRA adapters here are
    denoiser-only, as the DoRA students are (transformers misnames DoRA's text-encoder magnitudes on load)."""
    import diffusers

    from tsmflow.adapters.lora import LoraSpec, add_lora, load_lora, save_lora
    family, path, _ = saved
    if family == "pixart_alpha":
        pytest.skip("diffusers has no LoRA loader for PixArt-alpha (neither its pipeline nor its transformer)")
    clip = ["q_proj", "v_proj"]
    text = {"sd3": {"text_encoder": clip, "text_encoder_2": clip}}.get(family, clip)
    spec = LoraSpec(rank=2, alpha=8.0, variant=variant, text_encoder_targets=text if variant == "lora" else [])
    ours = load_backbone({"family": family, "pretrained": str(path), "local_files_only": True})
    torch.manual_seed(3)
    with torch.no_grad():
        for p in add_lora(ours, "trained", spec):
            p.add_(0.3 * torch.randn_like(p))  # a trained adapter: B is no longer zero
    save_lora(tmp_path / "expert", ours, "trained", spec)
    reloaded = load_backbone({"family": family, "pretrained": str(path), "local_files_only": True})
    load_lora(reloaded, tmp_path / "expert", "trained")
    pipe = getattr(diffusers, FAMILIES[family][0]).from_pretrained(path, local_files_only=True)
    pipe.load_lora_weights(tmp_path / "expert")
    stock = Backbone(arch=ours.arch, denoiser=getattr(pipe, _denoiser_name(family)), vae=pipe.vae,
                     noise_scheduler=ours.noise_scheduler, encode_fn=load_backbone.__globals__[
                         "_pipeline_prompt_encoder"](pipe, family), family=family)
    x, t = torch.randn(2, *ours.latent_shape), torch.tensor([10, 900])
    with torch.no_grad():
        want = ours.predict(x, t, ours.encode(PROMPTS))
        base = load_backbone({"family": family, "pretrained": str(path), "local_files_only": True})
        untouched = base.predict(x, t, base.encode(PROMPTS))
        for other in (reloaded, stock):
            assert torch.allclose(other.encode(PROMPTS)["hidden"], ours.encode(PROMPTS)["hidden"], atol=1e-5)
            assert torch.allclose(other.predict(x, t, other.encode(PROMPTS)), want, atol=1e-4)
    assert (want - untouched).abs().max() > 1e-2  # the adapter acts, so a wrong scale could not pass


def test_sd3_spec_puts_lora_on_both_clips_and_names_t5_when_its_targets_are_clip_names(saved, tmp_path):
    """config/backbones/sd3.yaml's per-encoder targets train on SD3 with its T5; one CLIP-named list for every
    encoder fails in the first job, naming the encoder (peft's own error names neither it nor the key)."""
    from tsmflow.adapters.lora import LoraSpec, add_lora, lora_parts
    from tsmflow.config import load_config
    family, path, _ = saved
    if family != "sd3":
        pytest.skip("SD3 only")
    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "config/backbones/sd3.yaml")["backbones"]["sd3"]["lora"]
    spec = LoraSpec(rank=2, alpha=2, denoiser_targets=cfg["denoiser_targets"],
                    text_encoder_targets=cfg["text_encoder_targets"])
    bb = load_backbone({"family": family, "pretrained": str(path), "local_files_only": True})
    assert len(bb.text_encoders) == 3
    assert sorted(lora_parts(bb, spec)) == ["text_encoder", "text_encoder_2", "transformer"]
    assert add_lora(bb, "e0", spec)
    assert not any("lora_" in n for n, _ in bb.text_encoders[2].named_parameters())  # T5 untouched
    flat = LoraSpec(rank=2, alpha=2, text_encoder_targets=["q_proj", "k_proj", "v_proj", "out_proj"])
    with pytest.raises(ValueError, match=r"matched no module of text_encoder_3 \(T5EncoderModel\)"):
        add_lora(load_backbone({"family": family, "pretrained": str(path), "local_files_only": True}), "e0", flat)
    typo = LoraSpec(rank=2, alpha=2, text_encoder_targets={"text_encoder_4": ["q"]})
    with pytest.raises(ValueError, match="text_encoder_4"):
        lora_parts(bb, typo)
