"""The published results folder (docs/results/): every table, the claims page and the key plots of one run, each
naming where it came from: the commit, the config hash, the machine, the run's wall time and the command.

Tables are copied byte for byte below one provenance line, so a published table can be checked against the
results/ it was made from; plots carry the same line as a PNG text chunk. Nothing here computes a number.
"""
from __future__ import annotations

import csv
import os
import platform
import shutil
import subprocess
from pathlib import Path

from PIL import Image, PngImagePlugin


def git_commit(repo) -> str:
    """Short commit of `repo`, with "+dirty" when tracked files differ from it; "unknown" outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=repo, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=repo, capture_output=True).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def machine() -> str:
    """Architecture, CPU count and GPU names (nvidia-smi's; importing torch to ask would cost seconds)."""
    gpus = []
    if shutil.which("nvidia-smi"):
        r = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
        gpus = [g.strip() for g in r.stdout.splitlines() if g.strip()] if r.returncode == 0 else []
    return f"{platform.machine()}, {os.cpu_count()} CPUs, {', '.join(gpus) or 'no GPU'}"


def wall_span(benchmark_dir, exclude: str = "publish_results") -> float | None:
    """Seconds from the first job's start to the last job's end, from Snakemake's benchmark files: each is written
    when its job ends (its mtime) and holds the job's wall seconds (`s`). A run resumed later spans the pause too."""
    starts, ends = [], []
    for f in Path(benchmark_dir).rglob("*.tsv"):
        if f.parent.name == exclude:
            continue
        with open(f, newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        if not rows:
            continue
        end = f.stat().st_mtime
        starts.append(end - float(rows[-1]["s"]))
        ends.append(end)
    return max(ends) - min(starts) if ends else None


def provenance(commit: str, config_hash: str, machine_name: str, wall_s: float | None, command: str) -> str:
    wall = f"{wall_s:.0f} s" if wall_s is not None else "unknown"
    return (f"Published by rule publish_results from results/: commit {commit}, config {config_hash}, "
            f"machine {machine_name}, run wall time {wall} (first job start to last job end), command `{command}`.")


def publish(files: dict[str, str], out_dir, line: str) -> list[str]:
    """Copy each results/ file to out_dir/<name> (the rule's temporary folder): .md under a quoted provenance line,
    .csv under a `#` comment line (pandas: comment="#"), .png with the line as its "provenance" text chunk.
    Returns the names written."""
    out = Path(out_dir)
    written = []
    for name, src in sorted(files.items()):
        dst = out / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.suffix == ".md":
            dst.write_bytes(f"> {line}\n\n".encode() + Path(src).read_bytes())
        elif dst.suffix == ".csv":
            dst.write_bytes(f"# {line}\n".encode() + Path(src).read_bytes())
        elif dst.suffix == ".png":
            info = PngImagePlugin.PngInfo()
            info.add_text("provenance", line)
            with Image.open(src) as im:
                im.save(dst, format="PNG", pnginfo=info)
        else:
            shutil.copyfile(src, dst)
        written.append(name)
    return written


def write_index(out_dir, names: list[str], line: str) -> None:
    tables = [n for n in names if n.endswith(".md")]
    plots = [n for n in names if n.endswith(".png")]
    text = ["# Published results", "", line, "",
            "Regenerate: run the workflow (`make run`); rule `publish_results` rewrites this folder from `results/`.",
            "", "## Tables", "", *[f"- [{Path(n).stem}]({n})" for n in tables], "", "## Plots", "",
            *[f"- [{Path(n).stem}]({n})" for n in plots], ""]
    (Path(out_dir) / "README.md").write_text("\n".join(text))
