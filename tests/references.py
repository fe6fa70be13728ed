"""Reference formulas the tests compare against, written out here rather than taken from the code under test."""

from __future__ import annotations

import math

COSINE_TO_RUN_END = {"name": "warmup_cosine", "warmup_steps": 3, "total_steps": None, "min_lr_ratio": 0.1}
"""A schedule whose length is the run's (``total_steps: null``): what a resume with another run length must keep."""
COSINE_WARMUP_RATIO = {"name": "warmup_cosine", "warmup_ratio": 0.25, "min_lr_ratio": 0.1}
"""A schedule whose warmup is a share of the run's length."""


def warmup_cosine(k: int, lr: float, warmup: int, total: int, floor: float = 0.0) -> float:
    """The lr at optimizer step ``k`` of ``warmup_cosine`` with base lr ``lr`` and ``min_lr_ratio`` ``floor``.

    Linear warmup ``lr * k / warmup`` (step 0 runs at 0), then half a cosine from ``lr`` down to ``lr * floor`` at
    step ``total``, where it stays.

    >>> warmup_cosine(1, 0.5, 2, 10)
    0.25
    >>> [warmup_cosine(k, 1.0, 2, 10, floor=0.5) for k in (6, 10, 99)]
    [0.75, 0.5, 0.5]
    """
    if k < warmup:
        return lr * k / warmup
    if k > total:
        return lr * floor
    return lr * floor + (lr - lr * floor) * 0.5 * (1 + math.cos(math.pi * (k - warmup) / (total - warmup)))


def wsd(k: int, lr: float, warmup: int, total: int, decay_ratio: float, shape: str, floor: float = 0.0) -> float:
    """The lr at step ``k`` of warmup-stable-decay as Hägele et al. 2024 write it (``wsd``).

    Linear warmup, the peak ``lr``, then a cooldown over the last ``round(decay_ratio * total)`` steps (after the
    warmup at the earliest), shaped ``linear``, ``cosine`` or ``sqrt`` (1-sqrt), from ``lr`` to ``lr * floor`` at
    ``total``, where it stays.

    >>> [wsd(k, 1.0, 0, 8, 0.5, "sqrt") for k in (3, 4, 5, 8, 9)]
    [1.0, 1.0, 0.5, 0.0, 0.0]
    """
    if k < warmup:
        return lr * k / warmup
    cooldown = min(round(decay_ratio * total), total - warmup)
    start = total - cooldown
    if k >= total:
        return lr * floor
    if k < start:
        return lr
    x = (k - start) / cooldown
    drop = {"linear": x, "cosine": (1 - math.cos(math.pi * x)) / 2, "sqrt": math.sqrt(x)}[shape]
    return lr * floor + (lr - lr * floor) * (1 - drop)


def sgdr(k: int, lr: float, warmup: int, t0: int, mult: int, decay: float = 1.0, floor: float = 0.0) -> float:
    """The lr at step ``k`` of SGDR (``cosine_restarts``): Loshchilov & Hutter's eq. (5), restarts counted one by one.

    ``eta_min + (eta_max - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2`` with ``eta_min = lr * floor``, the i-th
    cycle's peak ``eta_max = lr * max(decay ** i, floor)`` and ``T_i = t0 * mult ** i``; the cycles start after a
    linear warmup of ``warmup`` steps.

    >>> [sgdr(k, 1.0, 0, 2, 2) for k in (0, 1, 2, 4, 6)]
    [1.0, 0.5, 1.0, 0.5, 1.0]
    """
    if k < warmup:
        return lr * k / warmup
    t_cur, t_i, cycle = k - warmup, t0, 0
    while t_cur >= t_i:
        t_cur, t_i, cycle = t_cur - t_i, t_i * mult, cycle + 1
    peak = max(decay**cycle, floor)
    return lr * floor + (lr * peak - lr * floor) * (1 + math.cos(math.pi * t_cur / t_i)) / 2
