"""Record the tables and claims of a session-sized part of the default run (the whole run exceeds a session).

After `snakemake results/tables/<table>.md ...` on the default config, this copies those tables and evaluates the
named claims (the claims page's test, `reporting.claims`) from the runs' metrics.json, under one provenance line:
commit, command, job wall time summed from the jobs' benchmark files. `docs/results/` stays the full run's.
    cd bench && ../.venv/bin/python partial_results.py --name distill --tables wadi_adapters tsm_table6 \
        --claims wadi_lorad_vs_lora_unet --command "snakemake results/tables/wadi_adapters.md ..."
Writes bench/results/partial_<name>.md.
"""
from __future__ import annotations

import argparse
import platform
from pathlib import Path

import pandas as pd
import yaml

from tsm_speed import ROOT
from tsmflow.data.io import read_json
from tsmflow.reporting.claims import TEST, build_claims
from tsmflow.reporting.publish import git_commit


def job_wall_s(results: Path, rules: list[str]) -> float:
    """Sum of the wall times in the benchmark files of `rules` (what the named targets ran)."""
    total = 0.0
    for rule in rules:
        for f in (results / "benchmarks" / rule).glob("*.tsv"):
            total += float(pd.read_csv(f, sep="\t")["s"].iloc[-1])
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--tables", nargs="+", required=True)
    ap.add_argument("--claims", nargs="*", default=[])
    ap.add_argument("--command", required=True, help="the snakemake command that made the results")
    ap.add_argument("--rules", nargs="*", default=[], help="rules whose benchmark wall times to sum")
    a = ap.parse_args()
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    res = ROOT / "results"
    line = (f"Made at commit {git_commit(ROOT)} by `{a.command}` on the default config, {platform.machine()} CPU "
            f"(2 cores, no GPU)" + (f"; {job_wall_s(res, a.rules):.0f} s of job wall time in "
                                    f"{', '.join(a.rules)}" if a.rules else "") + ". Recorded by "
            "`bench/partial_results.py`.")
    parts = [f"# Partial default run: {a.name}", "", line, ""]
    parts += [(res / f"tables/{t}.md").read_text() for t in a.tables]
    if a.claims:
        decls = {c: cfg["claims"][c] for c in a.claims}
        runs = {r for c in decls.values() for side in ("ours", "baseline") for r in c[side]["runs"]}
        metrics = {r: read_json(res / f"runs/{r}/metrics.json") for r in runs}
        df = build_claims(decls, metrics)
        cols = ["statement", "paper table", "metric", "paper: ours", "paper: baseline", "ours", "baseline", "d ± SE",
                "z", "verdict"]
        parts += ["## Claims", "", df[cols].to_markdown(index=False), "", TEST, ""]
    out = ROOT / f"bench/results/partial_{a.name}.md"
    out.write_text("\n".join(parts))
    print(out.read_text())


if __name__ == "__main__":
    main()
