"""DeMe merge-weight search: the workflow's pattern search against the paper's exhaustive grid.

Both search the same objective (FID of the merged model on the config's fixed-noise sample set, exactly
as rule deme_merge_search scores candidates) over the same box; the grid uses the search's coarse step.
The objective is deterministic (fixed captions and noise), so the pattern search's numbers are read from
the rule's own log (merged/weights.json, search.csv); `--rerun-pattern` repeats it here instead.
Needs a default run's merge search:
    .venv/bin/snakemake results/deme/unet-post-n4-p30/merged
    .venv/bin/python bench/deme_search.py [--deme-set unet-post-n4-p30]
Writes bench/results/deme_search_<set>.json and the grid's evaluation log beside it.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
import yaml

from tsmflow.data.io import read_json, read_labels, write_json
from tsmflow.evaluation.evaluator import load_evaluator
from tsmflow.evaluation.fid import load_stats
from tsmflow.merging.deme import grid_search, load_range_states, pattern_search, task_vectors
from tsmflow.merging.fid_search import FidObjective, search_captions
from tsmflow.models.backbone import load_mini_backbone

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--deme-set", default="unet-post-n4-p30")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rerun-pattern", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    res = ROOT / "results"
    d, search = cfg["deme_sets"][args.deme_set], cfg["deme"]["search"]
    bb = load_mini_backbone(d["backbone"], res / "models/base" / d["backbone"], res / "models/vae",
                            res / "models/text_encoder")
    base = {k: v.clone() for k, v in bb.denoiser.state_dict().items()}
    taus = task_vectors(base, load_range_states([res / f"deme/{args.deme_set}/range{i}" for i in range(d["n"])]))
    captions = search_captions([r["caption"] for r in read_labels(res / "data/reference/labels.jsonl")],
                               search["n_samples"], cfg["evaluation"]["fid"]["n_samples"])
    space = cfg["evaluation"]["fid"]["feature_space"]
    objective = FidObjective(bb, base, taus, captions, [search["seed"] + k for k in range(len(captions))],
                             search["steps"], cfg["sampling"]["guidance_scale"], load_evaluator(res / "models/evaluator"),
                             load_stats(res / f"evaluator/fid_reference_{space}.npz"), space)
    out = ROOT / "bench/results"
    record = {"deme_set": args.deme_set, "search": search, "machine": platform.machine(),
              "threads": args.threads, "objective": f"FID ({space}), {len(captions)} samples, {search['steps']} steps"}
    merged = res / f"deme/{args.deme_set}/merged"
    if args.rerun_pattern:
        t0 = time.perf_counter()
        p = pattern_search(objective, d["n"], search["lo"], search["hi"], search["step"], search["min_step"],
                           search["init"], out / f"deme_search_{args.deme_set}_pattern.csv",
                           max_evals=search.get("max_evals"))
        record["pattern"] = {"best_weights": list(map(float, p.best_weights)), "best_objective": p.best_objective,
                             "n_evals": p.n_evals, "wall_s": time.perf_counter() - t0, "source": "rerun"}
    else:
        w = read_json(merged / "weights.json")
        record["pattern"] = {"best_weights": w["weights"], "best_objective": w["objective"], "n_evals": w["n_evals"],
                             "wall_s": w["search_s"], "source": str(merged.relative_to(ROOT) / "weights.json")}
    t0 = time.perf_counter()
    g = grid_search(objective, d["n"], search["lo"], search["hi"], search["step"],
                    out / f"deme_search_{args.deme_set}_grid.csv")
    record["grid"] = {"best_weights": list(map(float, g.best_weights)), "best_objective": g.best_objective,
                      "n_evals": g.n_evals, "wall_s": time.perf_counter() - t0, "step": search["step"]}
    if not args.rerun_pattern:  # the objective is deterministic: shared points must score the same
        import csv
        with open(merged / "search.csv") as f:
            logged = {tuple(round(float(r[f"w{i}"]), 9) for i in range(d["n"])): float(r["objective"])
                      for r in csv.DictReader(f)}
        grid_obj = {tuple(round(float(r[f"w{i}"]), 9) for i in range(d["n"])): r["objective"] for r in g.rows}
        shared = [k for k in logged if k in grid_obj]
        record["shared_points"] = len(shared)
        record["shared_points_max_abs_diff"] = max((abs(logged[k] - grid_obj[k]) for k in shared), default=None)
    record["evals_ratio_pattern_over_grid"] = record["pattern"]["n_evals"] / g.n_evals
    record["objective_gap_pattern_minus_grid"] = record["pattern"]["best_objective"] - g.best_objective
    write_json(out / f"deme_search_{args.deme_set}.json", record)
    print(record)


if __name__ == "__main__":
    main()
