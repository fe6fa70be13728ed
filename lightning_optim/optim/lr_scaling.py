"""``optimizer.lr_scaling``: the lr follows the effective batch size (the arithmetic; the fit follows the run).

The configured lr is the lr at ``base_batch_size``. At an effective batch size ``B`` (the train loader's batch size x
world size x gradient accumulation) every group's lr is multiplied by ``B / base_batch_size`` (``linear``, Goyal et
al. 2017, for SGD) or its square root (``sqrt``, Malladi et al. 2022, for adaptive optimizers such as Adam).

Examples:
    >>> scaling = resolve_lr_scaling({"rule": "sqrt", "base_batch_size": 256})
    >>> scaling.factor(1024), resolve_lr_scaling({"rule": "linear", "base_batch_size": 256}).factor(64)
    (2.0, 0.25)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lightning_optim.errors import config_error

__all__ = ["LR_SCALING_KEY", "LR_SCALING_RULES", "LrScaling", "resolve_lr_scaling"]

LR_SCALING_KEY = "lr_scaling"
"""The ``optimizer`` section's key (not a constructor argument)."""

LR_SCALING_RULES = ("linear", "sqrt")


@dataclass(frozen=True)
class LrScaling:
    """How the lr follows the effective batch size.

    Attributes:
        rule: ``linear`` (``B / base_batch_size``) or ``sqrt`` (its square root).
        base_batch_size: the effective batch size at which the configured lr holds.

    Examples:
        >>> LrScaling("sqrt", 256).config
        {'rule': 'sqrt', 'base_batch_size': 256}
    """

    rule: str
    base_batch_size: int

    @property
    def config(self) -> dict[str, Any]:
        """The section as plain values."""
        return {"rule": self.rule, "base_batch_size": self.base_batch_size}

    def factor(self, batch_size: int) -> float:
        """The lr factor at the effective batch size ``batch_size``.

        Examples:
            >>> LrScaling("linear", 256).factor(512)
            2.0
        """
        ratio = batch_size / self.base_batch_size
        return math.sqrt(ratio) if self.rule == "sqrt" else ratio

    def describe(self, batch_size: int, parts: str = "") -> str:
        """One line saying the factor and how it came about, e.g. for the fit's log.

        Examples:
            >>> LrScaling("sqrt", 256).describe(64, "32 per device x 1 device x accumulation 2")
            'lr_scaling: effective batch size 64 (32 per device x 1 device x accumulation 2), sqrt(64 / 256): lr x 0.5'
        """
        ratio = f"{batch_size} / {self.base_batch_size}"
        formula = f"sqrt({ratio})" if self.rule == "sqrt" else ratio
        detail = f" ({parts})" if parts else ""
        return f"lr_scaling: effective batch size {batch_size}{detail}, {formula}: lr x {self.factor(batch_size):.6g}"


def resolve_lr_scaling(section: Any, where: str = "optimizer") -> LrScaling:
    """Check ``optimizer.lr_scaling``: ``{rule: linear | sqrt, base_batch_size: 256}``.

    Examples:
        >>> resolve_lr_scaling({"rule": "squareroot", "base_batch_size": 256})
        Traceback (most recent call last):
        ...
        lightning_optim.errors.OptimConfigError: optim_config.optimizer.lr_scaling.rule = 'squareroot' is not valid. \
Expected linear (lr x B / base_batch_size, for SGD) or sqrt (its square root, for adaptive optimizers).
    """
    key = f"{where}.{LR_SCALING_KEY}"
    if not isinstance(section, Mapping):
        raise config_error(key, section, "a mapping {rule: linear | sqrt, base_batch_size: 256}")
    for name in section:
        if name not in ("rule", "base_batch_size"):
            raise config_error(
                f"{key}.{name}", section[name], "only rule and base_batch_size", ["rule", "base_batch_size"], True
            )
    rule = section.get("rule")
    if rule not in LR_SCALING_RULES:
        raise config_error(
            f"{key}.rule",
            rule,
            "linear (lr x B / base_batch_size, for SGD) or sqrt (its square root, for adaptive optimizers)",
            LR_SCALING_RULES,
        )
    base = section.get("base_batch_size")
    if isinstance(base, float) and base.is_integer():
        base = int(base)
    if isinstance(base, bool) or not isinstance(base, int) or base < 1:
        raise config_error(
            f"{key}.base_batch_size", base, "an integer >= 1: the effective batch size the configured lr was tuned at"
        )
    return LrScaling(rule, base)
