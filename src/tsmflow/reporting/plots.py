"""Figures: captioned sample grids and training curves (matplotlib, headless)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..data.io import atomic_path  # noqa: E402


def _save(fig, path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip("."), dpi=110, bbox_inches="tight")
    plt.close(fig)


def sample_grid(images: np.ndarray, prompts: list[str], n_cols: int, path, title: str = "") -> None:
    """Rows are prompts (captioned on the left), columns are seeds."""
    n_rows = len(prompts)
    height = 1.3 * n_rows + 0.4
    fig, axes = plt.subplots(n_rows, n_cols + 1, figsize=(1.3 * n_cols + 3.2, height),
                             gridspec_kw={"width_ratios": [2.4] + [1] * n_cols}, squeeze=False)
    for r, prompt in enumerate(prompts):
        ax = axes[r, 0]
        ax.axis("off")
        ax.text(1.0, 0.5, "\n".join(textwrap.wrap(prompt, 30)), ha="right", va="center", fontsize=7.5,
                transform=ax.transAxes)
        for c in range(n_cols):
            a = axes[r, c + 1]
            a.imshow(images[r * n_cols + c], interpolation="nearest")
            a.set_xticks([])
            a.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(wspace=0.05, hspace=0.08, top=1 - 0.4 / height, bottom=0.02)
    _save(fig, path)


def image_pairs(top: np.ndarray, bottom: np.ndarray, path, labels=("input", "reconstruction"), n: int = 12) -> None:
    fig, axes = plt.subplots(2, n, figsize=(1.1 * n, 2.5), squeeze=False)
    for i in range(n):
        for r, (imgs, lab) in enumerate(((top, labels[0]), (bottom, labels[1]))):
            axes[r, i].imshow(imgs[i], interpolation="nearest")
            axes[r, i].set_xticks([])
            axes[r, i].set_yticks([])
            if i == 0:
                axes[r, i].set_ylabel(lab, fontsize=8)
    _save(fig, path)


def training_curves(curves: dict[str, str], path, title: str = "training loss") -> None:
    """One panel per curve CSV (step, loss): log-scaled loss against optimizer step."""
    fig, axes = plt.subplots(1, len(curves), figsize=(3.4 * len(curves), 2.8), squeeze=False)
    for ax, (name, csv) in zip(axes[0], curves.items()):
        df = pd.read_csv(csv)
        ax.plot(df["step"], df["loss"], lw=1.2)
        ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("loss")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)


CATEGORY_ORDER = ["color", "shape", "texture", "spatial", "non_spatial", "complex"]


def category_bars(decl: dict, metrics: dict[str, dict], path) -> None:
    """Grouped bars: CompBench-mini score (%) per category, one bar per table row (mean over seeds)."""
    cats = [c for c in CATEGORY_ORDER if c in decl["columns"]]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(cats) + 1), 3.2))
    width = 0.8 / max(1, len(decl["rows"]))
    for i, row in enumerate(decl["rows"]):
        runs = row.get("runs") or [row["run"]]
        vals = np.array([[metrics[r][c] for c in cats] for r in runs])
        err = vals.std(axis=0, ddof=1) if len(runs) > 1 else None
        ax.bar(np.arange(len(cats)) + i * width, vals.mean(axis=0), width, yerr=err, label=row["label"], capsize=2)
    ax.set_xticks(np.arange(len(cats)) + width * (len(decl["rows"]) - 1) / 2)
    ax.set_xticklabels(cats)
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(decl["title"], fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def fid_bars(decl: dict, metrics: dict[str, dict], path) -> None:
    """FID per row, annotated with the number of generated samples it was computed from."""
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(decl["rows"]) + 1.5), 3.0))
    for i, row in enumerate(decl["rows"]):
        runs = row.get("runs") or [row["run"]]
        v = np.array([metrics[r]["fid"] for r in runs])
        ax.bar(i, v.mean(), yerr=v.std(ddof=1) if len(v) > 1 else None, capsize=2)
        n = metrics[runs[0]]["fid_n_samples"]
        ax.annotate(f"n={n}", (i, v.mean()), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(decl["rows"])))
    ax.set_xticklabels([r["label"] for r in decl["rows"]], rotation=20, ha="right", fontsize=7)
    space = metrics[(decl["rows"][0].get("runs") or [decl["rows"][0]["run"]])[0]].get("fid_feature_space", "shapes")
    ax.set_ylabel(f"FID ({space} features), lower is better", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def score_vs_n(decl: dict, metrics: dict[str, dict], path) -> None:
    """TSM Table 8 as curves: mean CompBench-mini score against the number of intervals n.

    Rows are read from their paper_setting ``n=..;r=..;step=..``: one curve per backbone block
    at the standard per-expert steps, one per block at equal total budget (n x steps = const).
    """
    cats = [c for c in CATEGORY_ORDER if c in decl["columns"]]
    recs = []
    for row in decl["rows"]:
        kv = dict(p.split("=") for p in row.get("paper_setting", "").split(";") if "=" in p)
        if not {"n", "r", "step"} <= set(kv):
            continue
        runs = row.get("runs") or [row["run"]]
        score = np.mean([np.mean([metrics[r][c] for c in cats]) for r in runs])
        recs.append({"block": row.get("paper_block", ""), "n": int(kv["n"]), "r": int(kv["r"]),
                     "step": int(kv["step"]), "budget": int(kv["n"]) * int(kv["step"]), "score": score})
    df = pd.DataFrame(recs)
    if not df.empty:  # the experts' rank (r=4 in the paper); other ranks are other tables' business
        df = df[df["r"] == df["r"].mode().iloc[0]]
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    if not df.empty:
        std_step = df["step"].mode().iloc[0]
        budget = df["budget"].max()
        for block, g in df.groupby("block"):
            a = g[g["step"] == std_step].sort_values("n")
            line, = ax.plot(a["n"], a["score"], "o-", label=f"{block}: {std_step} steps per expert")
            b = g[g["budget"] == budget].sort_values("n")
            ax.plot(b["n"], b["score"], "s--", color=line.get_color(), label=f"{block}: n x steps = {budget}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("intervals n (experts)")
    ax.set_ylabel("mean CompBench-mini score (%)")
    ax.set_title("TSM 1-stage: score vs n (paper step units)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    _save(fig, path)


def gates_vs_t(records: pd.DataFrame, context_names: list[str], path, title: str = "") -> None:
    """Router gate value against t per context scale: mean over layers and samples, band = layer spread."""
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    for j, name in enumerate(context_names):
        g = records[records["scale"] == j]
        per_layer = g.groupby(["t", "layer"])["gate"].mean().unstack()
        t = per_layer.index.to_numpy()
        mean = per_layer.mean(axis=1).to_numpy()
        lo, hi = per_layer.quantile(0.1, axis=1).to_numpy(), per_layer.quantile(0.9, axis=1).to_numpy()
        ax.plot(t, mean, label=f"context {name}")
        ax.fill_between(t, lo, hi, alpha=0.2)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("timestep t (diffusers convention, 0 = clean)")
    ax.set_ylabel("gate G(z_t, t)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def cosine_heatmap(cos: pd.DataFrame, path, title: str = "") -> None:
    """DeMe supplement Fig. 1: cosine similarity of the range models' task vectors."""
    n = len(cos)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * n, 0.6 + 0.8 * n))
    im = ax.imshow(cos.to_numpy(), vmin=-1, vmax=1, cmap="coolwarm")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{cos.iat[i, j]:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(n), cos.columns, fontsize=7, rotation=30)
    ax.set_yticks(range(n), cos.index, fontsize=7)
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def metric_vs_setting(series: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str, path,
                      title: str = "", baseline: float | None = None, baseline_label: str = "") -> None:
    """Lines of (x, metric) per named series, e.g. FID against N or p (DeMe) or training steps (DMP)."""
    fig, ax = plt.subplots(figsize=(4.8, 3.2))
    for name, pts in series.items():
        pts = sorted(pts)
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=name)
    if baseline is not None:
        ax.axhline(baseline, color="grey", ls="--", lw=1, label=baseline_label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def deme_sensitivity_series(points: list[tuple[int, float, float]]) -> dict[str, list[tuple[float, float]]]:
    """DeMe Fig. 2 lines from (N, p, FID) points: FID against N at each p, and against p at each N.

    N=1 is one range covering every t, so p means nothing there: it starts every N sweep. A sweep needs two
    points of its own (two N > 1 at that p, or two p at that N > 1); a lone point is not a line."""
    single = [fid for n, _, fid in points if n == 1]
    series = {}
    for p in sorted({p for n, p, _ in points if n > 1}):
        pts = [(n, fid) for n, q, fid in points if n > 1 and q == p]
        if len(pts) > 1:
            series[f"N (p={p:g})"] = [(1, f) for f in single] + pts
    for n in sorted({n for n, _, _ in points if n > 1}):
        pts = [(p, fid) for m, p, fid in points if m == n]
        if len(pts) > 1:
            series[f"p (N={n})"] = pts
    return series


def prompt_activation(weights: np.ndarray, timesteps: np.ndarray, path, title: str = "") -> None:
    """DMP Fig. 5: mean gate weight of each prompt (x) per timestep (y), one panel per block."""
    n_blocks = weights.shape[1]
    cols = min(n_blocks, 4)
    rows = -(-n_blocks // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.2 * rows), squeeze=False)
    for b in range(rows * cols):
        ax = axes[b // cols][b % cols]
        if b >= n_blocks:
            ax.axis("off")
            continue
        w = weights[:, b, :]
        w = w[:, ~np.isnan(w).all(axis=0)]
        im = ax.imshow(w, aspect="auto", cmap="viridis", origin="lower",
                       extent=(0, w.shape[1], timesteps.min(), timesteps.max()))
        ax.set_title(f"block {b}", fontsize=7)
        ax.set_xlabel("prompt", fontsize=6)
        ax.set_ylabel("t", fontsize=6)
        ax.tick_params(labelsize=6)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def weight_change_layers(changes: dict[str, pd.DataFrame], path, title: str = "") -> None:
    """WaDi Fig. 1: per layer, a student's norm change (NM) and direction change (DM) against its teacher, one
    panel per student, with each metric's mean and std over layers in its legend."""
    height = 1.9 * len(changes) + 0.6
    fig, axes = plt.subplots(len(changes), 1, figsize=(8.0, height), squeeze=False)
    for ax, (label, df) in zip(axes[:, 0], changes.items()):
        x = np.arange(len(df))
        for col, name in (("direction_change", "DM"), ("norm_change", "NM")):
            v = df[col].to_numpy()
            ax.plot(x, v, lw=0.9, label=f"{name}: {v.mean():.3g} ± {v.std():.3g} %")
        ax.set_title(f"{label} ({len(df)} weights)", fontsize=8)
        ax.set_ylabel("change (%)", fontsize=7)
        ax.legend(fontsize=7, loc="upper right")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("weight (denoiser order)", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / height))  # tight_layout alone lets the suptitle overlap panel 1
    _save(fig, path)
