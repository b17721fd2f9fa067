"""Names of expert sets and which sets a run uses (no heavy imports: the Snakefile uses this).

An expert set is named by what it is, so a run can refer to it and Snakemake
can parse it back from a path: ``<backbone>-<task>-n<n>-r<rank>-s<steps>[-seed<k>]``,
e.g. ``unet-gors-n8-r4-s200``: n intervals, LoRA rank r, s optimizer steps per
expert. n=1 is vanilla LoRA.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

EXPERT_SET_RE = r"(?P<backbone>[a-z0-9]+)-(?P<task>[a-z0-9]+)-n(?P<n>\d+)-r(?P<rank>\d+)-s(?P<steps>\d+)(?:-seed(?P<seed>\d+))?"


@dataclass(frozen=True)
class ExpertSet:
    backbone: str
    task: str
    n: int
    rank: int
    steps: int
    seed: int = 0

    @property
    def name(self) -> str:
        s = f"{self.backbone}-{self.task}-n{self.n}-r{self.rank}-s{self.steps}"
        return s + (f"-seed{self.seed}" if self.seed else "")

    def adapter_name(self, i: int) -> str:
        # peft adapter names become module keys: no dots or dashes
        return f"n{self.n}r{self.rank}s{self.steps}seed{self.seed}_i{i}"

    @classmethod
    def parse(cls, name: str) -> "ExpertSet":
        m = re.fullmatch(EXPERT_SET_RE, name)
        if not m:
            raise ValueError(f"{name!r} is not an expert set name like 'unet-gors-n8-r4-s200[-seed1]'")
        d = m.groupdict()
        es = cls(d["backbone"], d["task"], int(d["n"]), int(d["rank"]), int(d["steps"]), int(d["seed"] or 0))
        if es.n < 1 or es.rank < 1 or es.steps < 1:
            raise ValueError(f"{name!r}: n, rank and steps must be positive")
        return es


def run_expert_sets(spec: dict) -> list[str]:
    """Names of the expert sets a run uses, core first."""
    m = spec["method"]
    if m in ("lora", "tsm1"):
        return [spec["experts"]]
    if m == "tsm2":
        return ([spec["core"]] if spec.get("core") else []) + list(spec["context"])
    return []
