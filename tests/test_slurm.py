"""The smoke DAG under a real Slurm: every job went through sbatch and slurmctld saw it finish.

CI (.ci/run) starts a single-node cluster with .ci/slurm-up and sets TSMFLOW_TEST_SLURM=1, so the
session's `smoke` fixture runs with tests/slurm_profile. Without it these tests are skipped.
"""
import re
from pathlib import Path

import pytest

from conftest import SLURM

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("smoke"),
              pytest.mark.skipif(not SLURM, reason="TSMFLOW_TEST_SLURM=1 not set (CI sets it after .ci/slurm-up)")]

SLURMCTLD_LOG = Path("/var/log/slurm/slurmctld.log")


def test_every_job_went_through_sbatch(smoke):
    log = smoke.with_name(smoke.name + ".log").read_text()
    assert "tests/slurm_profile" in log.splitlines()[0]
    total = int(re.search(r"^total\s+(\d+)", log, re.M).group(1))
    local = len(re.findall(r"^localrule ", log, re.M))  # the `all` target rule runs nothing
    ids = re.findall(r"has been submitted with SLURM jobid (\d+)", log)
    assert len(ids) == len(set(ids)) == total - local > 50, (total, local, len(ids))
    ctld = SLURMCTLD_LOG.read_text(errors="replace")
    unfinished = [i for i in ids if not re.search(rf"_job_complete: JobId={i} WEXITSTATUS 0", ctld)]
    assert not unfinished, f"slurmctld has no clean completion for jobs {unfinished[:10]}"

