"""DVC round trip: push a finished smoke workflow, pull it into a fresh clone, and Snakemake has nothing to do."""
import os
import shutil
import subprocess
import sys

import pytest

from conftest import run_smoke
from tsmflow import dvc_sync

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("smoke")]

ENV = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "tsmflow tests", "GIT_AUTHOR_EMAIL": "tests@localhost",
       "GIT_COMMITTER_NAME": "tsmflow tests", "GIT_COMMITTER_EMAIL": "tests@localhost"}


def sh(*cmd, cwd):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, f"{cmd}: {r.stdout[-2000:]}{r.stderr[-2000:]}"
    return r.stdout


def dvc(*args, cwd):
    return sh(sys.executable, "-m", "dvc", *args, cwd=cwd)


def snakemake_n(snakemake_bin, proj):
    """Dry run of the smoke config with the project's own Snakefile, in the project itself."""
    r = run_smoke(snakemake_bin, proj, proj, "-n", configfile=proj / "config/smoke.yaml")
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout + r.stderr


@pytest.fixture(scope="module")
def pushed(smoke, snakemake_bin, root, tmp_path_factory):
    """The project (its git files, as committed or not) with the smoke results in it, pushed to a local remote."""
    base = tmp_path_factory.mktemp("dvc")
    proj, remote = base / "proj", base / "remote"
    files = sh("git", "ls-files", "--cached", "--others", "--exclude-standard", cwd=root).split()
    for f in files:
        if (root / f).is_file():
            (proj / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / f, proj / f)
    # the finished smoke run, exactly as Snakemake left it (times and records included)
    shutil.copytree(smoke / "results", proj / "results", symlinks=True)
    shutil.copytree(smoke / ".snakemake/metadata", proj / ".snakemake/metadata")
    sh("git", "init", "-q", cwd=proj)
    sh("git", "add", "-A", cwd=proj)
    sh("git", "commit", "-qm", "project", cwd=proj)
    assert "Nothing to be done" in snakemake_n(snakemake_bin, proj)
    dvc("remote", "modify", "--local", "local", "url", str(remote), cwd=proj)  # the documented one-line switch
    dvc_file = dvc_sync.push(proj, ["-s", str(proj / "Snakefile"), "--configfile", "config/smoke.yaml"])
    sh("git", "add", str(dvc_file), ".gitignore", cwd=proj)
    sh("git", "commit", "-qm", "results under DVC", cwd=proj)
    return proj, remote


def test_status_clean_after_push(pushed):
    proj, remote = pushed
    assert "up to date" in dvc("status", cwd=proj).lower()
    assert "in sync" in dvc("status", "-c", cwd=proj).lower()  # and the remote has every object
    assert any(remote.rglob("*")) and (proj / "results.dvc").is_file()


def test_fresh_clone_pull_has_nothing_to_do(pushed, snakemake_bin, tmp_path):
    proj, remote = pushed
    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(proj), str(clone), cwd=tmp_path)
    assert not (clone / "results").exists()
    dvc("remote", "modify", "--local", "local", "url", str(remote), cwd=clone)
    n = dvc_sync.pull(clone)
    assert n > 100
    out = snakemake_n(snakemake_bin, clone)
    assert "Nothing to be done" in out, out[-3000:]
    assert "up to date" in dvc("status", cwd=clone).lower()
    a = (proj / "results/runs/base_unet/metrics.json").read_bytes()
    assert (clone / "results/runs/base_unet/metrics.json").read_bytes() == a
    # restoring times must not hide a real change: an edited script reruns its jobs
    script = clone / "scripts/render_dataset.py"
    script.write_text(script.read_text() + "# edited\n")
    out = snakemake_n(snakemake_bin, clone)
    assert "Code has changed since last execution" in out and "render_dataset" in out


def test_plain_dvc_pull_would_rerun(pushed, snakemake_bin, tmp_path):
    """The pitfall is real: without restoring times and records, Snakemake wants to rerun jobs."""
    proj, remote = pushed
    clone = tmp_path / "plain"
    sh("git", "clone", "-q", str(proj), str(clone), cwd=tmp_path)
    dvc("remote", "modify", "--local", "local", "url", str(remote), cwd=clone)
    dvc("pull", "-q", cwd=clone)
    out = snakemake_n(snakemake_bin, clone)
    assert "Nothing to be done" not in out and "Job stats" in out


def test_push_refuses_an_unfinished_workflow(pushed, tmp_path):
    proj, _ = pushed
    broken = tmp_path / "broken"
    shutil.copytree(proj, broken, symlinks=True)
    shutil.rmtree(broken / "results/tables")
    with pytest.raises(dvc_sync.DvcSyncError, match="jobs left to run"):
        dvc_sync.push(broken, ["-s", str(broken / "Snakefile"), "--configfile", "config/smoke.yaml"])


def test_restore_names_missing_paths(tmp_path):
    (tmp_path / "results/a").mkdir(parents=True)
    (tmp_path / "results/a/x.txt").write_text("x")
    dvc_sync.snapshot(tmp_path)
    (tmp_path / "results/a/x.txt").unlink()
    with pytest.raises(dvc_sync.DvcSyncError, match="missing after checkout"):
        dvc_sync.restore(tmp_path)
    with pytest.raises(dvc_sync.DvcSyncError, match="not inside a DVC repository"):
        dvc_sync.dvc_root(tmp_path)
