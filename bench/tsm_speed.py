"""Speed and memory of TSM against vanilla LoRA and the base model, as ratios within one run.

- training step: a TSM expert (rank 4, t from one interval) vs a vanilla LoRA step (rank 32, all t),
  and a 2-stage router step (frozen core n=8 + context n=1 experts);
- sampling: 1-stage with the merge fast path, and 2-stage routed, vs the base model.

Each measurement runs in its own process, so peak memory (max RSS on CPU, max allocated on
CUDA) is its own. Uses the miniature's trained base denoiser when a default run has built
it, else a freshly initialised one of the same config.

With `--real sd15`: a real-size SD1.5 (UNet and CLIP ViT-L text encoder of the published configs, random
weights, 64x64 latents) in `--dtype` (bfloat16 on a GPU: a paper model's half-precision pipeline, LoRA in fp32),
with config/backbones/sd15.yaml's LoRA targets and Sup. A's ranks (expert r=4, vanilla LoRA r=32, n=8 + 1).
This is the one-DAG issue's GPU check (batch 8):

    .venv/bin/python bench/tsm_speed.py --real sd15 --device cuda --dtype bfloat16 --batch 8 --cases train

    .venv/bin/python bench/tsm_speed.py [--arch unet] [--threads 2] [--device cpu]
Writes bench/results/tsm_speed_<arch>_<device>.json (`--real`: tsm_speed_<family>_<device>.json).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _real_sd15(device: str, dtype: str):
    """SD1.5's denoiser, text encoder and VAE at their published sizes, random weights, no tokenizer files: prompts
    become fixed token ids (the step's cost does not depend on which tokens they are)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from tsmflow.config import load_config
    from tsmflow.models.backbone import Backbone
    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                                block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77))
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=512)
    for m in (unet, text, vae):
        m.to(device=device, dtype=dt).requires_grad_(False)
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)

    def encode(prompts):
        ids = torch.stack([torch.arange(77) + len(p) for p in prompts]).to(device)
        return {"hidden": text(input_ids=ids).last_hidden_state, "mask": None, "pooled": None}

    bb = Backbone(arch="unet", denoiser=unet, vae=vae, noise_scheduler=sched, encode_fn=encode, text_encoders=[text],
                  family="sd15")
    return bb, {"lora": load_config(ROOT / "config/backbones/sd15.yaml")["backbones"]["sd15"]["lora"]}


def _backbone(arch: str, device: str):
    if arch.startswith("real:"):
        family, dtype = arch[5:].split(":")
        if family != "sd15":
            raise SystemExit(f"--real {family}: only sd15 is built here")
        return _real_sd15(device, dtype)
    from tsmflow.models.backbone import load_mini_backbone
    from tsmflow.models.mini import build_denoiser, build_scheduler
    res = ROOT / "results/models"
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    base = res / "base" / arch
    bb = load_mini_backbone(arch, base if base.is_dir() else None, res / "vae", res / "text_encoder")
    if not base.is_dir():
        t = bb.text_encoders[0].config
        c, s, _ = bb.latent_shape
        bcfg = cfg["backbones"][arch]
        bb.denoiser = build_denoiser(arch, bcfg["arch"], c, s, t.hidden_size, t.projection_dim)
        bb.noise_scheduler = build_scheduler(bcfg["objective"], bcfg["num_train_timesteps"])
    return bb.to(device), cfg


