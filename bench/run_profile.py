"""Where a workflow run's time went, per rule: jobs, wall and CPU seconds, and the fixed cost per job.

Reads the Snakemake `benchmark:` files of a run (<workdir>/results/benchmarks/<rule>/*.tsv, one per job
that ran), the job counts of the config's whole DAG (a --forceall dry run), the fixed cost per job from
bench/results/job_overhead.json (a no-op job of the rule's script), and the run's wall time from the
Snakemake log that covers it. A rule with fewer measured jobs than the DAG has gets a projection
(mean measured job x jobs), marked as such:
    .venv/bin/python bench/run_profile.py --workdir . --configfile config/config.yaml \\
        --log .snakemake/log/<stamp>.snakemake.log --out bench/results/default_run_profile
Writes <out>.json (top-level total_wall_s: the logged run's wall time, null without a log) and <out>.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from job_overhead import job_counts  # noqa: E402

from tsmflow.data.io import write_json  # noqa: E402
from tsmflow.reporting.publish import git_commit  # noqa: E402

STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]", re.M)


def log_wall_s(log: Path) -> float:
    """Seconds from the first to the last timestamp Snakemake wrote in its log."""
    stamps = [datetime.strptime(" ".join(s.split()), "%a %b %d %H:%M:%S %Y") for s in STAMP.findall(log.read_text())]
    if len(stamps) < 2:
        raise ValueError(f"{log}: fewer than two Snakemake timestamps")
    return (stamps[-1] - stamps[0]).total_seconds()


def measured(workdir: Path) -> dict[str, pd.DataFrame]:
    out = {}
    for d in sorted((workdir / "results/benchmarks").glob("*")):
        rows = [pd.read_csv(f, sep="\t").iloc[-1] for f in sorted(d.glob("*.tsv"))]
        if rows:
            out[d.name] = pd.DataFrame(rows)
    return out


def profile(workdir: Path, configfile: str, log: Path | None) -> dict:
    counts = job_counts(configfile)
    bench = measured(workdir)
    overhead_file = ROOT / "bench/results/job_overhead.json"
    noop = {r["rule"]: r["noop_s"] for r in json.loads(overhead_file.read_text())["rules"]} \
        if overhead_file.is_file() else {}
    rules = []
    for rule, n in sorted(counts.items()):
        b = bench.get(rule)
        k = 0 if b is None else len(b)
        wall = float(b["s"].sum()) if k else 0.0
        cpu = float(pd.to_numeric(b["cpu_time"], errors="coerce").sum()) if k else 0.0
        mean = wall / k if k else None
        rules.append({"rule": rule, "jobs": n, "measured_jobs": k, "wall_s": wall, "cpu_s": cpu,
                      "mean_job_s": mean, "projected_wall_s": None if mean is None else mean * n,
                      "noop_job_s": noop.get(rule),
                      "fixed_share": None if not (mean and rule in noop) else min(1.0, noop[rule] / mean)})
    complete = all(r["measured_jobs"] >= r["jobs"] for r in rules if r["rule"] != "all")
    return {"workdir": str(workdir), "configfile": configfile,
            "commit": git_commit(ROOT),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU",
            "total_wall_s": log_wall_s(log) if log else None, "log": str(log) if log else None,
            "complete": complete, "total_jobs": sum(counts.values()),
            "measured_jobs": sum(r["measured_jobs"] for r in rules),
            "sum_job_wall_s": sum(r["wall_s"] for r in rules),
            "sum_job_cpu_s": sum(r["cpu_s"] for r in rules),
            "projected_sum_job_wall_s": sum(r["projected_wall_s"] or 0 for r in rules), "rules": rules}


def fmt(x, spec=".0f"):
    return "" if x is None else format(x, spec)


def markdown(rec: dict, command: str) -> str:
    lines = ["# Profile of a workflow run", "",
             f"Made by `{command}` at commit {rec['commit']} ({rec['machine']}).",
             f"Config `{rec['configfile']}`: {rec['total_jobs']} jobs in its DAG, {rec['measured_jobs']} with a "
             f"benchmark file in `{rec['workdir']}/results/benchmarks`"
             + (" (the whole run)." if rec["complete"] else " (a partial run: the other rules' rows are projected "
                "from the mean measured job, or empty where no job ran)."),
             f"Wall time of the logged run: {fmt(rec['total_wall_s'])} s. Sum of job wall times: "
             f"{rec['sum_job_wall_s']:.0f} s ({rec['sum_job_cpu_s']:.0f} CPU s); projected over the whole DAG: "
             f"{rec['projected_sum_job_wall_s']:.0f} s.",
             "Fixed cost: a no-op job of the rule's script (bench/results/job_overhead.md), as a share of the mean "
             "job.", "",
             "| rule | jobs | measured | wall s | CPU s | mean job s | projected wall s | no-op job s | fixed share |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rec["rules"], key=lambda r: -(r["projected_wall_s"] or 0)):
        lines.append(f"| {r['rule']} | {r['jobs']} | {r['measured_jobs']} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} | "
                     f"{fmt(r['mean_job_s'], '.1f')} | {fmt(r['projected_wall_s'])} | "
                     f"{fmt(r['noop_job_s'], '.1f')} | {fmt(r['fixed_share'], '.0%')} |")
    return "\n".join(lines + [""])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default=".")
    ap.add_argument("--configfile", default="config/config.yaml")
    ap.add_argument("--log", type=Path, help="the Snakemake log of the run (.snakemake/log/*.snakemake.log)")
    ap.add_argument("--out", default="bench/results/default_run_profile")
    a = ap.parse_args()
    rec = profile(Path(a.workdir).resolve(), a.configfile, a.log)
    out = ROOT / a.out
    write_json(out.with_suffix(".json"), rec)
    md = markdown(rec, "bench/run_profile.py " + " ".join(sys.argv[1:]))
    out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
