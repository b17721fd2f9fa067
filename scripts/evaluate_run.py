"""One run's evaluation, one process: CompBench images and scores (unless the run is FID-only), FID samples
(one image per held-out reference caption) and FID, then metrics.json."""
from pathlib import Path

from tsmflow.data.io import atomic_path, read_json, read_labels, write_json
from tsmflow.evaluation.clip_score import folder_clip_score, load_clip_scorer
from tsmflow.evaluation.evaluator import load_evaluator
from tsmflow.evaluation.run import fid_record, run_metrics
from tsmflow.evaluation.scoring import MiniScorer, check_validated, load_compbench_scorer, score_folder
from tsmflow.runs import load_run_backbone, run_fingerprint
from tsmflow.sampling.folders import caption_folder, compbench_folder
from tsmflow.workflow import setup

setup(snakemake)
inp, out, p = snakemake.input, snakemake.output, snakemake.params
sampling, space = p.sampling, p.fid["feature_space"]
captions = [r["caption"] for r in read_labels(f"{inp.reference}/labels.jsonl")]
if p.fid["n_samples"] > len(captions):
    raise ValueError(f"evaluation.fid.n_samples={p.fid['n_samples']} exceeds the {len(captions)} reference captions")
compbench = "compbench" in out.keys()
# the miniature's evaluator scores CompBench-mini and gives FID its features, unless FID is Inception's
uses_evaluator = (compbench and p.scorer["kind"] == "mini") or space in ("shapes", "patch")
# checked before any sampling: an evaluator that failed validation stops the job at once
validated = check_validated(inp.validation, p.require_validated) if uses_evaluator else True
evaluator = load_evaluator(inp.evaluator) if uses_evaluator else None
bb = load_run_backbone(p.run, inp, p.backbone)
# a distilled student's sampler has its timesteps instead of steps and guidance
kw = {k: sampling[k] for k in ("steps", "guidance_scale", "solver", "timesteps", "precision") if k in sampling}

scores = None
if compbench:  # the miniature's evaluator, or T2I-CompBench's scorers for a paper model
    scorer = MiniScorer(evaluator) if p.scorer["kind"] == "mini" else load_compbench_scorer(p.scorer, inp,
                                                                                          device=bb.device)[0]
    files = {Path(f).stem.removesuffix("_val"): f for f in inp.prompts}
    compbench_folder(bb, files, out.compbench, p.images_per_prompt, p.seed, **kw)
    scores = score_folder(scorer, out.compbench, p.resolution)
    scores["evaluator_validated"] = validated
    print(scores.groupby("category")["score"].agg(["mean", "count"]))
    with atomic_path(out.scores) as tmp:
        scores.to_csv(tmp, index=False)

# a paper model's FID-30K takes hours: a killed job's rerun keeps the batches this same model finished
resume = run_fingerprint(p.backbone, p.run, inp.trained) if p.backbone["family"] != "mini" else None
caption_folder(bb, captions[: p.fid["n_samples"]], out.fid_samples, p.seed, latents=p.fid_latents,
               batch_size=p.fid.get("batch_size", 64), resume_key=resume, **kw)
fid = fid_record(evaluator if space in ("shapes", "patch") else None, out.fid_samples, inp.fid_reference, space,
                 validated, n_boot=p.fid["n_boot"], seed=p.seed, inception_weights=p.fid.get("inception_weights"))
if "patch_reference" in inp.keys():  # Patch-FID: the same samples' quadrants, the same features
    patch = "inception_patch" if space == "inception" else "patch"
    fid["patch"] = fid_record(evaluator if patch == "patch" else None, out.fid_samples, inp.patch_reference, patch,
                              validated, n_boot=p.fid["n_boot"], seed=p.seed,
                              inception_weights=p.fid.get("inception_weights"))
if p.clip is not None:  # CLIP score of the same samples
    scorer = load_clip_scorer(p.clip, getattr(inp, "clip", None))
    scorer.model.to(bb.device)
    fid["clip"] = folder_clip_score(scorer, out.fid_samples, p.fid.get("batch_size", 64))
    print(f"CLIP score = {fid['clip']['clip_score']:.4f} ± {fid['clip']['clip_score_se']:.4f} (SE) from "
          f"{fid['clip']['clip_n']} samples")
write_json(out.fid, fid)
print(f"FID ({space}) = {fid['fid']:.3f} ± {fid['fid_se'] or float('nan'):.3f} (bootstrap SE) from "
      f"{fid['n_samples']} samples vs {fid['n_reference']} reference images")

metrics = run_metrics(snakemake.wildcards.run, p.run, fid, scores, [read_json(f"{d}/stats.json") for d in inp.trained],
                      sampling)
write_json(out.metrics, metrics)
print(metrics)