def _peak_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _train_steps(case: str, arch: str, device: str, steps: int, batch: int) -> dict:
    from tsmflow.adapters.lora import add_lora, lora_parts
    from tsmflow.adapters.router import ExpertMixture, Scale
    from tsmflow.training.experts import freeze, lora_spec
    from tsmflow.training.objectives import DiffusionObjective, UniformTimesteps
    bb, cfg = _backbone(arch, device)
    freeze(bb)
    lcfg = cfg["lora"]
    if case == "lora_step":
        params = add_lora(bb, "lora", lora_spec(lcfg, 32))
        timesteps = UniformTimesteps(0, 1000)
    elif case == "expert_step":
        params = add_lora(bb, "e3", lora_spec(lcfg, 4))
        timesteps = UniformTimesteps(375, 500)
    else:  # router_step
        spec = lora_spec(lcfg, 4)
        names = [f"e{i}" for i in range(8)] + ["ctx"]
        for n in names:
            for p in add_lora(bb, n, spec):
                p.data.normal_(0, 0.01)
        models = {k: m for k, (m, _) in lora_parts(bb, spec).items()}
        mix = ExpertMixture(models, Scale(8, tuple(names[:8])), [Scale(1, ("ctx",))], 1000).to(device)
        bb.routers, bb.encode_per_step = [mix], True
        params = list(mix.parameters())
        timesteps = UniformTimesteps(0, 1000)
    obj = DiffusionObjective(bb, timesteps=timesteps, train_text_encoder=True)
    opt = torch.optim.AdamW(params, lr=1e-4)
    c, s, _ = bb.latent_shape
    batch_data = {"latent_mean": torch.randn(batch, c, s, s, device=device),
                  "latent_std": torch.full((batch, c, s, s), 0.05, device=device),
                  "caption": ["a small red striped circle left of a large blue square"] * batch}
    times = []
    for i in range(steps + 3):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = obj(batch_data)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 3:  # warm-up steps excluded
            times.append(time.perf_counter() - t0)
    return {"s_per_step": sorted(times)[len(times) // 2], "trainable_params": sum(p.numel() for p in params)}


def _sample(case: str, arch: str, device: str, n_images: int, steps: int) -> dict:
    from tsmflow.adapters.lora import add_lora, lora_parts
    from tsmflow.adapters.router import ExpertMixture, MergedIntervalExperts, Scale
    from tsmflow.sampling.sample import generate
    from tsmflow.training.experts import lora_spec
    bb, cfg = _backbone(arch, device)
    if case != "base_sampling":
        spec = lora_spec(cfg["lora"], 4)
        names = [f"e{i}" for i in range(8)] + ["ctx"]
        for n in names:
            for p in add_lora(bb, n, spec):
                p.data.normal_(0, 0.01)
        models = {k: m for k, (m, _) in lora_parts(bb, spec).items()}
        core = Scale(8, tuple(names[:8]))
        if case == "tsm1_fast_sampling":
            bb.routers = [MergedIntervalExperts(models, core, 1000)]
        else:
            bb.routers = [ExpertMixture(models, core, [Scale(1, ("ctx",))], 1000).to(device)]
        bb.encode_per_step = True
    prompts = ["a small red striped circle left of a large blue square"] * n_images
    generate(bb, prompts[:8], list(range(8)), steps=steps, progress=False)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    generate(bb, prompts, list(range(n_images)), steps=steps, progress=False)
    if device == "cuda":
        torch.cuda.synchronize()
    return {"s_per_image": (time.perf_counter() - t0) / n_images}


def _worker(q, fn, case, args, threads):
    torch.set_num_threads(threads)
    out = fn(case, *args)
    out["peak_mb"] = _peak_mb(args[1])
    q.put(out)


def measure(fn, case, args, threads):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_worker, args=(q, fn, case, args, threads))
    p.start()
    out = q.get()
    p.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="unet")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--sample-steps", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--real", choices=["sd15"], help="a real-size random backbone instead of the miniature's")
    ap.add_argument("--dtype", default="float32", help="the real backbone's weights (bfloat16 on a GPU)")
    ap.add_argument("--cases", choices=["all", "train"], default="all", help="train: the three training steps only")
    a = ap.parse_args()
    arch = f"real:{a.real}:{a.dtype}" if a.real else a.arch
    # the cases alternate, `repeats` rounds, and each keeps its median round: a shared machine's
    # slow spells then hit every case alike instead of whichever ran during them
    rounds: dict[str, list[dict]] = {}
    for _ in range(a.repeats):
        for case in ["lora_step", "expert_step", "router_step"]:
            rounds.setdefault(case, []).append(
                measure(_train_steps, case, (arch, a.device, a.steps, a.batch), a.threads))
        for case in ["base_sampling", "tsm1_fast_sampling", "tsm2_sampling"] if a.cases == "all" else []:
            rounds.setdefault(case, []).append(
                measure(_sample, case, (arch, a.device, a.images, a.sample_steps), a.threads))
    r = {}
    for case, rs in rounds.items():
        key = "s_per_step" if "s_per_step" in rs[0] else "s_per_image"
        r[case] = {**sorted(rs, key=lambda x: x[key])[len(rs) // 2], "all_" + key: [x[key] for x in rs]}
    ratios = {
        "expert_step / lora_step (target <= 1.05)": r["expert_step"]["s_per_step"] / r["lora_step"]["s_per_step"],
        "router_step / lora_step": r["router_step"]["s_per_step"] / r["lora_step"]["s_per_step"],
        "peak memory expert / lora step": r["expert_step"]["peak_mb"] / r["lora_step"]["peak_mb"],
    }
    if a.cases == "all":
        ratios.update({
            "tsm1_fast / base sampling (target <= 1.05)":
                r["tsm1_fast_sampling"]["s_per_image"] / r["base_sampling"]["s_per_image"],
            "tsm2 / base sampling (target <= 1.3)": r["tsm2_sampling"]["s_per_image"] / r["base_sampling"]["s_per_image"],
            "peak memory tsm2 / base sampling": r["tsm2_sampling"]["peak_mb"] / r["base_sampling"]["peak_mb"],
        })
    rec = {"arch": arch, "device": a.device, "threads": a.threads, "batch": a.batch, "images": a.images,
           "repeats": a.repeats,
           "sample_steps": a.sample_steps, "machine": platform.processor() or platform.machine(),
           "torch": torch.__version__, "cuda_device": torch.cuda.get_device_name() if a.device == "cuda" else None,
           "measurements": r, "ratios": ratios}
    out = ROOT / f"bench/results/tsm_speed_{a.real or a.arch}_{a.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rec, indent=2))
    print(json.dumps(rec, indent=2))


if __name__ == "__main__":
    main()
