"""The ``optim_config`` schema: plain containers in, clear errors out.

A model hands its optimisation settings to :class:`~lightning_optim.OptimMixin` as a dict, an OmegaConf
``DictConfig`` or an :class:`OptimConfig`. Everything is turned into plain ``dict``/``list``/scalars here, so the
config can be stored in ``hparams`` and checkpoints load under torch's default ``weights_only=True``.

Example:
    >>> to_plain_config({"optimizer": {"name": "adamw", "lr": 3e-4}})
    {'optimizer': {'name': 'adamw', 'lr': 0.0003}, 'param_groups': [], 'scheduler': None}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from lightning_optim.errors import OptimConfigError, config_error

__all__ = ["OptimConfig", "changed_keys", "plain", "to_plain_config"]

TOP_LEVEL_KEYS = ("optimizer", "param_groups", "scheduler")


@dataclass
class OptimConfig:
    """Typed form of ``optim_config``; the sections stay mappings because their keys depend on the optimizer.

    Example:
        >>> cfg = OptimConfig(optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9})
        >>> to_plain_config(cfg)["optimizer"]["momentum"]
        0.9
    """

    optimizer: dict[str, Any]
    param_groups: list[dict[str, Any]] = field(default_factory=list)
    scheduler: dict[str, Any] | None = None


def plain(value: Any) -> Any:
    """Recursively turn OmegaConf containers, mappings and tuples into plain dicts and lists.

    Example:
        >>> plain(OmegaConf.create({"betas": [0.9, 0.98]}))
        {'betas': [0.9, 0.98]}
    """
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


def to_plain_config(config: Mapping[str, Any] | DictConfig | OptimConfig) -> dict[str, Any]:
    """Return ``config`` as plain containers with all three sections present.

    Raises:
        OptimConfigError: when ``optimizer`` is missing or a top-level key is unknown.
    """
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if not isinstance(config, (Mapping, DictConfig)):
        raise OptimConfigError(
            f"optim_config must be a dict, a DictConfig or an OptimConfig, got {type(config).__name__}."
        )
    values: dict[str, Any] = plain(config)
    for key in values:
        if key not in TOP_LEVEL_KEYS:
            raise config_error(
                key, values[key], f"only the keys {', '.join(TOP_LEVEL_KEYS)}", TOP_LEVEL_KEYS, unknown_key=True
            )
    if not isinstance(values.get("optimizer"), dict):
        raise OptimConfigError("optim_config.optimizer is required: a mapping such as {'name': 'adamw', 'lr': 3e-4}.")
    param_groups = values.get("param_groups") or []
    if not isinstance(param_groups, list):
        raise config_error("param_groups", param_groups, "a list of rules such as [{'name': ..., 'params': ...}]")
    scheduler = values.get("scheduler")
    if scheduler is not None and not isinstance(scheduler, dict):
        raise config_error("scheduler", scheduler, "a mapping with a 'name', or null for a constant lr")
    return {"optimizer": values["optimizer"], "param_groups": param_groups, "scheduler": scheduler}


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """List the dotted keys whose values differ between two plain configs.

    Example:
        >>> changed_keys({"optimizer": {"lr": 0.1, "name": "sgd"}}, {"optimizer": {"lr": 0.2, "name": "sgd"}})
        ['optimizer.lr']
    """
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [path for key in keys for path in changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".")]
