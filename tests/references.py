"""Reference formulas the tests compare against, written out here rather than taken from the code under test."""

from __future__ import annotations

import math


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
