"""The claims page: each main claim of a paper, the paper's numbers, the miniature's over seeds, and a verdict.

A claim, declared in config, compares two groups of runs (ours and a baseline) on one metric: CompBench-mini's
six-category mean (`compbench_mean`), one category, or FID. The test, printed on the page:
d = mean(ours) - mean(baseline), signed so that d > 0 is the paper's direction; SE(d) = sqrt(v_ours + v_baseline),
where a group of n >= 2 seeds contributes its variance over seeds / n, and a single run its own squared standard
error (prompt-clustered for CompBench-mini, bootstrap for FID). The claim holds where d >= 2 SE, does not hold where
d <= -2 SE, and is within noise otherwise.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..data.grammar import CATEGORIES
from ..data.io import atomic_path
from ..evaluation.stats import mean_se
from .tables import METRIC_LABEL, PAPER_DIR, load_paper_table, paper_value

Z = 2.0
HEADING = "## Claims of the papers, tested in the miniature"  # the page's first line (publish_index drops it)
TEST = (f"d = mean(ours) - mean(baseline), signed so that d > 0 is the paper's direction; SE(d) = sqrt(v_ours + "
        "v_baseline), where a group of n >= 2 seeds adds its variance over seeds / n and a single run its own "
        "squared standard error (CompBench-mini: prompts as the sampling unit; FID: bootstrap over samples). "
        f"**holds**: d >= {Z:g} SE; **does not hold**: d <= -{Z:g} SE; **within noise**: otherwise.")


def run_value(m: dict, metric: str) -> tuple[float | None, float | None]:
    """(value, standard error) of one run's metric; compbench_mean is the mean of the six categories."""
    if metric == "compbench_mean":
        if any(m.get(c) is None for c in CATEGORIES):
            return None, None
        ses = [m.get(f"{c}_se") for c in CATEGORIES]
        se = mean_se(ses) if all(s is not None for s in ses) else None
        return float(np.mean([m[c] for c in CATEGORIES])), se
    return m.get(metric), m.get(f"{metric}_se")


def group_stats(metrics: dict[str, dict], runs: list[str], metric: str) -> dict:
    """Mean over a group's runs (seeds), their std, and the variance the group adds to SE(d)."""
    vals = [run_value(metrics[r], metric) for r in runs]
    if any(v is None for v, _ in vals):
        return {"n": len(runs), "mean": None, "std": None, "var": None}
    xs = np.array([v for v, _ in vals])
    if len(xs) >= 2:
        std = float(xs.std(ddof=1))
        return {"n": len(xs), "mean": float(xs.mean()), "std": std, "var": std ** 2 / len(xs)}
    se = vals[0][1]
    return {"n": 1, "mean": float(xs[0]), "std": None, "se": se, "var": se ** 2 if se is not None else None}


def verdict(ours: dict, base: dict, better: str) -> dict:
    if ours["mean"] is None or base["mean"] is None:
        return {"d": None, "se": None, "z": None, "verdict": "n/a"}
    d = (ours["mean"] - base["mean"]) * (1 if better == "higher" else -1)
    if ours["var"] is None or base["var"] is None:
        return {"d": d, "se": None, "z": None, "verdict": "no standard error"}
    se = float(np.sqrt(ours["var"] + base["var"]))
    z = d / se if se > 0 else (0.0 if d == 0 else float(np.copysign(np.inf, d)))
    word = "holds" if z >= Z else "does not hold" if z <= -Z else "within noise"
    return {"d": d, "se": se, "z": z, "verdict": word}


def paper_number(paper: pd.DataFrame, side: dict, metric: str) -> float | None:
    """The paper's value for one side; compbench_mean averages its six printed categories."""
    keys = CATEGORIES if metric == "compbench_mean" else (metric,)
    vals = [paper_value(paper, side.get("paper_row", ""), k, side.get("paper_block", ""),
                        side.get("paper_setting", "")) for k in keys]
    if any(v is None for v in vals):
        return None
    try:
        return float(np.mean([float(v) for v in vals]))
    except ValueError:  # a printed cell that is not a number
        return None


def _group(g: dict, digits: int) -> str:
    if g["mean"] is None:
        return "n/a"
    if g["n"] >= 2:
        return f"{g['mean']:.{digits}f} ± {g['std']:.{digits}f} (n={g['n']})"
    se = f" ± {g['se']:.{digits}f} SE" if g.get("se") is not None else ""
    return f"{g['mean']:.{digits}f}{se} (n=1)"


def build_claims(decls: dict[str, dict], metrics: dict[str, dict], paper_dir=PAPER_DIR) -> pd.DataFrame:
    rows = []
    for name, c in decls.items():
        metric, better = c["metric"], c["better"]
        digits = 3 if metric == "fid" else 2
        ours = group_stats(metrics, c["ours"]["runs"], metric)
        base = group_stats(metrics, c["baseline"]["runs"], metric)
        v = verdict(ours, base, better)
        paper = load_paper_table(c["paper_table"], paper_dir)
        po, pb = paper_number(paper, c["ours"], metric), paper_number(paper, c["baseline"], metric)
        label = "CompBench-mini mean of 6 categories" if metric == "compbench_mean" else METRIC_LABEL.get(metric, metric)
        pd_ = (po - pb) * (1 if better == "higher" else -1) if po is not None and pb is not None else None
        rows.append({
            "claim": name, "statement": c["claim"], "paper table": c["paper_table"],
            "paper rows": f"{_row_name(c['ours'])} vs {_row_name(c['baseline'])}",
            "metric": f"{label} ({better} is better)",
            "paper: ours": _num(po, 2), "paper: baseline": _num(pb, 2), "paper: d": _num(pd_, 2),
            "ours": _group(ours, digits), "baseline": _group(base, digits),
            "d ± SE": "n/a" if v["d"] is None else f"{v['d']:+.{digits}f}" + (
                f" ± {v['se']:.{digits}f}" if v["se"] is not None else ""),
            "z": _num(v["z"], 1), "verdict": v["verdict"],
            "runs (ours; baseline)": f"{', '.join(c['ours']['runs'])}; {', '.join(c['baseline']['runs'])}"})
    return pd.DataFrame(rows)


def _row_name(side: dict) -> str:
    return " ".join(filter(None, [side.get("paper_block"), side.get("paper_row"), side.get("paper_setting")])) or "—"


def _num(x, digits: int) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def write_claims(df: pd.DataFrame, csv_path, md_path) -> None:
    with atomic_path(csv_path) as tmp:
        df.to_csv(tmp, index=False)
    counts = df["verdict"].value_counts()
    summary = ", ".join(f"{counts[k]} {k}" for k in ("holds", "does not hold", "within noise") if k in counts)
    cols = ["statement", "paper table", "paper rows", "metric", "paper: ours", "paper: baseline", "paper: d", "ours",
            "baseline", "d ± SE", "z", "verdict"]
    with atomic_path(md_path) as tmp:
        tmp.write_text(f"{HEADING}\n\n"
                       f"{len(df)} claims: {summary or 'none'}.\n\n"
                       f"{df[cols].to_markdown(index=False)}\n\n"
                       "Paper columns are the papers' own numbers (their models and benchmarks), for reference only; "
                       "d is signed so that a positive d is the paper's direction. Ours is mean ± std over n seeds, "
                       "or one run ± its standard error.\n\n"
                       f"Test: {TEST}\n\nRuns: "
                       + "; ".join(f"{r['claim']}: {r['runs (ours; baseline)']}" for _, r in df.iterrows()) + "\n")
