"""What each table of a part cost in job wall time, from the Snakemake `benchmark:` files of the run that built it.

For every table of the part, a --forceall dry run lists the jobs the table needs and their benchmark files
(results/benchmarks/<rule>/<wildcards>.tsv); their `s` columns are summed. Jobs that another table of the part
needs too (the miniature's foundation: data, VAE, text encoder, evaluator, base models) are counted once, under
"shared"; a table's own cost is the jobs only it needs. A job without a benchmark file did not run here:
counted as missing, not as zero.
    .venv/bin/python bench/table_costs.py --part dmp --out bench/results/table_costs_dmp
Writes <out>.json and <out>.md.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]

from tsmflow.config import load_config  # noqa: E402
from tsmflow.data.io import write_json  # noqa: E402
from tsmflow.reporting.publish import git_commit  # noqa: E402


def table_jobs(table: str, configfile: Path) -> set[str]:
    """The benchmark files of every job `results/tables/<table>.md` needs."""
    snakemake = Path(sys.executable).parent / "snakemake"
    r = subprocess.run([str(snakemake), f"results/tables/{table}.md", "-n", "--forceall", "--configfile",
                        str(configfile)], capture_output=True, text=True, cwd=ROOT)
    if r.returncode:
        raise RuntimeError(f"{table}: dry run failed\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return set(re.findall(r"^\s+benchmark: (\S+)$", r.stdout, re.M))


def wall(path: str) -> float | None:
    f = ROOT / path
    return float(pd.read_csv(f, sep="\t")["s"].sum()) if f.is_file() else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", required=True)
    ap.add_argument("--configfile", type=Path, default=ROOT / "config/config.yaml")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    tables = load_config(a.configfile)["parts"][a.part]
    jobs = {t: table_jobs(t, a.configfile) for t in tables}
    count = {j: sum(j in js for js in jobs.values()) for js in jobs.values() for j in js}
    shared = {j for j, n in count.items() if n > 1}

    def cost(js):
        times = [wall(j) for j in js]
        return {"jobs": len(js), "measured": sum(t is not None for t in times),
                "wall_s": round(sum(t for t in times if t is not None), 1)}

    rows = {t: {"own": cost(js - shared), "with_shared": cost(js)} for t, js in jobs.items()}
    out = {"part": a.part, "commit": git_commit(ROOT), "shared": cost(shared), "tables": rows}
    write_json(a.out.with_suffix(".json"), out)
    lines = [f"# Job wall time per table of part {a.part}", "",
             f"Script at commit {out['commit']}; from results/benchmarks of the run that built them "
             "(docs/results/<part>/README.md names its commit; `bench/table_costs.py`). "
             "Own: the jobs only this table needs; shared: jobs two or more of the part's tables need "
             f"({out['shared']['jobs']} jobs, {out['shared']['measured']} measured, "
             f"{out['shared']['wall_s']:.0f} s).", "",
             "| table | own jobs | measured | own wall (s) | with shared: jobs | wall (s) |", "|---|---|---|---|---|---|"]
    for t, r in rows.items():
        lines.append(f"| {t} | {r['own']['jobs']} | {r['own']['measured']} | {r['own']['wall_s']:.0f} | "
                     f"{r['with_shared']['jobs']} | {r['with_shared']['wall_s']:.0f} |")
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
