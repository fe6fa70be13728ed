"""Optimizers, parameter groups and LR schedules from a plain config, for PyTorch Lightning.

The names below are imported on first use, so importing a pure module (``lightning_optim.schedules``,
``lightning_optim.param_groups``, ``lightning_optim.errors``) loads neither Lightning nor OmegaConf.

Example:
    >>> from lightning_optim import OptimMixin, validate_optim_config
    >>> validate_optim_config({"optimizer": {"name": "sgd", "lr": 0.1}})["scheduler"] is None
    True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning_optim.checkpoints import CheckpointError, SafeCheckpointIO, verify_checkpoint
    from lightning_optim.config import OptimConfig
    from lightning_optim.errors import OptimConfigError
    from lightning_optim.mixin import OptimMixin
    from lightning_optim.optimizer_specs import OPTIMIZERS
    from lightning_optim.optimizers import build_optimizer
    from lightning_optim.preview import preview_learning_rates
    from lightning_optim.run_length import ResumeConfigWarning, RunLengthWarning
    from lightning_optim.scheduler_builder import build_scheduler
    from lightning_optim.scheduler_specs import SCHEDULER_NAMES
    from lightning_optim.targets import allow_target_modules
    from lightning_optim.validation import validate_optim_config

_HOMES = {
    "CheckpointError": "checkpoints",
    "SafeCheckpointIO": "checkpoints",
    "verify_checkpoint": "checkpoints",
    "OptimConfig": "config",
    "OptimConfigError": "errors",
    "OptimMixin": "mixin",
    "ResumeConfigWarning": "run_length",
    "RunLengthWarning": "run_length",
    "OPTIMIZERS": "optimizer_specs",
    "build_optimizer": "optimizers",
    "SCHEDULER_NAMES": "scheduler_specs",
    "build_scheduler": "scheduler_builder",
    "preview_learning_rates": "preview",
    "validate_optim_config": "validation",
    "allow_target_modules": "targets",
}

__all__ = [
    "OPTIMIZERS",
    "SCHEDULER_NAMES",
    "CheckpointError",
    "OptimConfig",
    "OptimConfigError",
    "OptimMixin",
    "ResumeConfigWarning",
    "RunLengthWarning",
    "SafeCheckpointIO",
    "allow_target_modules",
    "build_optimizer",
    "build_scheduler",
    "preview_learning_rates",
    "validate_optim_config",
    "verify_checkpoint",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
