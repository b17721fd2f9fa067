"""Paper-style tables declared in config: our metrics beside the papers' reference numbers.

A declaration names its rows (runs; several runs in a row are seeds and are
shown as mean ± std), its metric columns, and the paper table and rows it
mirrors. Paper numbers come from the transcribed CSVs in resources/paper_numbers/
and are always labelled as such.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..data.grammar import CATEGORIES
from ..data.io import atomic_path, read_json
from ..methods import method_of

PAPER_DIR = Path(__file__).resolve().parents[3] / "resources" / "paper_numbers"
# our metric key -> the column names the papers print for it
PAPER_METRIC = {
    "color": ("Color", "Col"), "shape": ("Shape", "Sha"), "texture": ("Texture", "Tex"),
    "spatial": ("Spatial", "Spa"), "non_spatial": ("Non-Spatial", "NS"), "complex": ("Complex", "Com"),
    "fid": ("FID",), "patch_fid": ("Patch-FID",), "trainable_pct": ("Trainable (%)",), "nfe": ("NFEs",),
    "norm_change": ("NM",), "direction_change": ("DM",), "precision": ("Precision",), "recall": ("Recall",),
    "clip_score": ("CLIP-Score", "CLIP"),
    "trainable_params_m": ("#Params (M)", "Trainable params (M)", "N_params (M)"),
    "fake_params_m": ("Fake model #Params (M)",),
    "denoiser_params_m": ("#Parameters (M)",), "patched_params_m": ("#Parameters (M)",),
    **{f"{k}_{s}": (s.capitalize(),) for k in ("correlation", "similarity") for s in ("max", "min", "mean", "std")},
}
# the paper setting a metric's cell sits under, where a row names none (DMP Table 5: one row, two statistics)
METRIC_SETTING = {f"{k}_{s}": f"Metric={k.capitalize()}" for k in ("correlation", "similarity")
                  for s in ("max", "min", "mean", "std")}
# reference-column headers where two of our columns read the same paper metric from different paper rows
PAPER_COLUMN = {"denoiser_params_m": "#Parameters (M), without DMP", "patched_params_m": "#Parameters (M), with DMP",
                **{f"{k}_{s}": f"{k.capitalize()} {s}" for k in ("correlation", "similarity")
                   for s in ("max", "min", "mean", "std")}}
METRIC_LABEL = {"color": "Color", "shape": "Shape", "texture": "Texture", "spatial": "Spatial",
                "non_spatial": "Non-Spatial", "complex": "Complex", "fid": "FID",
                "trainable_params": "Trainable params", "trainable_pct": "Trainable (%)", "nfe": "NFEs",
                "norm_change": "Norm change NM (%)", "direction_change": "Direction change DM (%)",
                "trainable_params_m": "Trainable params (M)", "precision": "Precision", "recall": "Recall",
                "fake_params_m": "Fake score params (M)",
                "clip_score": "CLIP score",
                "train_wall_s": "Training wall (s)", "patch_fid": "Patch-FID (shapes features)",
                "denoiser_params_m": "Denoiser params (M)", "patched_params_m": "With DMP (M)",
                "param_increase_pct": "Increase (%)", "n_latents": "Latents",
                "temporal_bias_std": "Temporal bias (std over positions)",
                "spatial_bias_std": "Spatial bias (std over timesteps)",
                **{f"{k}_{s}": f"{k.capitalize()} {s}" for k in ("correlation", "similarity")
                   for s in ("max", "min", "mean", "std")}}
DIGITS = {"trainable_params": 0, "trainable_pct": 4, "nfe": 0, "trainable_params_m": 4, "fake_params_m": 4,
          "train_wall_s": 0,
          "clip_score": 4, "denoiser_params_m": 4, "patched_params_m": 4, "param_increase_pct": 2, "n_latents": 0,
          "temporal_bias_std": 6, "spatial_bias_std": 6,
          **{f"{k}_{s}": 4 for k in ("correlation", "similarity") for s in ("max", "min", "mean", "std")}}
PAPER_NAME = {"tsm": "TSM", "deme": "DeMe", "dmp": "DMP", "wadi": "WaDi"}


def load_paper_table(name: str, paper_dir: Path = PAPER_DIR) -> pd.DataFrame:
    path = Path(paper_dir) / f"{name}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no transcribed paper table named {name!r}")
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def paper_value(df: pd.DataFrame, row: str, metric: str, block: str = "", setting: str = "",
                names: tuple[str, ...] | None = None) -> str | None:
    """The printed value of one paper cell, or None where the paper has none. names: the paper's metric names to
    read, in order (default: PAPER_METRIC's for `metric`)."""
    sel = df[(df["row"] == row) & (df["block"] == block) & (df["setting"] == setting)]
    for name in names or PAPER_METRIC.get(metric, (metric,)):
        hit = sel[sel["metric"] == name]
        if len(hit) == 1:
            return hit["value"].iloc[0]
        if len(hit) > 1:
            raise ValueError(f"paper cell {row!r}/{block!r}/{setting!r}/{name!r} is ambiguous")
    return None


SPREAD_NOTE = ("± is one standard error where a row has one seed (CompBench-mini: prompts as the sampling unit; "
               "FID: bootstrap over samples), and the standard deviation over seeds where it has several.")


def _fmt(values: list[float], digits: int, se: float | None = None) -> str:
    """One run: its value, ± its standard error where known. Several runs (seeds): mean ± std over them."""
    values = [v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return "n/a"
    if len(values) == 1:
        spread = f" ± {se:.{digits}f}" if se is not None and np.isfinite(se) else ""
        return f"{values[0]:.{digits}f}{spread}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def _counts(metrics: dict[str, dict], runs: list[str], keys: list[str]) -> str:
    """The distinct sample counts of `keys` over `runs`, e.g. "200" or "100/200"."""
    ns = sorted({metrics[r][k] for r in runs for k in keys if metrics[r].get(k)})
    return "/".join(str(n) for n in ns) or "n/a"


def build_table(decl: dict, metrics: dict[str, dict], paper_dir: Path = PAPER_DIR) -> pd.DataFrame:
    """Rows from `decl["rows"]`; `metrics` maps run name -> its metrics.json content."""
    # a row may name its own paper table (e.g. DMP Table 4's sub-tables 4a-4e); the paper's columns only where a
    # row stands for one of its rows (TSM Table 12 cites PixArt-alpha only: an SD1.5 config's table has none)
    cites = ("paper_row", "paper_rows", "paper_block", "paper_setting", "paper_table")
    cited = any(r.get(k) for r in decl["rows"] for k in cites)
    names = {n for n in [decl.get("paper_table") if cited else None, *(r.get("paper_table") for r in decl["rows"])]
             if n}
    papers = {n: load_paper_table(n, paper_dir) for n in names}
    tag = decl.get("paper_tag") or _paper_tag(decl)
    out = []
    for row in decl["rows"]:
        runs = row.get("runs") or [row["run"]]
        rec = {"row": row["label"], "runs": ", ".join(runs), "seeds": len(runs)}
        if not all(metrics[r].get("evaluator_validated", True) for r in runs):
            rec["row"] += " (UNVALIDATED evaluator)"
        for m in decl["columns"]:
            vals = [metrics[r].get(m) for r in runs]
            label = METRIC_LABEL.get(m, m)
            if m == "fid":  # name the feature space: shapes, patch (Patch-FID) or inception
                label = f"FID ({metrics[runs[0]].get('fid_feature_space', 'shapes')} features)"
            rec[label] = _fmt(vals, DIGITS.get(m, 2), metrics[runs[0]].get(f"{m}_se"))
        cats = [m for m in decl["columns"] if m in CATEGORIES]
        if cats:
            rec["Images per category"] = _counts(metrics, runs, [f"n_images_{c}" for c in cats])
        if "fid" in decl["columns"]:
            rec["FID samples"] = _counts(metrics, runs, ["fid_n_samples"])
        if papers:
            paper = papers.get(row.get("paper_table") or decl.get("paper_table"))
            cited = paper is not None and (row.get("paper_row") or row.get("paper_setting"))
            rec[f"{tag} row"] = " ".join(filter(None, [row.get("paper_row"), row.get("paper_setting")])) or "—"
            for m in decl["columns"]:
                # a column may cite another paper row (DMP Table 1: the model without the patch)
                prow = row.get("paper_rows", {}).get(m, row.get("paper_row", ""))
                pset = row.get("paper_setting") or METRIC_SETTING.get(m, "")
                # a table may name the paper's column (WaDi's main table: "#Params (M)" is the whole model's)
                names = (decl["paper_metrics"][m],) if m in decl.get("paper_metrics", {}) else None
                v = paper_value(paper, prow, m, row.get("paper_block", ""), pset, names) if cited else None
                # the paper's own metric name: its FID is Inception FID, not ours
                header = PAPER_COLUMN.get(m, (names or PAPER_METRIC.get(m, (m,)))[0])
                rec[f"{header} [{tag}]"] = v if v is not None else "—"
        out.append(rec)
    df = pd.DataFrame(out)
    empty = [c for c in df.columns if c.endswith(f"[{tag}]") and (df[c] == "—").all()]
    return df.drop(columns=empty)


def _paper_tag(decl: dict) -> str:
    name = decl.get("paper_table", "")
    if not name:
        return "paper"
    paper, _, table = name.partition("_")
    # tsm_table6 -> TSM Table 6, deme_supp_table1 -> DeMe Supp. Table 1, wadi_table_adapters -> WaDi Table adapters
    table = table.replace("table_", "table").replace("table", "Table ").replace("supp_", "Supp. ")
    return f"{PAPER_NAME.get(paper, paper)} {table}"


def write_table(df: pd.DataFrame, decl: dict, csv_path, md_path, tex_path) -> None:
    with atomic_path(csv_path) as tmp:
        df.to_csv(tmp, index=False)
    title = decl["title"]
    note = decl.get("caption", "").strip()
    with atomic_path(md_path) as tmp:
        tmp.write_text(f"## {title}\n\n{df.to_markdown(index=False)}\n\n{note}\n\n{SPREAD_NOTE}\n")
    with atomic_path(tex_path) as tmp:
        tmp.write_text(df.to_latex(index=False, caption=title, label=f"tab:{Path(tex_path).stem}", escape=True))


def load_run_metrics(paths: dict[str, str]) -> dict[str, dict]:
    return {run: read_json(p) for run, p in paths.items()}


def trainable_summary(spec: dict, stats: list[dict]) -> dict:
    """Trainable parameters of a run's last training stage, as TSM Table 9 counts them.

    lora / tsm1: all experts (n experts of rank r cost what one rank n*r LoRA costs);
    tsm2: the routers only (the experts are frozen); moe_lora: experts and router;
    finetune: what the job trained (all denoiser weights, or prompts and gate); DeMe: every range model;
    distill: the student's adapter (or all its weights; all experts of a TSM 1-stage student, the routers of a
    2-stage one, as tsm1 and tsm2 count), not the fake score's, which sampling never uses (`fake_params_m`
    gives it apart, as WaDi Table 3 does).
    `stats` are the stats.json of the run's expert dirs and router dir.
    """
    counts = method_of(spec).counts
    if counts == "none" or not stats:
        return {}
    if counts == "student":
        n = stats[0]["student_trainable_params"]
        return {"trainable_params": int(n), "trainable_params_m": n / 1e6,
                "trainable_pct": 100.0 * n / stats[0]["model_params"],
                "fake_params_m": stats[0]["fake_trainable_params"] / 1e6}
    if counts == "routers":
        n = sum(s["trainable_params"] for s in stats if "router_params" in s)
    else:
        n = sum(s["trainable_params"] for s in stats)
    total = stats[0]["model_params"]
    out = {"trainable_params": int(n), "trainable_pct": 100.0 * n / total}
    if "added_params" in stats[0]:  # a patch that adds parameters to the denoiser (DMP Table 1)
        d, a = stats[0]["denoiser_params"], stats[0]["added_params"]
        out.update(denoiser_params_m=d / 1e6, patched_params_m=(d + a) / 1e6, param_increase_pct=100.0 * a / d)
    return out
