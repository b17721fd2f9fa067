"""Builders for the miniature's tiny diffusers models (random init, sized from config).

Each builder takes the backbone's `arch` block of config and returns a stock
diffusers class, so everything downstream (peft, save_pretrained, pipelines)
treats them exactly like the real models.
"""
from __future__ import annotations

from diffusers import (AutoencoderKL, DDPMScheduler, DiTTransformer2DModel, FlowMatchEulerDiscreteScheduler,
                       PixArtTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel)


def build_vae(cfg: dict, resolution: int) -> AutoencoderKL:
    n = len(cfg["channels"])
    return AutoencoderKL(
        in_channels=3, out_channels=3, sample_size=resolution,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg["channels"]), layers_per_block=cfg["layers_per_block"],
        latent_channels=cfg["latent_channels"], norm_num_groups=cfg["norm_groups"])


def build_denoiser(arch: str, cfg: dict, latent_channels: int, latent_size: int, text_dim: int,
                   pooled_dim: int):
    """`text_dim`, `pooled_dim`: the prompt encoder's widths (unused by the class-conditional cdit)."""
    if arch == "unet":
        n = len(cfg["channels"])
        # `cross_attention`: per level, top first. Default: every level but the lowest, as SD1.5 (cheap at 8x8
        # latents); at 16x16 attention on the top level alone triples the cost of a step
        attn = cfg.get("cross_attention", [True] * (n - 1) + [False])
        if len(attn) != n:
            raise ValueError(f"unet arch: cross_attention has {len(attn)} entries for {n} levels (channels)")
        down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn)
        # diffusers' UNet reads `attention_head_dim` as the number of heads (SD1.5's 8), so the config's head width
        # becomes a head count per level; passed straight through, 32 made 32 heads of width 2 at 64 channels
        bad = [c for c in cfg["channels"] if c % cfg["head_dim"]]
        if bad:
            raise ValueError(f"unet arch: head_dim {cfg['head_dim']} does not divide channels {bad}")
        heads = tuple(c // cfg["head_dim"] for c in cfg["channels"])
        return UNet2DConditionModel(
            sample_size=latent_size, in_channels=latent_channels, out_channels=latent_channels,
            down_block_types=down,
            up_block_types=tuple(b.replace("Down", "Up") for b in reversed(down)),
            block_out_channels=tuple(cfg["channels"]), layers_per_block=cfg["layers_per_block"],
            cross_attention_dim=text_dim, attention_head_dim=heads,
            norm_num_groups=cfg["norm_groups"])
    if arch == "dit":
        return PixArtTransformer2DModel(
            sample_size=latent_size, in_channels=latent_channels, out_channels=latent_channels,
            patch_size=cfg["patch_size"], num_layers=cfg["layers"], num_attention_heads=cfg["heads"],
            attention_head_dim=cfg["head_dim"], cross_attention_dim=cfg["heads"] * cfg["head_dim"],
            caption_channels=text_dim, norm_type="ada_norm_single", use_additional_conditions=False)
    if arch == "mmdit":
        return SD3Transformer2DModel(
            sample_size=latent_size, in_channels=latent_channels, out_channels=latent_channels,
            patch_size=cfg["patch_size"], num_layers=cfg["layers"], num_attention_heads=cfg["heads"],
            attention_head_dim=cfg["head_dim"], joint_attention_dim=text_dim,
            caption_projection_dim=cfg["heads"] * cfg["head_dim"], pooled_projection_dim=pooled_dim,
            pos_embed_max_size=latent_size // cfg["patch_size"])
    if arch == "cdit":  # class-conditional, like DiT on ImageNet (DMP Tables 8-9): no text, a class label
        from ..data.classes import CLASSES
        from .backbone import no_label_dropout
        return no_label_dropout(DiTTransformer2DModel(
            sample_size=latent_size, in_channels=latent_channels, out_channels=latent_channels,
            patch_size=cfg["patch_size"], num_layers=cfg["layers"], num_attention_heads=cfg["heads"],
            attention_head_dim=cfg["head_dim"], num_embeds_ada_norm=len(CLASSES)))
    raise ValueError(f"unknown denoiser arch {arch!r} (expected unet, dit, mmdit or cdit)")


def build_scheduler(objective: str, num_train_timesteps: int):
    """Training noise schedule: SD's scaled-linear DDPM for eps/v, rectified flow as in SD3."""
    if objective == "flow":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, shift=1.0)
    pred = {"eps": "epsilon", "v": "v_prediction"}[objective]
    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="scaled_linear",
                         beta_start=0.00085, beta_end=0.012, prediction_type=pred,
                         clip_sample=False)
