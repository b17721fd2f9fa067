"""What a backbone spec (`config/backbones/*.yaml`) trains, without importing torch: the Snakefile plans from it.

The expert sets (one training job per interval), the runs (rows of the post-pretraining table, in the
miniature's run format), the `loop.TrainConfig` and LoRA keys of Sup. A, and the table declaration.
`realscale` loads, encodes and trains what this plans.
"""
from __future__ import annotations

from .config import ConfigError
from .expert_sets import ExpertSet, run_expert_sets
from .methods import method_of

# family -> (diffusers pipeline class, denoiser arch, denoiser attribute on the pipeline)
FAMILIES = {
    "sd15": ("StableDiffusionPipeline", "unet", "unet"),
    "sd2": ("StableDiffusionPipeline", "unet", "unet"),
    "pixart_alpha": ("PixArtAlphaPipeline", "dit", "transformer"),
    "sd3": ("StableDiffusion3Pipeline", "mmdit", "transformer"),
}
TASK = "post"  # expert-set task: post-pretraining on general image-text data
ADAMW_BETAS = (0.9, 0.999)  # what loop.train uses when no param group sets its own
PAPER_ROWS = {"pixart_alpha": {"base": "PixArt-α", "tsm2": "PixArt-α + TSM"}}  # TSM Table 12
FAMILY_LABEL = {"sd15": "SD1.5", "sd2": "SD2", "pixart_alpha": "PixArt-α", "sd3": "SD3"}


# ---------------------------------------------------------------- what a spec trains


def _sets(spec: dict) -> tuple[ExpertSet, list[ExpertSet], ExpertSet]:
    """(core set, context sets, the vanilla LoRA with the core's parameter count)."""
    arch = FAMILIES[spec["family"]][1]
    r, steps, n_core = spec["lora"]["rank"], spec["optim"]["steps"], spec["tsm"]["core"]
    core = ExpertSet(arch, TASK, n_core, r, steps)
    context = [ExpertSet(arch, TASK, n, r, steps) for n in spec["tsm"]["context"]]
    return core, context, ExpertSet(arch, TASK, 1, r * n_core, steps)


def expert_sets(spec: dict) -> dict[str, ExpertSet]:
    """Every expert set the spec trains, by name: one training job per interval of each."""
    core, context, lora = _sets(spec)
    return {es.name: es for es in [core, *context, lora]}


def runs(spec: dict) -> dict[str, dict]:
    """The runs (rows of the table), in the miniature's run format (`runs.attach_run_adapters` loads them)."""
    core, context, lora = _sets(spec)
    out = {"base": {"method": "base"}}
    for es in [c for c in context if c.n == 1] + [lora]:
        out[f"lora_r{es.rank}"] = {"method": "lora", "experts": es.name}
    out["tsm1"] = {"method": "tsm1", "experts": core.name}
    out["tsm2"] = {"method": "tsm2", "core": core.name, "context": [c.name for c in context],
                   **spec.get("router", {})}
    return out


def train_config(spec: dict) -> dict:
    """`loop.TrainConfig` keys from Sup. A: global batch = batch_size (split over GPUs) x grad_accum."""
    o = spec["optim"]
    accum = o.get("grad_accum", 1)
    if o["global_batch_size"] % accum:
        raise ConfigError(f"optim.global_batch_size={o['global_batch_size']} is not a multiple of "
                          f"optim.grad_accum={accum}")
    return {"steps": o["steps"], "batch_size": o["global_batch_size"] // accum, "grad_accum": accum,
            "lr": o["denoiser"]["lr"], "weight_decay": o["denoiser"]["weight_decay"],
            "warmup_steps": o.get("warmup_steps", 0), "max_grad_norm": o.get("max_grad_norm", 1.0),
            "checkpoint_every": spec.get("checkpoint_every", 100), "seed": spec.get("seed", 0)}


def lora_config(spec: dict) -> dict:
    """The miniature's `lora:` block, from the spec (alpha scales with rank: alpha = r in Sup. A)."""
    lo = spec["lora"]
    return {"alpha_over_rank": lo["alpha"] / lo["rank"], "denoiser_targets": lo["denoiser_target_modules"],
            "text_encoder_targets": lo["text_encoder_target_modules"],
            "caption_dropout": spec.get("caption_dropout", 0.1), "train": train_config(spec)}


def router_config(spec: dict) -> dict:
    """`training.assemble`'s router block: the assembling stage trains as long as fostering, at the denoiser's lr."""
    if tuple(spec["optim"]["betas"]) != ADAMW_BETAS:
        raise ConfigError(f"optim.betas={spec['optim']['betas']}: the router trains with AdamW betas {ADAMW_BETAS}")
    return {"train": train_config(spec)}


# ---------------------------------------------------------------- paths (the rules' and `realscale.load_run`'s)


def results_dir(spec: dict) -> str:
    return f"results/real/{spec['family']}"  # one folder per backbone: several specs can share a directory


def expert_dir(spec: dict, expert_set: str, interval) -> str:
    return f"{results_dir(spec)}/experts/{expert_set}/expert{interval}"


def run_path(spec: dict, run: str, name: str) -> str:
    return f"{results_dir(spec)}/runs/{run}/{name}"


def run_inputs(spec: dict, run: str) -> dict:
    """What a run loads besides the pipeline, named as `runs.attach_run_adapters` reads them: experts, router."""
    r = runs(spec)[run]
    inputs = {"experts": [expert_dir(spec, s, i) for s in run_expert_sets(r) for i in range(expert_sets(spec)[s].n)]}
    router = method_of(r).router
    if router:
        inputs["router"] = run_path(spec, run, router)
    return inputs


# ---------------------------------------------------------------- the table


def table_decl(spec: dict) -> dict:
    """The post-pretraining table, in `reporting.tables.build_table`'s format, beside TSM Table 12 where the
    paper has the backbone (PixArt-alpha only)."""
    name = FAMILY_LABEL[spec["family"]]
    labels = {"base": f"{name} (pre-trained)", "tsm1": f"{name} + TSM 1-stage", "tsm2": f"{name} + TSM 2-stage"}
    paper = PAPER_ROWS.get(spec["family"], {})
    rows = []
    for run, r in runs(spec).items():
        label = labels.get(run) or f"{name} + vanilla LoRA r{ExpertSet.parse(r['experts']).rank}"
        rows.append({"run": run, "label": label, **({"paper_row": paper[run]} if run in paper else {})})
    n = spec["fid"]["n_samples"]
    caption = (f"FID of {n} images sampled from COCO2014 val captions against the real val images, in clean-fid's "
               f"Inception features (lower is better). Trainable parameters as TSM Table 9 counts them. Data: "
               f"{spec['data']['train'].get('image_text_folder') or spec['data']['train'].get('shards')}.")
    decl = {"title": f"Post-pretraining {name}: FID on COCO2014", "rows": rows,
            "columns": ["fid", "trainable_params", "trainable_pct"]}
    if paper:
        decl.update(title=decl["title"] + " (TSM Table 12)", paper_table="tsm_table12")
        caption += (" Columns marked [TSM Table 12] are the paper's numbers (PixArt-α post-pretrained on "
                    "SAM-LLaVA-Captions10M, FID-30K), for reference only: not computed by this workflow.")
    decl["caption"] = caption
    return decl
