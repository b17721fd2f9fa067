"""What a run is made of: load the model a run samples from, given its method and its inputs.

The methods (config ``runs.<name>.method``) are declared in `methods.METHODS`. Here: a merged model comes in
as the rule's ``model`` input (deme_merged, a merged distilled student, full fine-tuning); experts and routers
attach to the base denoiser; DMP's prompts and DeMe's range ensemble wrap it; TSM's routed students (the rule's
``student`` input) bring their own experts and router.
"""
from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import load_file

from .adapters.dmp import load_dmp
from .adapters.lora import DENOISER_PREFIX, load_lora, lora_parts, read_lora_spec
from .adapters.router import ExpertMixture, MergedIntervalExperts, Scale
from .data.io import DataError, read_json
from .merging.deme import RangeEnsemble, load_range_states
from .methods import method_of
from . import layout
from .config import ConfigError, load_config
from .expert_sets import ExpertSet, run_expert_sets
from .families import backbone_spec
from .models.backbone import Backbone, device, load_backbone

ROUTER_WEIGHTS = "router.safetensors"
ROUTER_CONFIG = "router.json"


def load_expert_sets(backbone: Backbone, expert_dirs) -> dict[str, Scale]:
    """Load every expert directory as a named peft adapter; group them into one Scale per set."""
    found: dict[str, dict[int, str]] = defaultdict(dict)
    for d in expert_dirs:
        _, cfg = read_lora_spec(d)
        es = ExpertSet.parse(cfg["expert_set"])
        name = es.adapter_name(cfg["interval"])
        load_lora(backbone, d, name)
        found[es.name][cfg["interval"]] = name
    scales = {}
    for set_name, by_i in found.items():
        n = ExpertSet.parse(set_name).n
        if sorted(by_i) != list(range(n)):
            raise ValueError(f"expert set {set_name}: have intervals {sorted(by_i)}, need 0..{n - 1}")
        scales[set_name] = Scale(n, tuple(by_i[i] for i in range(n)))
    return scales


def lora_models(backbone: Backbone, adapter_dir) -> dict:
    """The models (by diffusers prefix) a saved adapter's LoRA layers live in."""
    spec, _ = read_lora_spec(adapter_dir)
    return {k: m for k, (m, _) in lora_parts(backbone, spec).items()}


def build_mixture(backbone: Backbone, spec: dict, scales: dict[str, Scale], models: dict) -> ExpertMixture:
    core = scales[spec["core"]] if spec.get("core") else None
    return ExpertMixture(models, core, [scales[c] for c in spec["context"]], backbone.num_train_timesteps,
                         router_input=spec.get("router_input", "both"), per_token=spec.get("per_token", False))


def attach(backbone: Backbone, router, text_encoder_routed: bool) -> Backbone:
    backbone.routers.append(router)
    backbone.encode_per_step = backbone.encode_per_step or text_encoder_routed
    return backbone


