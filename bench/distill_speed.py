"""Speed of distillation, as ratios within one run (the distillation issue's bench):

- a student update (DMD: `fake_updates_per_student` fake-score steps, then one student step) against a LoRA
  fine-tuning step, for the one-step and the 4-step student, and the 4-step TSM 1-stage student (4 experts);
  the 4-step student's update with DMD2's GAN phase (config `gan` defaults) against without;
- one-step and 4-step student sampling (renoise) against the teacher's (config `sampling`, with guidance), and the
  TSM student's (the active expert merged per step) against the merged 4-step student's;
- a LoRaD denoiser forward against a LoRA forward of the same rank, unmerged and merged.

Each case runs in its own process (`tsm_speed.measure`), `repeats` rounds alternating, the median round kept.
Uses the miniature's trained base denoiser when a default run has built it, else a fresh one of the same
config; the VAE and text encoder must exist (`snakemake results/models/vae results/models/text_encoder`).

    cd bench && ../.venv/bin/python distill_speed.py [--arch unet] [--threads 1] [--device cpu]
Writes bench/results/distill_speed_<arch>_<device>.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from tsm_speed import ROOT, _backbone, measure

PROMPT = "a small red striped circle left of a large blue square"


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _median_time(fn, n: int, device: str, warmup: int = 2) -> float:
    times = []
    for i in range(n + warmup):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _rank(cfg: dict) -> int:
    """The adapters' rank: the first declared student's."""
    return next(iter(cfg["students"].values())).get("rank", 16)


def _distill_cfg(cfg: dict, steps: list[int]) -> dict:
    from tsmflow.training.distill import student_config
    return student_config(cfg["distill"], {"backbone": "-", "adapter": "lorad", "rank": _rank(cfg),
                                           "timesteps": steps, "steps": 1})


def _train(case: str, arch: str, device: str, n: int, batch: int) -> dict:
    from tsmflow.students import scaled_timesteps
    from tsmflow.training.distill import AdapterSpec, DMDObjective, adapted_copy, expert_student
    from tsmflow.training.gan import GanSpec
    from tsmflow.training.experts import freeze, lora_spec
    from tsmflow.adapters.lora import DENOISER_PREFIX, add_lora
    from tsmflow.training.objectives import DiffusionObjective
    bb, cfg = _backbone(arch, device)
    freeze(bb)
    rank = _rank(cfg)
    c, s, _ = bb.latent_shape
    if case == "lora_step":
        params = add_lora(bb, "lora", lora_spec({**cfg["lora"], "text_encoder_targets": []}, rank))
        obj = DiffusionObjective(bb)
        data = {"latent_mean": torch.randn(batch, c, s, s, device=device),
                "latent_std": torch.full((batch, c, s, s), 0.05, device=device), "caption": [PROMPT] * batch}
        opt = torch.optim.AdamW(params, lr=1e-4)

        def step():
            obj(data).backward()
            opt.step()
            opt.zero_grad(set_to_none=False)
        return {"s_per_step": _median_time(step, n, device), "trainable_params": sum(p.numel() for p in params)}
    k = 1 if case == "student_update_1step" else 4
    d = _distill_cfg(cfg, [999] if k == 1 else [999, 749, 499, 249])
    router = None
    if case == "student_update_4step_tsm":
        spec = AdapterSpec(**{**d["student"], "kind": "tsm", "experts": 4})
        student, sp, router = expert_student(bb.denoiser, spec, bb.num_train_timesteps, DENOISER_PREFIX[bb.arch])
    else:
        student, sp = adapted_copy(bb.denoiser, AdapterSpec(**d["student"]), "student")
    fake, fp = adapted_copy(bb.denoiser, AdapterSpec(**{x: v for x, v in d["fake"].items() if x != "lr"}), "fake")
    gan = GanSpec() if case == "student_update_4step_gan" else None
    obj = DMDObjective(bb, student, fake, bb.denoiser, scaled_timesteps(d["timesteps"], bb.num_train_timesteps),
                       d["guidance_scale"], student_router=router, gan=gan).to(device)
    opt_s = torch.optim.AdamW(sp, lr=1e-4)
    opt_f = torch.optim.AdamW(fp + (list(obj.head.parameters()) if gan else []), lr=1e-3)
    data = {"caption": [PROMPT] * batch}
    if gan is not None:  # real latents for the classifier
        data.update(latent_mean=torch.randn(batch, c, s, s, device=device),
                    latent_std=torch.full((batch, c, s, s), 0.05, device=device))

    def update():
        for _ in range(d["fake_updates_per_student"]):
            obj(data, phase="fake").backward()
            opt_f.step()
            opt_f.zero_grad()
        obj(data, phase="student").backward()
        opt_s.step()
        opt_s.zero_grad()
    return {"s_per_step": _median_time(update, n, device), "trainable_params": sum(p.numel() for p in sp),
            "fake_updates_per_student": d["fake_updates_per_student"]}


def _sample(case: str, arch: str, device: str, n_images: int) -> dict:
    from tsmflow.sampling.sample import generate
    bb, cfg = _backbone(arch, device)
    s = cfg["sampling"]
    prompts, seeds = [PROMPT] * n_images, list(range(n_images))
    if case == "teacher_sampling":
        kw = dict(steps=s["steps"], guidance_scale=s["guidance_scale"], solver=s["solver"])
    elif case == "student_4step_tsm_sampling":  # 4 random experts, the active one merged per step (tsm1's path)
        from tsmflow.adapters.lora import DENOISER_PREFIX, adapter_parameters
        from tsmflow.adapters.router import MergedIntervalExperts, Scale
        from tsmflow.training.distill import AdapterSpec, expert_student
        spec = AdapterSpec("tsm", rank=_rank(cfg), targets=cfg["distill"]["targets"], experts=4)
        den, _, mix = expert_student(bb.denoiser, spec, bb.num_train_timesteps, DENOISER_PREFIX[bb.arch])
        mix.remove()
        with torch.no_grad():
            for p in (p for i in range(4) for p in adapter_parameters(den, f"student{i}")):
                p.normal_(0, 0.01)
        bb.denoiser = den.requires_grad_(False)
        bb.routers.append(MergedIntervalExperts({"m": den}, Scale(4, tuple(f"student{i}" for i in range(4))),
                                                bb.num_train_timesteps))
        kw = dict(solver="renoise", timesteps=[999, 749, 499, 249])
    else:
        kw = dict(solver="renoise", timesteps=[999] if case == "student_1step_sampling" else [999, 749, 499, 249])
    t = _median_time(lambda: generate(bb, prompts, seeds, progress=False, **kw), 3, device, warmup=1)
    return {"s_per_image": t / n_images, "sampler": kw}


def _forward(case: str, arch: str, device: str, n: int, batch: int) -> dict:
    from tsmflow.adapters.lora import LoraSpec, adapter_parameters, inject, merge_adapters
    bb, cfg = _backbone(arch, device)
    variant, merged = case.split("_")[0], case.endswith("merged") and not case.endswith("unmerged")
    rank = _rank(cfg)
    den = bb.denoiser.requires_grad_(False)
    inject(LoraSpec(rank=rank, alpha=float(rank), denoiser_targets=cfg["distill"]["targets"],
                    text_encoder_targets=[], variant=variant), cfg["distill"]["targets"], den, "a")
    with torch.no_grad():
        for p in adapter_parameters(den, "a"):
            p.normal_(0, 0.01)
    if merged:
        den = merge_adapters(den)
    c, s, _ = bb.latent_shape
    x, t = torch.randn(batch, c, s, s, device=device), torch.full((batch,), 500, device=device)
    cond = bb.encode([PROMPT] * batch)
    with torch.no_grad():
        sec = _median_time(lambda: bb.predict(x, t, cond, denoiser=den), n, device)
    return {"s_per_forward": sec}


def markdown(rec: dict) -> str:
    lines = [f"# Distillation speed ({rec['arch']}, {rec['device']})", "",
             f"Made by `bench/distill_speed.py` at {rec['commit']} on {rec['machine']} "
             f"({rec['threads']} threads, batch {rec['batch']}, {rec['images']} images, median of {rec['repeats']} "
             f"rounds). Ratios within this one run:", "", "| ratio | value |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in rec["ratios"].items()]
    lines += ["", "| case | seconds | |", "|---|---|---|"]
    for case, m in rec["measurements"].items():
        key = next(k for k in ("s_per_step", "s_per_image", "s_per_forward") if k in m)
        lines.append(f"| {case} | {m[key]:.4f} | {key.replace('s_per_', 'per ')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    from tsmflow.reporting.publish import git_commit
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="unet")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    rounds: dict[str, list[dict]] = {}
    for _ in range(a.repeats):
        for case in ["lora_step", "student_update_1step", "student_update_4step", "student_update_4step_tsm",
                     "student_update_4step_gan"]:
            rounds.setdefault(case, []).append(measure(_train, case, (a.arch, a.device, a.steps, a.batch), a.threads))
        for case in ["teacher_sampling", "student_1step_sampling", "student_4step_sampling",
                     "student_4step_tsm_sampling"]:
            rounds.setdefault(case, []).append(measure(_sample, case, (a.arch, a.device, a.images), a.threads))
        for case in ["lora_unmerged", "lorad_unmerged", "lora_merged", "lorad_merged"]:
            rounds.setdefault(case, []).append(measure(_forward, case, (a.arch, a.device, 4 * a.steps, a.batch),
                                                       a.threads))
    r = {}
    for case, rs in rounds.items():
        key = next(k for k in ("s_per_step", "s_per_image", "s_per_forward") if k in rs[0])
        r[case] = {**sorted(rs, key=lambda x: x[key])[len(rs) // 2], "all_" + key: [x[key] for x in rs]}
    st, sa, fw = "s_per_step", "s_per_image", "s_per_forward"
    ratios = {
        "one-step student update / LoRA step": r["student_update_1step"][st] / r["lora_step"][st],
        "4-step student update / LoRA step": r["student_update_4step"][st] / r["lora_step"][st],
        "4-step TSM 1-stage student update / 4-step LoRA student update":
            r["student_update_4step_tsm"][st] / r["student_update_4step"][st],
        "4-step student update with the GAN phase / without":
            r["student_update_4step_gan"][st] / r["student_update_4step"][st],
        "one-step student / teacher sampling": r["student_1step_sampling"][sa] / r["teacher_sampling"][sa],
        "4-step student / teacher sampling": r["student_4step_sampling"][sa] / r["teacher_sampling"][sa],
        "4-step TSM student (merged per step) / merged 4-step student sampling":
            r["student_4step_tsm_sampling"][sa] / r["student_4step_sampling"][sa],
        "LoRaD / LoRA forward, unmerged": r["lorad_unmerged"][fw] / r["lora_unmerged"][fw],
        "LoRaD / LoRA forward, merged": r["lorad_merged"][fw] / r["lora_merged"][fw],
        "LoRaD unmerged / merged forward": r["lorad_unmerged"][fw] / r["lorad_merged"][fw],
    }
    rec = {"arch": a.arch, "device": a.device, "threads": a.threads, "batch": a.batch, "images": a.images,
           "repeats": a.repeats, "commit": git_commit(ROOT), "machine": f"{platform.machine()} "
           + (torch.cuda.get_device_name() if a.device == "cuda" else "CPU, no GPU"),
           "torch": torch.__version__, "measurements": r, "ratios": ratios}
    out = ROOT / f"bench/results/distill_speed_{a.arch}_{a.device}"
    out.with_suffix(".json").write_text(json.dumps(rec, indent=2))
    out.with_suffix(".md").write_text(markdown(rec))
    print(markdown(rec))


if __name__ == "__main__":
    main()
