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