def load_router(mixture: ExpertMixture, router_dir) -> None:
    path = Path(router_dir) / ROUTER_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"{path}: router not found (has assemble_router run?)")
    missing, unexpected = mixture.load_state_dict(load_file(str(path)), strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: router does not match the experts (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")


def at_step(spec: dict, job_out) -> Path:
    """The directory a run of a snapshotting job (finetune, distill) loads: the job's output, or its snapshot at the
    run's `step`."""
    return Path(layout.snapshot_dir(job_out, spec["step"]) if spec.get("step") else job_out)


def load_run_backbone(spec: dict, inputs, backbone: dict | None = None) -> Backbone:
    """`spec` is the run's config block; `inputs` the rule's named inputs (model, vae, text_encoder, experts, ...);
    `backbone` the rule's backbone param (`backbone_spec`; default: the miniature's arch of the run). A real
    family's run is placed on the job's device, with its routers."""
    backbone = backbone or {"family": "mini", "arch": spec["backbone"]}
    dmp = getattr(inputs, "dmp", None)  # a finetune run of prompts; otherwise `model` holds its weights
    model = getattr(inputs, "model", None)
    # the finetune job wrote the denoiser (full; from scratch, its patch beside it), not the base model
    # (a paper model's DMP run has no `model`: the pipeline brings the frozen denoiser)
    if (spec["method"] == "finetune" and (dmp is None or (model is not None and Path(model) == Path(dmp)))) or (
            spec["method"] == "distill" and model is not None):  # a merged student
        model = at_step(spec, model)
    bb = attach_run_adapters(load_backbone(backbone, inputs, model=model), spec, inputs)
    if backbone["family"] != "mini":
        bb.to(device())
        for r in bb.routers:
            if isinstance(r, torch.nn.Module):
                r.to(bb.device)
    return bb


def run_fingerprint(backbone: dict, spec: dict, trained_dirs: list) -> str:
    """What a run's samples depend on: its backbone (which names the pre-trained weights), the run, and the bytes
    of every file it trained. A sampling job resumes only work with the same fingerprint (FID-30K takes hours)."""
    h = hashlib.sha256(json.dumps([backbone, spec], sort_keys=True, default=str).encode())
    for d in trained_dirs:
        for f in sorted(p for p in Path(d).rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(d)}\0".encode())
            h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


LOADABLE = ("base", "finetune", "deme_merged", "deme_ensemble")  # and every method with experts


def load_run(configfile, run: str, workdir=".") -> Backbone:
    """A run the workflow trained, ready to sample, outside the DAG: base, lora, tsm1 or tsm2; a further-trained
    model (full fine-tuning, prompt tuning, DMP); DeMe's merged model or its range-model ensemble.

    `configfile` is the config the DAG ran with (e.g. config/backbones/sd15.yaml), `workdir` where it ran. Then
    ``sampling.sample.generate(bb, prompts, seeds, steps=50, guidance_scale=7.5)`` gives uint8 images.
    """
    config = load_config(configfile)
    runs = {r: s for r, s in config["runs"].items() if s["backbone"] in config["backbones"]}
    if run not in runs:
        raise ConfigError(f"run {run!r} is not one of this config's runs {sorted(runs)}")
    spec = runs[run]
    m = method_of(spec)
    if spec["method"] not in LOADABLE and not m.experts:
        raise ConfigError(f"run {run!r}: load_run loads {', '.join(LOADABLE)} and expert runs, not {spec['method']}")
    w = Path(workdir)
    bb = backbone_spec(config, spec["backbone"])
    paths = {"experts": [w / layout.expert_dir(s, i) for s in run_expert_sets(spec)
                         for i in range(ExpertSet.parse(s).n)], "ranges": []}
    if m.router:
        paths["router"] = w / layout.run_path(run, m.router)
    if bb["family"] == "mini":  # a paper model's pipeline brings its own denoiser, VAE and text encoders
        paths.update(model=w / layout.base_dir(spec["backbone"]), vae=w / layout.model_dir("vae"),
                     text_encoder=w / layout.model_dir("text_encoder"))
    if spec["method"] == "finetune":  # as the rules' get_run_model_inputs: the job wrote a denoiser, a patch or both
        ft, d = config["finetunes"][spec["finetune"]], w / layout.finetune_dir(spec["finetune"])
        if ft["method"] != "dmp":
            paths["model"] = d
        if ft["method"] == "dmp" or ft.get("with_dmp"):
            paths["dmp"] = d
    elif spec["method"] == "deme_merged":
        paths["model"] = w / layout.deme_merged_dir(spec["deme"])
    elif spec["method"] == "deme_ensemble":
        paths["ranges"] = [w / layout.deme_range_dir(spec["deme"], i)
                           for i in range(config["deme_sets"][spec["deme"]]["n"])]
    needed = paths["experts"] + paths["ranges"] + [paths[k] for k in ("router", "model", "vae", "dmp") if k in paths]
    for d in needed:
        if not d.is_dir():
            raise DataError(f"{d}: not trained yet (run the workflow for {layout.run_path(run, 'metrics.json')})")
    return load_run_backbone(spec, SimpleNamespace(**paths), bb)


def attach_run_adapters(bb: Backbone, spec: dict, inputs) -> Backbone:
    """Load what a run trained onto its base backbone (the miniature's or a real pipeline's), by method.

    `inputs` names the run's trained outputs: experts, router, dmp or ranges, as its rules declare them.
    """
    method = spec["method"]
    dmp = getattr(inputs, "dmp", None)
    full = method == "finetune" and dmp is None
    if method == "distill" and getattr(inputs, "student", None):
        return load_routed_student(bb, at_step(spec, inputs.student))
    if method in ("base", "deme_merged", "distill") or full:
        return bb
    if method == "finetune":
        load_dmp(bb, at_step(spec, dmp))
        return bb
    if method == "deme_ensemble":
        states = load_range_states(inputs.ranges)
        bb.routers.append(RangeEnsemble(bb.denoiser, states, bb.num_train_timesteps))
        return bb
    if method_of(spec).experts:
        dirs = list(inputs.experts)
        scales = load_expert_sets(bb, dirs)
        models = lora_models(bb, dirs[0])
        te_routed = any(k.startswith("text_encoder") for k in models)
        if method_of(spec).router:  # tsm2: core and context scales under the router
            mixture = build_mixture(bb, spec, scales, models)
            load_router(mixture, inputs.router)
            return attach(bb, mixture.eval(), te_routed)
        scale = scales[spec["experts"]]
        if spec.get("fast_path", True):
            return attach(bb, MergedIntervalExperts(models, scale, bb.num_train_timesteps), te_routed)
        return attach(bb, ExpertMixture(models, scale, [], bb.num_train_timesteps), te_routed)
    if method == "moe_lora":
        return load_moe_lora(bb, inputs.router)
    raise ValueError(f"unknown run method {method!r}")


def load_routed_student(bb: Backbone, student_dir) -> Backbone:
    """A TSM student (`distill_student` with adapter tsm or tsm2): its experts, routed by interval, and its router."""
    d = Path(student_dir)
    cfg = read_json(d / ROUTER_CONFIG)
    scales = [Scale(s["n"], tuple(s["names"])) for s in [cfg["core"], *cfg["context"]]]
    for name in sum((s.names for s in scales), ()):
        load_lora(bb, d / "experts" / name, name)
    models = {DENOISER_PREFIX[bb.arch]: bb.denoiser}
    if not cfg["context"]:  # 1-stage: the active expert merged per interval
        return attach(bb, MergedIntervalExperts(models, scales[0], bb.num_train_timesteps), False)
    mixture = ExpertMixture(models, scales[0], scales[1:], bb.num_train_timesteps, router_input=cfg["router_input"])
    load_router(mixture, d)
    return attach(bb, mixture.eval(), False)


def load_moe_lora(bb: Backbone, moe_dir) -> Backbone:
    cfg = read_json(Path(moe_dir) / ROUTER_CONFIG)
    dirs = [Path(moe_dir) / f"expert{k}" for k in range(cfg["n_experts"])]
    names = [f"moe{k}" for k in range(cfg["n_experts"])]
    for d, name in zip(dirs, names):
        load_lora(bb, d, name)
    models = lora_models(bb, dirs[0])
    mixture = moe_mixture(bb, models, names)
    load_router(mixture, moe_dir)
    return attach(bb, mixture.eval(), any(k.startswith("text_encoder") for k in models))


def moe_mixture(bb: Backbone, models: dict, names: list[str]) -> ExpertMixture:
    """MoE-LoRA: every expert covers all timesteps and is gated by softmax(FC(z)); no core, no E(t)."""
    return ExpertMixture(models, None, [Scale(1, (n,)) for n in names], bb.num_train_timesteps,
                         router_input="z", gate="softmax")
