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


TIMM_MATCH_PREV_GROUP = (99999,)
"""timm's marker for "same group as the one before" (``timm.models._manipulate.MATCH_PREV_GROUP``)."""


def timm_layer_map(names: list[str], stem: str, blocks: list[tuple[str, tuple[int, ...] | None]]) -> dict[str, int]:
    r"""timm's ``group_with_matcher(..., reverse=True)`` for a ``group_matcher`` dict ``{stem, blocks}``, transcribed.

    Each name gets an ordinal: ``(0,)`` for the stem regex, ``(1, *captures, *suffix)`` for a blocks regex, ``(inf,)``
    for no match (neck, head); ordinals are sorted and numbered, an ordinal ending in ``MATCH_PREV_GROUP`` joining the
    group before it (timm/models/_manipulate.py, huggingface/pytorch-image-models).

    >>> timm_layer_map(["cls", "blocks.0.w", "blocks.1.w", "norm.w", "head.w"], r"^cls",
    ...     [(r"^blocks\.(\d+)", None), (r"^norm", TIMM_MATCH_PREV_GROUP)])
    {'cls': 0, 'blocks.0.w': 1, 'blocks.1.w': 2, 'norm.w': 2, 'head.w': 3}
    """
    import re
    from collections import defaultdict

    compiled = [(re.compile(stem), (0,), None)] + [(re.compile(regex), (1,), suffix) for regex, suffix in blocks]

    def ordinal(name: str) -> tuple[float, ...]:
        for pattern, prefix, suffix in compiled:
            match = pattern.match(name)
            if match:
                parts = [prefix, match.groups(), suffix]
                return tuple(float(x) for part in parts if part for x in part)
        return (float("inf"),)

    grouping: dict[tuple[float, ...], list[str]] = defaultdict(list)
    for name in names:
        grouping[ordinal(name)].append(name)
    layer_map = {}
    lid = -1
    for key in sorted(grouping):
        if lid < 0 or key[-1] != TIMM_MATCH_PREV_GROUP[0]:
            lid += 1
        layer_map.update({name: lid for name in grouping[key]})
    return layer_map


def timm_layer_decay_scales(layer_map: dict[str, int], layer_decay: float) -> dict[str, float]:
    """timm's ``param_groups_layer_decay``: each parameter's ``lr_scale``, ``layer_decay ** (layer_max - layer_id)``
    (timm/optim/_param_groups.py, ``min_scale=0``).

    >>> timm_layer_decay_scales({"embed": 0, "block": 1, "head": 2}, 0.5)
    {'embed': 0.25, 'block': 0.5, 'head': 1.0}
    """
    num_layers = max(layer_map.values()) + 1
    layer_max = num_layers - 1
    layer_scales = [max(0.0, layer_decay ** (layer_max - i)) for i in range(num_layers)]
    return {name: layer_scales[layer_map.get(name, layer_max)] for name in layer_map}
