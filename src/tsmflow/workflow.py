"""Glue for `script:` entry points: send output to the rule's log, bound threads, launch training via accelerate.

With config `accelerate_launch: true` (the Snakefile exports it as $TSMFLOW_ACCELERATE_LAUNCH), a training
rule's script re-runs itself under `accelerate launch` with one process per GPU the rule was given (its `gpu`
resource; the slurm profile's `set-resources` sets it per rule), so the one training loop runs data-parallel.
On a CPU (gpu 0 or 1) that is one process with `--cpu`.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys

# the rules whose scripts run `training.loop.train` on a denoiser: worth several GPUs
TRAINING_RULES = {"pretrain_base", "train_expert", "assemble_router", "train_moe_lora", "train_full", "train_dmp",
                  "deme_finetune_range"}
CHILD = "TSMFLOW_ACCELERATE_CHILD"
# config `accelerate_launch`, passed by the Snakefile through the environment: how a job runs, not what it
# computes, so it stays out of rule params (toggling it reruns nothing) and scripts never read the config
LAUNCH = "TSMFLOW_ACCELERATE_LAUNCH"


def setup(snakemake) -> None:
    """Redirect stdout/stderr to the rule's log and use exactly the rule's threads."""
    if snakemake.log:
        if not os.environ.get(CHILD):
            open(snakemake.log[0], "w").close()
        # append mode: a process launched by accelerate writes after its parent, never over it
        f = open(snakemake.log[0], "a", buffering=1)
        sys.stdout = sys.stderr = f
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    threads = max(1, int(snakemake.threads))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    else:  # a job that never imports torch does not pay its import (seconds); one that does later reads this
        os.environ["OMP_NUM_THREADS"] = str(threads)
    if snakemake.rule in TRAINING_RULES and os.environ.get(LAUNCH) == "1" and not os.environ.get(CHILD):
        import torch
        n = max(1, int(getattr(snakemake.resources, "gpu", 0) or 0))
        sys.exit(relaunch(sys.argv[0], n, use_cpu=not torch.cuda.is_available()))


def relaunch(script: str, num_processes: int, use_cpu: bool) -> int:
    """Run `script` under `accelerate launch` and wait; raises if it fails (the job fails with it)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           *(["--cpu"] if use_cpu else (["--multi_gpu"] if num_processes > 1 else [])), script]
    print("launching:", " ".join(cmd), flush=True)
    sys.stdout.flush()
    subprocess.run(cmd, check=True, env={**os.environ, CHILD: "1"}, stdout=sys.stdout, stderr=sys.stderr)
    return 0
