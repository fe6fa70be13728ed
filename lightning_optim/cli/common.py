"""Helpers the command-line apps share: the model's ``optim_config`` and the run's length, from the Hydra config.

Example:
    >>> from omegaconf import OmegaConf
    >>> cfg = OmegaConf.create({"optimizer": {"name": "sgd", "lr": 0.1}, "param_groups": [], "scheduler": None})
    >>> compose_optim_config(cfg)
    {'optimizer': {'name': 'sgd', 'lr': 0.1}, 'param_groups': [], 'scheduler': None}
    >>> count_optimizer_steps({"max_epochs": 3, "accumulate_grad_batches": 2, "limit_train_batches": 5}, 23)
    (9, 3)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

CONFIG_PATH = "pkg://lightning_optim.conf"
"""Where the apps find their configs: the package, so an installed wheel needs no checkout."""

LIGHTNING_DEFAULT_MAX_EPOCHS = 1000
"""What Lightning's Trainer runs when neither ``max_epochs`` nor ``max_steps`` is set."""


def compose_optim_config(cfg: DictConfig) -> dict[str, Any]:
    """The model's ``optim_config``: the config's ``optimizer``, ``param_groups`` and ``scheduler`` as plain,
    resolved containers (a ``DictConfig`` in hparams would break ``weights_only`` checkpoint loading)."""
    scheduler = cfg.get("scheduler")
    param_groups = cfg.get("param_groups")
    return {
        "optimizer": OmegaConf.to_container(cfg.optimizer, resolve=True),
        "param_groups": OmegaConf.to_container(param_groups, resolve=True) if param_groups is not None else [],
        "scheduler": OmegaConf.to_container(scheduler, resolve=True) if scheduler is not None else None,
    }


def whole_number(key: str, value: Any) -> int:
    """``value`` as an int: a count written as ``1e9`` on the command line arrives as a float.

    Example:
        >>> whole_number("trainer.max_steps", 1e9)
        1000000000
    """
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{key} = {value!r} is not valid. Expected a whole number, e.g. 1000 or 1e9.")
    return value


def count_optimizer_steps(trainer_cfg: Mapping[str, Any], num_train_batches: int) -> tuple[int, int]:
    """The optimizer steps a run will take and those per epoch, as ``trainer.estimated_stepping_batches`` counts.

    Args:
        trainer_cfg: The Trainer's arguments: ``max_epochs``, ``max_steps``, ``accumulate_grad_batches``,
            ``limit_train_batches`` (missing keys take Lightning's defaults).
        num_train_batches: ``len(train_dataloader)``.

    Returns:
        ``(total_steps, steps_per_epoch)``.

    Raises:
        ValueError: the run has no end (``max_epochs: -1`` without ``max_steps``) or no training batches.
    """
    limit = trainer_cfg.get("limit_train_batches")
    limit = 1.0 if limit is None else limit
    if isinstance(limit, int) and not isinstance(limit, bool):
        batches = min(num_train_batches, limit)
    else:
        batches = int(num_train_batches * float(limit))
    if batches <= 0:
        raise ValueError(f"No training batches: {num_train_batches} batches with limit_train_batches={limit}.")
    accumulate = trainer_cfg.get("accumulate_grad_batches") or 1
    # Lightning also steps on an epoch's last, incomplete accumulation.
    steps_per_epoch = math.ceil(batches / accumulate)
    max_steps = trainer_cfg.get("max_steps")
    max_steps = -1 if max_steps is None else whole_number("trainer.max_steps", max_steps)
    max_epochs = trainer_cfg.get("max_epochs")
    max_epochs = None if max_epochs is None else whole_number("trainer.max_epochs", max_epochs)
    if max_epochs is None:
        max_epochs = LIGHTNING_DEFAULT_MAX_EPOCHS if max_steps == -1 else -1
    if max_epochs == -1:
        if max_steps == -1:
            raise ValueError("The run has no end: set trainer.max_epochs or trainer.max_steps.")
        return max_steps, steps_per_epoch
    total = steps_per_epoch * max(max_epochs, 1)
    return (min(total, max_steps) if max_steps != -1 else total), steps_per_epoch
