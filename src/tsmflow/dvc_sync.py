"""Keep a workflow's results under DVC so that a pulled copy is up to date for Snakemake.

The pitfall: Snakemake decides what to rerun from file modification times and
its own records in `.snakemake/metadata` (code, params, inputs of each output).
DVC restores file contents by hash, but neither the times (a pulled file is
as new as the pull, in whatever order DVC wrote it) nor Snakemake's records
(they are not in git). A fresh clone would retrain everything.

Snakemake also counts a script newer than its outputs as changed code, and a
git checkout makes every script as new as the checkout.

The fix: before `dvc add`, snapshot all of it into `results/.provenance/`, which
DVC tracks with the rest of `results/`: a copy of `.snakemake/metadata`, the
modification time of every file and folder under `results/`, and the time and
hash of every git-tracked source file. After `dvc pull`, `restore` puts the
records back and sets every time to its recorded value (a source file only if
its content is unchanged), so the clone is in exactly the state that was
pushed. Nothing is marked up to date that was not: a job that would have rerun
at push time still reruns, an edited script still triggers its jobs, and `push`
refuses to push a workflow that has jobs left.

    python -m tsmflow.dvc_sync push  [--workdir W] [-- <snakemake args>]
    python -m tsmflow.dvc_sync pull  [--workdir W]
    python -m tsmflow.dvc_sync track [--workdir W]   # snapshot + dvc add, no push
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .data.io import atomic_path

RESULTS = "results"
PROVENANCE = ".provenance"  # inside results/, so one .dvc file covers it
METADATA = ".snakemake/metadata"


class DvcSyncError(RuntimeError):
    pass


def _dvc(repo: Path, *args: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    r = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise DvcSyncError(f"dvc {' '.join(args)} failed in {repo}:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return r.stdout


def dvc_root(workdir: Path) -> Path:
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        return Path(Repo.find_root(str(workdir)))
    except NotDvcRepoError as e:
        raise DvcSyncError(f"{workdir} is not inside a DVC repository (run `dvc init` at the repository root)") from e


def snapshot(workdir: str | os.PathLike) -> Path:
    """Copy Snakemake's records and every modification time under results/ into results/.provenance/."""
    workdir = Path(workdir).resolve()
    results, prov = workdir / RESULTS, workdir / RESULTS / PROVENANCE
    if not results.is_dir():
        raise DvcSyncError(f"{results}: no results to track")
    if prov.exists():
        shutil.rmtree(prov)
    prov.mkdir()
    if (workdir / METADATA).is_dir():
        shutil.copytree(workdir / METADATA, prov / "snakemake-metadata", copy_function=shutil.copy2)
    times = {}
    for path in [results, *results.rglob("*")]:
        rel = path.relative_to(results)
        if rel.parts[:1] != (PROVENANCE,) and not path.is_symlink():
            times[str(rel)] = path.stat().st_mtime_ns
    with atomic_path(prov / "mtimes.json") as tmp:
        tmp.write_text(json.dumps(times, sort_keys=True))
    with atomic_path(prov / "sources.json") as tmp:
        tmp.write_text(json.dumps(_sources(workdir), sort_keys=True))
    return prov


def _git_files(workdir: Path) -> tuple[Path, list[str]] | None:
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=workdir, capture_output=True, text=True)
    if top.returncode != 0:
        return None
    repo = Path(top.stdout.strip())
    files = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, text=True, check=True)
    return repo, [f for f in files.stdout.split("\0") if f and (repo / f).is_file()]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sources(workdir: Path) -> dict:
    """Time and hash of each git-tracked file (Snakefile, rules, scripts), relative to the git root."""
    found = _git_files(workdir)
    if found is None:
        return {}
    repo, files = found
    return {f: [(repo / f).stat().st_mtime_ns, _sha256(repo / f)] for f in files}


