"""The run methods (config `runs.<name>.method`) in one registry, without torch: the rules plan from it.

What a run of each method draws on (expert sets, a router it trains, a declared block of `finetunes`,
`deme_sets` or `students`) and which of its trained parameters a table counts. The rules' input functions,
`runs.attach_run_adapters` and `reporting.tables.trainable_summary` read these fields instead of each
repeating its own `if method == ...` chain.
"""
from __future__ import annotations

from dataclasses import dataclass

from .config import ConfigError


@dataclass(frozen=True)
class Method:
    doc: str
    experts: bool = False  # loads expert sets (`experts`, or `core` + `context`)
    router: str | None = None  # the run directory its own router job writes: router (tsm2), moe (moe_lora)
    ref: tuple[str, str] | None = None  # (run key, config block) naming the job it samples from
    # what a table counts as its trainable parameters (TSM Table 9): every trained dir ("all"), the routers
    # only (their experts are frozen), the student's adapter (not the fake score's), or nothing
    counts: str = "all"


METHODS = {
    "base": Method("the pre-trained denoiser", counts="none"),
    "lora": Method("vanilla LoRA: one expert set with n=1", experts=True),
    "tsm1": Method("TSM 1-stage: the expert of each interval (merged per interval unless fast_path: false)",
                   experts=True),
    "tsm2": Method("TSM 2-stage: core (null: symmetric) + context expert sets and a router", experts=True,
                   router="router", counts="routers"),
    "moe_lora": Method("MoE-LoRA: experts and a feature router trained jointly", router="moe"),
    "finetune": Method("a further-training job (full, prompt tuning, DMP), at its end or snapshot `step`",
                       ref=("finetune", "finetunes")),
    "deme_ensemble": Method("DeMe before merging: the range models, by timestep", ref=("deme", "deme_sets")),
    "deme_merged": Method("DeMe after merging: the model its merge search found", ref=("deme", "deme_sets")),
    "distill": Method("a distilled student: merged, or TSM's routed experts over the base",
                      ref=("student", "students"), counts="student"),
}


def method_of(spec: dict, where: str = "run") -> Method:
    name = spec.get("method")
    if name not in METHODS:
        raise ConfigError(f"config key {where}.method: {name!r} is not one of {sorted(METHODS)}")
    return METHODS[name]
