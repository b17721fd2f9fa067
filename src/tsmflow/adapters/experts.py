"""TimeStep experts: interval maths.

The T training timesteps are split into n equal intervals; expert i of a set
is trained on, and active for, the timesteps of interval i.

Convention: diffusers numbers timesteps t = 0..T-1 (0 = least noise); the
paper numbers them 1..T. With t_paper = t + 1 and 1-based intervals, the
paper's Eq. 7 i_j = ceil(t_paper / T * n_j) becomes, 0-based,
i = ceil((t + 1) * n / T) - 1, and interval i holds t in [floor(i T / n), floor((i+1) T / n)).
Flow-matching samplers pass float t = 1000 * sigma in [0, T]: it is floored
first (as the router's E(t) lookup is), and t = T clamps to the last interval.
"""
from __future__ import annotations

import torch


def interval_of(t: torch.Tensor, n: int, T: int) -> torch.Tensor:
    """0-based interval index of each (0-based, diffusers) timestep: ceil((t+1) n / T) - 1, clamped."""
    t = t.floor().long() if t.is_floating_point() else t.long()  # as the router's E(t) row lookup does
    i = ((t + 1) * n + T - 1) // T - 1  # exact integer ceil division: no float rounding at the boundaries
    return i.clamp(0, n - 1)


def interval_bounds(i: int, n: int, T: int) -> tuple[int, int]:
    """[lo, hi) of interval i: exactly the integer t with interval_of(t) == i."""
    if not 0 <= i < n:
        raise ValueError(f"interval {i} out of range for n={n}")
    if n > T:
        raise ValueError(f"n={n} intervals over T={T} timesteps would leave some empty")
    return i * T // n, (i + 1) * T // n
