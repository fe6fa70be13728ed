"""Check a whole ``optim_config`` before any model or trainer is touched.

Example:
    >>> validate_optim_config({"optimizer": {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.98]}})["optimizer"]
    {'name': 'adamw', 'lr': 0.001, 'betas': [0.9, 0.98]}
    >>> validate_optim_config({"optimizer": {"name": "adam", "lr": 1e-3, "weight_decy": 0.1}})
    Traceback (most recent call last):
    ...
    lightning_optim.errors.OptimConfigError: optim_config.optimizer.weight_decy = 0.1 is not valid. Did you mean \
'weight_decay'? Expected an argument of Adam: lr, betas, eps, weight_decay, amsgrad, foreach, maximize, capturable, \
differentiable, fused, decoupled_weight_decay.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from lightning_optim.config import OptimConfig, to_plain_config
from lightning_optim.errors import config_error
from lightning_optim.optimizer_specs import OptimizerSpec, resolve_optimizer
from lightning_optim.scheduler_specs import SchedulerSpec, resolve_scheduler

__all__ = ["OptimSpec", "resolve_optim_config", "validate_optim_config", "warn_on_zero_lr"]


@dataclass(frozen=True)
class OptimSpec:
    """A checked ``optim_config``: the plain config and the resolved sections the builders take as they are.

    Attributes:
        config: the config as plain containers, values as the constructors take them (what ``hparams`` and
            checkpoints store).
        optimizer: the optimizer with its parameter-group rules.
        scheduler: the scheduler, or None for a constant lr.

    Example:
        >>> spec = resolve_optim_config({"optimizer": {"name": "adamw"}, "scheduler": {"name": "step", "step_size": 2}})
        >>> spec.optimizer.info.cls.__name__, type(spec.scheduler.info).__name__
        ('AdamW', 'ClosedForm')
    """

    config: dict[str, Any]
    optimizer: OptimizerSpec
    scheduler: SchedulerSpec | None


def resolve_optim_config(config: Mapping[str, Any] | DictConfig | OptimConfig) -> OptimSpec:
    """Check every name, key and value of ``config`` that needs no model, once, for every later build.

    Raises:
        OptimConfigError: naming the key, the bad value and what would work.
    """
    plain = to_plain_config(config)
    _refuse_nonfinite(plain, "")
    optimizer = resolve_optimizer(plain["optimizer"], plain["param_groups"])
    scheduler = resolve_scheduler(plain["scheduler"]) if plain["scheduler"] is not None else None
    validated = {
        "optimizer": {**plain["optimizer"], **optimizer.options},
        "param_groups": list(optimizer.rules),
        "scheduler": scheduler.config if scheduler is not None else None,
    }
    return OptimSpec(validated, optimizer, scheduler)


def validate_optim_config(config: Mapping[str, Any] | DictConfig | OptimConfig) -> dict[str, Any]:
    """Return ``config`` as plain containers after checking every name, key and value that needs no model.

    Values are returned as the constructors take them: an integral float for an integer key (``1e9`` from a
    command line) becomes an int. An lr (or ``lr_scale``) of 0 warns: those parameters would never change.

    Raises:
        OptimConfigError: naming the key, the bad value and what would work.
    """
    spec = resolve_optim_config(config)
    warn_on_zero_lr(spec, stacklevel=3)
    return spec.config


def _refuse_nonfinite(value: Any, key: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise config_error(key, value, "a finite number")
    if isinstance(value, dict):
        for name, item in value.items():
            _refuse_nonfinite(item, f"{key}.{name}" if key else name)
    if isinstance(value, list):
        for index, item in enumerate(value):
            _refuse_nonfinite(item, f"{key}[{index}]")


def warn_on_zero_lr(spec: OptimSpec, stacklevel: int) -> None:
    """Warn for an lr (or ``lr_scale``) of 0 in a checked config: those parameters would never change."""
    # cyclic and onecycle (and a _target_ scheduler may) set the lr from their own arguments, not the groups' lr.
    if spec.scheduler is not None and spec.scheduler.info.sets_own_lr:
        return
    config = spec.config
    zeros = [("optimizer.lr", config["optimizer"].get("lr"), "the parameters")]
    for index, rule in enumerate(config["param_groups"]):
        group = f"the parameters of group {rule['name']!r}"
        zeros += [(f"param_groups[{index}].{key}", rule.get(key), group) for key in ("lr", "lr_scale")]
    for key, value, whose in zeros:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
            warnings.warn(
                f"optim_config.{key} = {value!r}: {whose} will not change (every update is scaled by the lr). "
                "Use a value > 0, or freeze those parameters with requires_grad=False instead.",
                UserWarning,
                stacklevel=stacklevel,
            )
