"""Resumable training: checkpoints restore everything, and a job killed with SIGKILL resumes under Snakemake."""
import os
import shutil
import signal
import time

import psutil
import pytest
import torch
import torch.nn as nn
import yaml
from safetensors.torch import load_file

from conftest import run_smoke
from tsmflow.training.loop import NonFiniteLossError, TrainConfig, infinite_batches, resumable_output, train


class Regression(nn.Module):
    """A tiny objective that uses the global RNG (noise, dropout), as the diffusion objectives do."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.2), nn.Linear(16, 1))

    def forward(self, batch):
        x = batch["x"] + 0.1 * torch.randn_like(batch["x"])
        return ((self.net(x).squeeze(-1) - batch["y"]) ** 2).mean()


class Crash(RuntimeError):
    pass


def _batches(crash_after=None):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=g)
    it = infinite_batches({"x": x, "y": x.sum(1)}, 8, seed=3)
    for k, b in enumerate(it):
        if crash_after is not None and k == crash_after:
            raise Crash(f"simulated crash after {k} batches")
        yield b


CFG = TrainConfig(steps=12, batch_size=8, lr=1e-2, warmup_steps=3, checkpoint_every=4, log_every=2, seed=5)


def test_resume_after_crash_equals_uninterrupted(tmp_path):
    ref = Regression()
    train(ref, ref.parameters(), _batches(), CFG, tmp_path / "ref.csv")
    ckpt = tmp_path / "ckpt.safetensors"
    crashed = Regression()
    with pytest.raises(Crash):
        train(crashed, crashed.parameters(), _batches(crash_after=10), CFG, tmp_path / "a.csv", checkpoint=ckpt)
    assert ckpt.is_file() and not (tmp_path / "a.csv").exists()  # step 8 saved; no curve for a failed run
    resumed = Regression()  # a fresh process would rebuild the model from scratch
    train(resumed, resumed.parameters(), _batches(), CFG, tmp_path / "b.csv", checkpoint=ckpt)
    for a, b in zip(ref.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    assert (tmp_path / "ref.csv").read_text().splitlines()[1:] != []
    steps = [ln.split(",")[0] for ln in (tmp_path / "b.csv").read_text().splitlines()[1:]]
    assert steps == ["2", "4", "6", "8", "10", "12"]  # the curve carries over the steps before the crash


def test_checkpoint_of_another_config_is_ignored(tmp_path):
    ckpt = tmp_path / "ckpt.safetensors"
    m = Regression()
    train(m, m.parameters(), _batches(), CFG, tmp_path / "a.csv", checkpoint=ckpt)
    ref = Regression()
    other = TrainConfig(**{**CFG.__dict__, "lr": 5e-3})
    train(ref, ref.parameters(), _batches(), other, tmp_path / "ref.csv")
    m2 = Regression()
    train(m2, m2.parameters(), _batches(), other, tmp_path / "b.csv", checkpoint=ckpt)
    for a, b in zip(ref.parameters(), m2.parameters()):
        assert torch.equal(a, b)  # trained from the start, not from the lr=1e-2 checkpoint


def test_checkpoint_of_other_data_is_ignored(tmp_path):
    """Same config, but the inputs changed upstream (another dataset): start over."""
    def other_batches():
        x = torch.randn(64, 4, generator=torch.Generator().manual_seed(99))
        return infinite_batches({"x": x, "y": x.sum(1)}, 8, seed=3)

    ckpt = tmp_path / "ckpt.safetensors"
    m = Regression()
    train(m, m.parameters(), _batches(), CFG, tmp_path / "a.csv", checkpoint=ckpt)
    ref = Regression()
    train(ref, ref.parameters(), other_batches(), CFG, tmp_path / "ref.csv")
    m2 = Regression()
    train(m2, m2.parameters(), other_batches(), CFG, tmp_path / "b.csv", checkpoint=ckpt)
    for a, b in zip(ref.parameters(), m2.parameters()):
        assert torch.equal(a, b)


def test_corrupt_checkpoint_trains_from_start(tmp_path):
    ckpt = tmp_path / "ckpt.safetensors"
    ckpt.write_bytes(b"not a safetensors file")
    m = Regression()
    stats = train(m, m.parameters(), _batches(), CFG, tmp_path / "a.csv", checkpoint=ckpt)
    assert stats["steps"] == 12 and set(load_file(str(ckpt))) >= {"param.0", "rng.torch"}


def test_nan_loss_names_the_step_and_leaves_no_output(tmp_path):
    class Exploding(Regression):
        def forward(self, batch):
            loss = super().forward(batch)
            self.calls = getattr(self, "calls", 0) + 1
            return loss * float("nan") if self.calls == 3 else loss

    out = tmp_path / "out"
    m = Exploding()
    with pytest.raises(NonFiniteLossError, match="at optimizer step 3"):
        with resumable_output(out) as (tmp, ckpt):
            train(m, m.parameters(), _batches(), CFG, tmp / "loss.csv", checkpoint=ckpt / "train.safetensors")
            (tmp / "weights.safetensors").write_bytes(b"x")
    assert not out.exists() and not list(tmp_path.glob(".out.*.tmp"))


def test_resumable_output_removes_checkpoints_once_done(tmp_path):
    out = tmp_path / "out"
    with resumable_output(out) as (tmp, ckpt):
        m = Regression()
        train(m, m.parameters(), _batches(), CFG, tmp / "loss.csv", checkpoint=ckpt / "train.safetensors")
        assert (ckpt / "train.safetensors").is_file()
    assert (out / "loss.csv").is_file() and not ckpt.exists()


@pytest.mark.slow
@pytest.mark.xdist_group("smoke")
def test_kill_9_then_snakemake_rerun_resumes(smoke, snakemake_bin, root, tmp_path):
    """SIGKILL a real pretrain_base job mid-run; the rerun resumes and ends with an uninterrupted run's weights."""
    work = tmp_path / "work"
    for part in ["data", "models/vae", "models/text_encoder"]:  # the job's inputs, mtimes kept
        shutil.copytree(smoke / "results" / part, work / "results" / part)
    cfg = yaml.safe_load((root / "config/smoke.yaml").read_text())
    cfg["backbones"]["unet"]["train"].update(steps=150, checkpoint_every=10)
    overlay = tmp_path / "resume.yaml"
    overlay.write_text(yaml.safe_dump(cfg))
    target = "results/models/base/unet"
    weights = work / target / "diffusion_pytorch_model.safetensors"
    ckpt = work / "results/models/base/.unet.ckpt/train.safetensors"
    args = (target, "--allowed-rules", "pretrain_base")

    r = run_smoke(snakemake_bin, root, work, *args, configfile=overlay)
    assert r.returncode == 0, r.stderr[-3000:]
    reference = load_file(str(weights))
    assert not ckpt.parent.exists()
    shutil.rmtree(work / target)

    cmd = [snakemake_bin, "-s", str(root / "Snakefile"), "--directory", str(work), "--configfile", str(overlay),
           "--cores", "2", *args]
    proc = psutil.Popen(cmd, stdout=open(tmp_path / "killed.log", "w"), stderr=open(tmp_path / "killed.err", "w"))
    try:
        deadline = time.time() + 300
        while not ckpt.is_file():
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "killed.err").read_text()[-3000:]
            time.sleep(0.02)
        jobs = [c for c in proc.children(recursive=True) if "python" in c.name()]
        assert jobs, "no training process under snakemake"
        for c in jobs:
            os.kill(c.pid, signal.SIGKILL)
        assert proc.wait(timeout=120) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not weights.exists() and ckpt.is_file()

    r = run_smoke(snakemake_bin, root, work, *args, configfile=overlay)
    assert r.returncode == 0, r.stderr[-3000:]
    log = (work / "results/logs/pretrain_base/unet.log").read_text()
    resumed_at = int(log.split("at optimizer step ")[1].split("/")[0])
    assert 10 <= resumed_at < 150, log[-2000:]
    after = load_file(str(weights))
    assert after.keys() == reference.keys()
    for k in reference:
        assert torch.equal(after[k], reference[k]), k
    assert not ckpt.parent.exists()
