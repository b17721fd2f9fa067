import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def snakemake_bin() -> str:
    return str(BIN / "snakemake")


# CI (.ci/run) brings up a single-node Slurm and sets this: the smoke DAG then runs through sbatch
SLURM = os.environ.get("TSMFLOW_TEST_SLURM") == "1"


def run_smoke(snakemake_bin, root, workdir, *args, timeout=900, configfile=None, slurm=False):
    """Snakemake on the smoke config in `workdir`; returns the CompletedProcess.

    On timeout, kills only what it started: its own process group and, under Slurm, the jobs it submitted.
    """
    cmd = [snakemake_bin, "-s", str(root / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(configfile or root / "config/smoke.yaml"), "--cores", "2", *args]
    if slurm:
        cmd += ["--profile", str(root / "tests/slurm_profile")]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, start_new_session=True)
        timed_out = False
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if timed_out:
        ids = re.findall(r"SLURM jobid (\d+)", stdout + stderr)
        if ids:
            subprocess.run(["scancel", *ids], capture_output=True)
        pytest.fail(f"snakemake timed out after {timeout} s: {' '.join(cmd)}\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(cmd, rc, stdout, stderr)


@pytest.fixture(scope="session")
def smoke(tmp_path_factory, snakemake_bin, root):
    """The whole smoke DAG, run once per session (tests using it share the xdist group "smoke").

    Its Snakemake output is kept beside it, in `<workdir>.log`.
    """
    workdir = tmp_path_factory.mktemp("smoke")
    t0 = time.perf_counter()
    r = run_smoke(snakemake_bin, root, workdir, timeout=3600 if SLURM else 2400, slurm=SLURM)
    workdir.with_name(workdir.name + ".log").write_text(
        f"# {' '.join(r.args)}\n# wall {time.perf_counter() - t0:.0f} s\n{r.stdout}{r.stderr}")
    assert r.returncode == 0, r.stderr[-4000:]
    return workdir


def _mini_components(tmp: Path, arch: str, objective: str = "eps"):
    """Tiny random miniature components saved to disk, as the workflow's rules would leave them."""
    from tsmflow.data.grammar import vocabulary
    from tsmflow.models.mini import build_denoiser, build_scheduler, build_vae
    from tsmflow.models.text import build_tokenizer, clip_config, export_text_encoder
    from transformers import CLIPModel

    torch.manual_seed(0)
    tok = build_tokenizer(vocabulary(), 24)
    clip = CLIPModel(clip_config(tok, {"hidden_size": 16, "layers": 1, "heads": 2, "projection_dim": 16,
                                       "patch_size": 8}, 16))
    text = export_text_encoder(clip)
    text.save_pretrained(tmp / "text")
    tok.save_pretrained(tmp / "text")
    vae = build_vae({"channels": [8, 8], "layers_per_block": 1, "latent_channels": 4, "norm_groups": 4}, 16)
    vae.save_pretrained(tmp / "vae")
    cfgs = {"unet": {"channels": [16, 32], "layers_per_block": 1, "head_dim": 8, "norm_groups": 8},
            "dit": {"patch_size": 1, "layers": 1, "heads": 2, "head_dim": 8},
            "mmdit": {"patch_size": 1, "layers": 1, "heads": 2, "head_dim": 8},
            "cdit": {"patch_size": 1, "layers": 1, "heads": 2, "head_dim": 8}}
    den = build_denoiser(arch, cfgs[arch], 4, 8, 16, 16)
    den.save_pretrained(tmp / "den")
    build_scheduler(objective, 1000).save_pretrained(tmp / "den" / "scheduler")
    return tmp / "den", tmp / "vae", tmp / "text"


@pytest.fixture
def mini_backbone(tmp_path):
    """Factory: a loaded tiny miniature Backbone of the given arch/objective."""
    from tsmflow.models.backbone import load_mini_backbone

    def make(arch="unet", objective="eps"):
        d, v, t = _mini_components(tmp_path / f"{arch}_{objective}", arch, objective)
        return load_mini_backbone(arch, d, v, t)
    return make


def save_inception_stand_in(path: Path, seed: int = 0) -> Path:
    """A TorchScript stand-in for clean-fid's Inception-V3 file (same interface: `.layers` maps 299x299 images
    in [-1, 1] to 2048 features), so the real FID loading path runs offline."""
    import torch

    class StandIn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(seed)
            self.layers = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(),
                                              torch.nn.Linear(48, 2048))

        def forward(self, x, return_features: bool = False):
            return self.layers(x)

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(StandIn()).save(str(path))
    return path
