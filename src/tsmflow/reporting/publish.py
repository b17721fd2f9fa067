"""The published results folder (docs/results/): per part (a group of tables that runs on its own), the tables, its
claims and the table plots, each naming where it came from: the commit, the config hash, the machine, the times of
the jobs that built it and the command that builds the part; then one index and one claims page over the published
parts.

Tables are copied byte for byte below one provenance line, so a published table can be checked against the
results/ it was made from; plots carry the same line as a PNG text chunk. Nothing here computes a number.
"""
from __future__ import annotations

import base64
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path

from PIL import Image, PngImagePlugin

from tsmflow.data.io import atomic_path
from tsmflow.reporting.claims import HEADING as CLAIMS_HEADING


def git_commit(repo, exclude=()) -> str:
    """Short commit of `repo`, with "+dirty" when tracked files outside `exclude` differ from it; "unknown" outside
    git. A rule that rewrites a tracked folder excludes it: Snakemake removes the old one before the job runs."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=repo, capture_output=True, text=True,
                             check=True).stdout.strip()
        top = Path(repo).resolve()
        inside = [e for e in (Path(x).resolve() for x in exclude) if e.is_relative_to(top)]
        paths = [".", *(f":(exclude){e.relative_to(top)}" for e in inside)]
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", *paths], cwd=repo,
                               capture_output=True).returncode != 0
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


def record_path(metadata_dir, path: str) -> Path:
    """Where Snakemake keeps the metadata record of output `path`: its urlsafe base64 name, split into folders
    (prefixed "@") where it exceeds the file system's name limit (snakemake.persistence)."""
    b64 = base64.urlsafe_b64encode(str(path).encode()).decode()
    limit = os.pathconf(metadata_dir, "PC_NAME_MAX") - 1 if os.name == "posix" else 254
    chunks = [b64[i: i + limit] for i in range(0, len(b64), limit)]
    return Path(metadata_dir, *["@" + c for c in chunks[:-1]], chunks[-1])


def part_jobs(targets, metadata_dir) -> dict | None:
    """The jobs that built `targets` and everything upstream of them, read from Snakemake's metadata records (one
    per output: its rule, inputs, start and end): {"jobs", "job_s" (their wall seconds summed), "span_s" (first
    start to last end)}. Jobs of earlier runs count too: job_s is what the part costs from scratch, whichever run
    did each job, and span_s includes any pause between runs. None without records."""
    if not Path(metadata_dir).is_dir():
        return None
    jobs, seen, todo = {}, set(), [str(t) for t in targets]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        f = record_path(metadata_dir, path)
        if not f.is_file():
            continue  # a source file (config, data the user gave)
        rec = json.loads(f.read_text())
        if rec.get("starttime") is None or rec.get("endtime") is None:
            continue
        jobs[(rec["rule"], rec["starttime"])] = rec["endtime"]  # one job writes several outputs
        todo += rec.get("input", [])
    if not jobs:
        return None
    starts = [s for _, s in jobs]
    return {"jobs": len(jobs), "job_s": sum(e - s for (_, s), e in jobs.items()),
            "span_s": max(jobs.values()) - min(starts)}


def provenance(commit: str, config_hash: str, machine_name: str, jobs: dict | None, command: str) -> str:
    cost = (f"{jobs['jobs']} jobs upstream, {jobs['job_s']:.0f} s of job wall time in all, "
            f"{jobs['span_s']:.0f} s from the first start to the last end (jobs of earlier runs included)"
            if jobs else "job times unknown")
    return (f"Published by rule publish_part from results/: commit {commit}, config {config_hash}, "
            f"machine {machine_name}, {cost}, command `{command}`.")


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
            "Regenerate: the command above; rule `publish_part` rewrites this folder from `results/`.",
            "", "## Tables", "", *[f"- [{Path(n).stem}]({n})" for n in tables], "", "## Plots", "",
            *[f"- [{Path(n).stem}]({n})" for n in plots], ""]
    (Path(out_dir) / "README.md").write_text("\n".join(text))


def part_provenance(part_dir) -> str | None:
    """The provenance line of a published part (its README's third line), or None where it is not published."""
    index = Path(part_dir) / "README.md"
    return index.read_text().splitlines()[2] if index.is_file() else None


def write_site(docs_dir, parts: dict[str, dict], index_path, claims_path) -> list[str]:
    """The folder's index and its one claims page, from the parts published under docs_dir: each part with its own
    provenance line (parts may come from different runs), and every declared part not published yet, with the
    command that publishes it. `parts`: name -> {"tables": [...], "claims": [...]}. Returns the published parts."""
    docs = Path(docs_dir)
    published = []
    index = ["# Published results", "",
             "One folder per part of the workflow's tables (config key `parts`); each part is published by its own "
             "run and names it on every file. Claims of all published parts: [claims.md](claims.md).", ""]
    claims = ["# Claims of the papers, tested in the miniature", "",
              "Per part, as published under docs/results/<part>/; each part names its own run.", ""]
    for name, decl in parts.items():
        line = part_provenance(docs / name)
        index += [f"## {name}", ""]
        if line is None:
            index += [f"Not published yet: `snakemake docs/results/{name}`. Tables: {', '.join(decl['tables'])}.", ""]
        else:
            published.append(name)
            index += [line, "", *[f"- [{t}]({name}/tables/{t}.md)" for t in decl["tables"]],
                      *([f"- [claims]({name}/claims.md)"] if decl["claims"] else []), ""]
        if not decl["claims"]:
            continue
        claims += [f"## {name}", ""]
        part_claims = docs / name / "claims.md"
        if line is None or not part_claims.is_file():
            claims += [f"Not published yet ({len(decl['claims'])} claims: {', '.join(decl['claims'])}): "
                       f"`snakemake docs/results/{name}`.", ""]
        else:
            body = part_claims.read_text().split("\n\n", 1)[1]  # below its provenance line
            claims += [line, "", body.replace(f"{CLAIMS_HEADING}\n\n", "", 1).rstrip(), ""]
    for path, text in ((index_path, index), (claims_path, claims)):
        with atomic_path(path) as tmp:
            tmp.write_text("\n".join(text))
    return published
