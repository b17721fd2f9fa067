"""Cost of one denoiser call on this machine: each miniature backbone of a config, random weights (the cost does
not depend on them), a sampling call (CFG batch, no grad) and a training step (forward, backward, AdamW), in fp32
and under bf16 autocast, on 1 thread (the default run's jobs each take one).

    .venv/bin/python bench/denoiser_step.py [--config config/config.yaml] [--threads 1] [--repeats 5] [--out NAME]

`--unet-heads-as-count` also builds the unet as before a5ec281, when diffusers read the config's head width as a
head count, to measure that fix. Writes bench/results/<NAME>.{json,md} (default denoiser_step); times are medians,
in ms. The machine line names the CPU and whether oneDNN has native bf16 (AVX512-BF16 or AMX): without it, bf16
autocast is emulated.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
import yaml

from tsmflow.data.io import write_json
from tsmflow.models.backbone import predict
from tsmflow.models.mini import build_denoiser
from tsmflow.reporting.publish import git_commit

ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up: first-call allocations and oneDNN kernel choice
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure(arch: str, model, text_dim: int, latent: tuple, batch: int, repeats: int) -> dict:
    def cond(b):
        return {"hidden": torch.randn(b, 24, text_dim), "pooled": torch.randn(b, text_dim),
                "mask": torch.ones(b, 24, dtype=torch.long)}
    xs, ts, cs = torch.randn(2 * batch, *latent), torch.randint(0, 1000, (2 * batch,)), cond(2 * batch)
    xt, tt, ct = xs[:batch], ts[:batch], {k: v[:batch] for k, v in cs.items()}
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    rec = {}
    for precision in ("fp32", "bf16"):
        ac = dict(device_type="cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

        def sample():
            with torch.inference_mode(), torch.autocast(**ac):
                predict(arch, model, xs, ts, cs)

        def train():
            with torch.autocast(**ac):
                out = predict(arch, model, xt, tt, ct)
            (out.float() - xt).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
        rec[precision] = {"sample_ms": median_ms(sample, repeats), "train_ms": median_ms(train, repeats)}
    return rec


def markdown(r: dict) -> str:
    lines = ["# One denoiser call", "",
             f"Made by `bench/denoiser_step.py --config {r['config']} --threads {r['threads']} --out {r['out']}` at commit "
             f"{r['commit']} ({r['machine']}, {r['threads']} thread(s)). Sampling: one classifier-free-guidance call "
             f"on {2 * r['batch']} latents (a batch of {r['batch']} images), no grad. Training: forward, backward and "
             f"AdamW on {r['batch']} latents, all parameters trainable. Median of {r['repeats']} repeats, ms.", "",
             "| model | params | sample fp32 | sample bf16 | bf16 speed-up | train fp32 | train bf16 | bf16 speed-up |",
             "|---|---|---|---|---|---|---|---|"]
    for name, m in r["models"].items():
        f, b = m["fp32"], m["bf16"]
        lines.append(f"| {name} | {m['params'] / 1e6:.2f} M | {f['sample_ms']:.0f} | {b['sample_ms']:.0f} | "
                     f"{f['sample_ms'] / b['sample_ms']:.2f}x | {f['train_ms']:.0f} | {b['train_ms']:.0f} | "
                     f"{f['train_ms'] / b['train_ms']:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--unet-heads-as-count", action="store_true")
    ap.add_argument("--out", default="denoiser_step", help="file name under bench/results/, without suffix")
    args = ap.parse_args()
    out = ROOT / "bench/results" / args.out
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = yaml.safe_load((ROOT / args.config).read_text())
    n_down = len(cfg["vae"]["arch"]["channels"]) - 1
    size = cfg["resolution"] // 2 ** n_down
    latent = (cfg["vae"]["arch"]["latent_channels"], size, size)
    text_dim = cfg["text_encoder"]["arch"]["hidden_size"]
    models = {}
    for arch, bb in cfg["backbones"].items():
        models[arch] = build_denoiser(arch, bb["arch"], latent[0], size, text_dim, cfg["text_encoder"]["arch"]["projection_dim"])
    if args.unet_heads_as_count:
        old = build_denoiser("unet", cfg["backbones"]["unet"]["arch"], latent[0], size, text_dim, text_dim)
        for block in [*old.down_blocks, old.mid_block, *old.up_blocks]:
            for attn in getattr(block, "attentions", []):
                for tb in attn.transformer_blocks:  # width 2 per head: what a head count of 32 made at 64 channels
                    for a in (tb.attn1, tb.attn2):
                        a.heads = cfg["backbones"]["unet"]["arch"]["head_dim"]
        models["unet (heads as count, before a5ec281)"] = old
    native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    rec = {"commit": git_commit(ROOT), "threads": args.threads, "out": args.out,
           "machine": f"{platform.machine()} CPU ({cpu_name()}, native bf16: {'yes' if native else 'no'}), no GPU",
           "config": args.config, "batch": args.batch, "repeats": args.repeats, "latent": list(latent), "models": {}}
    for name, model in models.items():
        arch = name.split()[0]
        rec["models"][name] = {"params": sum(p.numel() for p in model.parameters()),
                               **measure(arch, model, text_dim, latent, args.batch, args.repeats)}
        print(name, rec["models"][name], flush=True)
    write_json(out.with_suffix(".json"), rec)
    out.with_suffix(".md").write_text(markdown(rec))
    print(markdown(rec))


if __name__ == "__main__":
    main()
