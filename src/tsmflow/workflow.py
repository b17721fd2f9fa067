"""Glue for `script:` entry points: send output to the rule's log, bound threads."""
from __future__ import annotations

import logging
import sys


def setup(snakemake) -> None:
    """Redirect stdout/stderr to the rule's log and use exactly the rule's threads."""
    if snakemake.log:
        f = open(snakemake.log[0], "w", buffering=1)
        sys.stdout = sys.stderr = f
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    import torch
    torch.set_num_threads(max(1, int(snakemake.threads)))
