"""The fixed cost of one workflow job, per rule: process start plus the imports of its script.

A no-op job of a script is a fresh interpreter that runs the script's module-level imports (and
Snakemake's script preamble import) and nothing else. Multiplied by the rule's job count in the
default config's dry run, it is what a whole run pays before any work:
    .venv/bin/python bench/job_overhead.py [--configfile config/config.yaml] [--repeats 3]
Writes bench/results/job_overhead.{json,md}. The load average at the start and end is recorded:
on a busy machine every import is slower, so compare rules within one run, not across runs.
"""
from __future__ import annotations

import argparse
import ast
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

from tsmflow.data.io import write_json
from tsmflow.reporting.publish import git_commit

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench/results/job_overhead"
PREAMBLE = "import snakemake.script"  # what Snakemake's script: directive imports before the script runs


def rule_scripts() -> dict[str, str]:
    """rule name -> script file, from the rules' `script:` directives."""
    out = {}
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        for m in re.finditer(r"^rule (\w+):(.*?)(?=^rule |\Z)", smk.read_text(), re.S | re.M):
            s = re.search(r'script:\s*\n\s*"\.\./scripts/([\w.]+)"', m.group(2))
            if s:
                out[m.group(1)] = s.group(1)
        for m in re.finditer(r"^use rule (\w+) as (\w+)", smk.read_text(), re.M):  # same script
            out.setdefault(m.group(2), out.get(m.group(1)))
    return {k: v for k, v in out.items() if v}


def script_imports(path: Path) -> str:
    tree = ast.parse(path.read_text())
    return "\n".join(ast.unparse(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)))


def job_counts(configfile: str) -> dict[str, int]:
    """Jobs per rule in the whole DAG of `configfile` (--forceall: whatever results/ holds already)."""
    r = subprocess.run([str(ROOT / ".venv/bin/snakemake"), "-n", "--forceall", "--quiet", "rules",
                        "--configfile", configfile,
                        "--directory", str(ROOT)], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return parse_job_counts(r.stdout + r.stderr, configfile)


def parse_job_counts(output: str, what: str) -> dict[str, int]:
    """Jobs per rule from the job stats a dry run prints."""
    counts = {}
    for line in output.splitlines():
        m = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if m and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    if not counts:
        raise RuntimeError(f"no job stats in the dry run of {what}:\n{output[-3000:]}")
    return counts


def wall(code: str, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=ROOT,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
        times.append(time.perf_counter() - t0)
    return sorted(times)


def markdown(rec: dict) -> str:
    lines = ["# Fixed cost per job", "",
             f"Made by `bench/job_overhead.py --configfile {rec['configfile']}` at commit {rec['commit']} "
             f"({rec['machine']}, load average {rec['load_start']:.1f} at the start, {rec['load_end']:.1f} at the "
             f"end). A no-op job: a fresh interpreter importing what the rule's script imports at module level, "
             f"plus Snakemake's script preamble; median of {rec['repeats']}. A bare interpreter takes "
             f"{rec['bare_python_s']:.2f} s and the preamble alone {rec['preamble_s']:.2f} s.", "",
             f"Jobs in the dry run: {rec['total_jobs']}; fixed cost of all of them: "
             f"{rec['total_fixed_core_s']:.0f} core-seconds.", "",
             "| rule | script | jobs | no-op job s (median) | fixed core-s | imports diffusers |",
             "|---|---|---|---|---|---|"]
    for r in sorted(rec["rules"], key=lambda r: -r["fixed_core_s"]):
        lines.append(f"| {r['rule']} | {r['script']} | {r['jobs']} | {r['noop_s']:.2f} | {r['fixed_core_s']:.0f} | "
                     + ("yes" if r["imports_diffusers"] else "no") + " |")
    return "\n".join(lines + [""])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configfile", default="config/config.yaml")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    load_start = os.getloadavg()[0]
    counts = job_counts(args.configfile)
    scripts = rule_scripts()
    bare = wall("pass", args.repeats)[args.repeats // 2]
    pre = wall(PREAMBLE, args.repeats)[args.repeats // 2]
    cache: dict[str, tuple[float, bool]] = {}
    rules = []
    for rule, n in counts.items():
        if rule not in scripts:
            continue  # run:/shell: rules (the target rule `all`)
        name = scripts[rule]
        if name not in cache:
            code = PREAMBLE + "\n" + script_imports(ROOT / "scripts" / name)
            probe = code + "\nimport sys\nassert 'diffusers' not in sys.modules"
            uses = subprocess.run([sys.executable, "-c", probe], capture_output=True, cwd=ROOT).returncode != 0
            cache[name] = (wall(code, args.repeats)[args.repeats // 2], uses)
            print(f"{rule:28s} {name:30s} {cache[name][0]:6.2f} s", flush=True)
        t, uses = cache[name]
        rules.append({"rule": rule, "script": name, "jobs": n, "noop_s": t, "fixed_core_s": t * n,
                      "imports_diffusers": uses})
    rec = {"configfile": args.configfile, "repeats": args.repeats,
           "commit": git_commit(ROOT),
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU", "bare_python_s": bare,
           "preamble_s": pre, "load_start": load_start, "load_end": os.getloadavg()[0],
           "total_jobs": sum(counts.values()), "total_fixed_core_s": sum(r["fixed_core_s"] for r in rules),
           "rules": rules}
    write_json(OUT.with_suffix(".json"), rec)
    OUT.with_suffix(".md").write_text(markdown(rec))
    print(markdown(rec))


if __name__ == "__main__":
    main()