def restore(workdir: str | os.PathLike) -> int:
    """Undo what a checkout does to times and records; returns the number of paths whose time was set."""
    workdir = Path(workdir).resolve()
    results, prov = workdir / RESULTS, workdir / RESULTS / PROVENANCE
    if not (prov / "mtimes.json").is_file():
        raise DvcSyncError(f"{prov / 'mtimes.json'}: missing; were these results pushed with `tsmflow.dvc_sync push`?")
    if (prov / "snakemake-metadata").is_dir():
        if (workdir / METADATA).exists():
            shutil.rmtree(workdir / METADATA)
        shutil.copytree(prov / "snakemake-metadata", workdir / METADATA)
    times = json.loads((prov / "mtimes.json").read_text())
    missing = [rel for rel in times if not (results / rel).exists()]
    if missing:
        raise DvcSyncError(f"{len(missing)} recorded paths are missing after checkout, e.g. {missing[:3]}")
    # files first, then folders deepest first: setting a file's time leaves its folder's alone
    for rel in sorted(times, key=lambda r: ((results / r).is_dir(), -len(Path(r).parts))):
        os.utime(results / rel, ns=(times[rel], times[rel]))
    sources = json.loads((prov / "sources.json").read_text()) if (prov / "sources.json").is_file() else {}
    found = _git_files(workdir)
    if sources and found:
        repo, _ = found
        for rel, (mtime, digest) in sources.items():
            if (repo / rel).is_file() and _sha256(repo / rel) == digest:  # an edited file keeps its new time
                os.utime(repo / rel, ns=(mtime, mtime))
    return len(times)


def nothing_to_do(workdir: Path, snakemake_args: list[str]) -> tuple[bool, str]:
    r = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--directory", str(workdir), *snakemake_args],
                       cwd=workdir, capture_output=True, text=True)
    out = r.stdout + r.stderr
    return r.returncode == 0 and "Nothing to be done" in out, out


def track(workdir: str | os.PathLike) -> Path:
    """Snapshot, then `dvc add results` (DVC caches hashes, so unchanged files are not re-read)."""
    workdir = Path(workdir).resolve()
    repo = dvc_root(workdir)
    snapshot(workdir)
    _dvc(repo, "add", str((workdir / RESULTS).relative_to(repo)))
    return workdir / f"{RESULTS}.dvc"


def push(workdir: str | os.PathLike, snakemake_args: list[str] | None = None, remote: str | None = None) -> Path:
    workdir = Path(workdir).resolve()
    done, out = nothing_to_do(workdir, snakemake_args or [])
    if not done:
        raise DvcSyncError(f"{workdir}: the workflow has jobs left to run; finish it before pushing "
                           f"(snakemake -n says):\n{out[-2000:]}")
    dvc_file = track(workdir)
    _dvc(dvc_root(workdir), "push", *(["-r", remote] if remote else []))
    return dvc_file


def pull(workdir: str | os.PathLike, remote: str | None = None) -> int:
    workdir = Path(workdir).resolve()
    repo = dvc_root(workdir)
    _dvc(repo, "pull", *(["-r", remote] if remote else []), str((workdir / RESULTS).relative_to(repo)))
    return restore(workdir)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tsmflow.dvc_sync", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["push", "pull", "track", "snapshot", "restore"])
    p.add_argument("--workdir", default=".", help="where results/ and .snakemake/ are (Snakemake's --directory)")
    p.add_argument("--remote", default=None, help="DVC remote name (default: the repository's default remote)")
    p.add_argument("snakemake_args", nargs="*", help="after --: the args of your run (e.g. --configfile X)")
    a = p.parse_args(argv)
    try:
        if a.command == "push":
            print(f"pushed; commit {push(a.workdir, a.snakemake_args, a.remote)} with git")
        elif a.command == "pull":
            print(f"pulled; restored the times of {pull(a.workdir, a.remote)} paths")
        elif a.command == "track":
            print(f"tracked; commit {track(a.workdir)} with git")
        elif a.command == "snapshot":
            print(snapshot(a.workdir))
        else:
            print(f"restored the times of {restore(a.workdir)} paths")
    except DvcSyncError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
