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
from typing import Any

from omegaconf import DictConfig

from lightning_optim.config import OptimConfig, to_plain_config
from lightning_optim.errors import config_error
from lightning_optim.optimizer_specs import check_options, check_rule_options, optimizer_class, optimizer_options
from lightning_optim.param_groups import compile_rules
from lightning_optim.scheduler_specs import SCHEDULERS, check_scheduler_config


def validate_optim_config(config: Mapping[str, Any] | DictConfig | OptimConfig) -> dict[str, Any]:
    """Return ``config`` as plain containers after checking every name, key and value that needs no model.

    Values are returned as the constructors take them: an integral float for an integer key (``1e9`` from a
    command line) becomes an int. An lr (or ``lr_scale``) of 0 warns: those parameters would never change.

    Raises:
        OptimConfigError: naming the key, the bad value and what would work.
    """
    plain = to_plain_config(config)
    _refuse_nonfinite(plain, "")
    cls = optimizer_class(plain["optimizer"])
    optimizer = {**plain["optimizer"], **check_options(cls, optimizer_options(plain["optimizer"]), "optimizer")}
    compile_rules(plain["param_groups"])
    param_groups = check_rule_options(cls, plain["param_groups"])
    scheduler = check_scheduler_config(plain["scheduler"]) if plain["scheduler"] is not None else None
    validated = {"optimizer": optimizer, "param_groups": param_groups, "scheduler": scheduler}
    _warn_on_zero_lr(validated)
    return validated


def _refuse_nonfinite(value: Any, key: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise config_error(key, value, "a finite number")
    if isinstance(value, dict):
        for name, item in value.items():
            _refuse_nonfinite(item, f"{key}.{name}" if key else name)
    if isinstance(value, list):
        for index, item in enumerate(value):
            _refuse_nonfinite(item, f"{key}[{index}]")


def _warn_on_zero_lr(config: dict[str, Any]) -> None:
    scheduler = config["scheduler"] or {}
    # cyclic and onecycle (and a _target_ scheduler may) set the lr from their own arguments, not the groups' lr.
    if "_target_" in scheduler or (scheduler and SCHEDULERS[scheduler["name"]].sets_own_lr):
        return
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
                stacklevel=3,
            )
