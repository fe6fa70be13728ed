"""Check a whole ``optim_config`` before any model or trainer is touched.

Example:
    >>> validate_optim_config({"optimizer": {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.98]}})["optimizer"]
    {'name': 'adamw', 'lr': 0.001, 'betas': [0.9, 0.98]}
    >>> validate_optim_config({"optimizer": {"name": "adam", "lr": 1e-3, "weight_decy": 0.1}})
    Traceback (most recent call last):
    ...
    lightning_optim.config.OptimConfigError: optim_config.optimizer.weight_decy = 0.1 is not valid. Did you mean \
'weight_decay'? Expected an argument of Adam: lr, betas, eps, weight_decay, amsgrad, foreach, maximize, capturable, \
differentiable, fused, decoupled_weight_decay.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig

from lightning_optim.config import OptimConfig, to_plain_config
from lightning_optim.optimizers import check_options, check_rule_options, optimizer_class, optimizer_options
from lightning_optim.param_groups import compile_rules
from lightning_optim.schedulers import check_scheduler_config


def validate_optim_config(config: Mapping[str, Any] | DictConfig | OptimConfig) -> dict[str, Any]:
    """Return ``config`` as plain containers after checking every name, key and value that needs no model.

    Raises:
        OptimConfigError: naming the key, the bad value and what would work.
    """
    plain = to_plain_config(config)
    cls = optimizer_class(plain["optimizer"])
    check_options(cls, optimizer_options(plain["optimizer"]), "optimizer")
    compile_rules(plain["param_groups"])
    check_rule_options(cls, plain["param_groups"])
    if plain["scheduler"] is not None:
        check_scheduler_config(plain["scheduler"])
    return plain
