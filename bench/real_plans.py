"""What each paper model's config plans: per table, the jobs of `snakemake -n` (issue 18's one DAG at every scale).

For every config/backbones/*.yaml, every table with a row on its backbone is dry-run on its own (--forceall, in an
empty working directory, so nothing already built hides a job), with the placeholder data paths pointed at
existing paths:
    .venv/bin/python bench/real_plans.py --out bench/results/real_plans
Writes <out>.json ({spec: {table: {rule: jobs}}}) and <out>.md.
"""
from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from job_overhead import parse_job_counts  # noqa: E402

from tsmflow.config import load_config  # noqa: E402
from tsmflow.data.io import write_json  # noqa: E402
from tsmflow.reporting.publish import git_commit  # noqa: E402


def spec_tables(configfile: Path) -> tuple[str, list[str]]:
    """The spec's one backbone, and the tables with a row on it."""
    cfg = load_config(configfile)
    (name,) = cfg["backbones"]
    runs = {r for r, s in cfg["runs"].items() if s["backbone"] == name}
    return name, [t for t, d in cfg["tables"].items() if any(set(row["runs"] if "runs" in row else [row["run"]]) & runs
                                                             for row in d["rows"])]


def placeholders_filled(configfile: Path, name: str, out: Path) -> Path:
    """The spec with its placeholder data paths (`/data/...`) pointed at existing paths, extending the default by
    its absolute path; a shard spec becomes a folder spec (a dry run reads neither)."""
    cfg = yaml.safe_load(configfile.read_text())
    cfg["extends"] = str(ROOT / "config/config.yaml")
    data = {k: v for k, v in cfg["backbones"][name]["data"].items() if k not in ("shards", "image_text_folder")}
    cfg["backbones"][name]["data"] = {**data, "image_text_folder": str(ROOT)}
    cfg["coco"].update(annotations=str(ROOT / "README.md"), images=str(ROOT))
    if "t2i_compbench" in cfg:  # a prompt folder in T2I-CompBench's format (the DAG reads its files as it is built)
        prompts = out.parent / "t2i_compbench"
        prompts.mkdir(exist_ok=True)
        for cat in ("color", "shape", "texture", "spatial", "non_spatial", "complex"):
            for split in ("train", "val"):
                (prompts / f"{cat}_{split}.txt").write_text("a red book and a blue mug\n")
        cfg["t2i_compbench"]["prompts"] = str(prompts)
    out.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return out


def plan(configfile: Path, target: str, workdir: Path) -> dict[str, int]:
    snakemake = Path(sys.executable).parent / "snakemake"
    r = subprocess.run([str(snakemake), target, "-n", "--forceall", "--quiet", "rules",
                        "-s", str(ROOT / "Snakefile"), "--directory", str(workdir), "--configfile", str(configfile)],
                       capture_output=True, text=True, cwd=ROOT)
    if r.returncode:
        raise RuntimeError(f"{configfile} {target}: dry run failed\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return parse_job_counts(r.stdout + r.stderr, f"{configfile} {target}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    plans = {}
    with tempfile.TemporaryDirectory() as work:
        for spec in sorted((ROOT / "config/backbones").glob("*.yaml")):
            name, tables = spec_tables(spec)
            filled = placeholders_filled(spec, name, Path(work) / spec.name)
            plans[spec.name] = {t: plan(filled, f"results/tables/{t}.md", Path(work) / "work") for t in tables}
            print(spec.name, {t: sum(c.values()) for t, c in plans[spec.name].items()}, flush=True)
    meta = {"commit": git_commit(ROOT), "machine": f"{platform.machine()}, {platform.system()}"}
    write_json(f"{args.out}.json", {**meta, "plans": plans})
    lines = ["# What each paper model's config plans", "",
             f"Made by `bench/real_plans.py --out {args.out}` at commit {meta['commit']}: `snakemake -n --forceall` "
             "of each table on its own, placeholder data paths pointed at existing paths. Jobs "
             "per rule; a table's data and reference jobs (`encode_image_text`, `coco_reference`, "
             "`fid_reference_stats_coco`) are shared with the spec's other tables.", "",
             "| config | table | jobs | per rule |", "|---|---|---|---|"]
    for spec, tables in plans.items():
        for t, counts in tables.items():
            rules = ", ".join(f"{r} {n}" for r, n in counts.items())
            lines.append(f"| `{spec}` | `{t}` | {sum(counts.values())} | {rules} |")
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
