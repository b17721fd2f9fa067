"""Distilled students (config `students`): the timesteps a student samples at, and its sampler's settings.

Light on purpose (no torch): the workflow's rules read it while building the DAG.
"""
from __future__ import annotations

# students that stay experts + routers when they sample (TSM 1- and 2-stage), not one merged denoiser
ROUTED = ("tsm", "tsm2")
REFERENCE_T = 1000  # the papers give student timesteps on a 1000-step schedule (DMD2: 999, 749, 499, 249)


def scaled_timesteps(timesteps: list[int], num_train_timesteps: int, reference: int = REFERENCE_T) -> list[int]:
    """A student's timesteps as the papers give them, on a model trained with `num_train_timesteps` steps."""
    out = [min(num_train_timesteps - 1, round(t * num_train_timesteps / reference)) for t in timesteps]
    if not out or any(b >= a for a, b in zip(out, out[1:])) or out[-1] < 0 or max(timesteps) >= reference:
        raise ValueError(f"student timesteps {timesteps} must be distinct and decreasing, within [0, {reference})")
    return out


def student_sampling(timesteps: list[int], num_train_timesteps: int) -> dict:
    """What the renoise sampler reads: one model call per student timestep, no guidance."""
    return {"solver": "renoise", "timesteps": scaled_timesteps(timesteps, num_train_timesteps)}
