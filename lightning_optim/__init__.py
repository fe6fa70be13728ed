"""Optimizers, parameter groups and LR schedules from a plain config, for PyTorch Lightning.

The names below are imported on first use, so importing a pure module (``lightning_optim.schedule.closed_form``,
``lightning_optim.optim.param_groups``, ``lightning_optim.errors``) loads neither Lightning nor OmegaConf.

Examples:
    >>> from lightning_optim import OptimMixin, validate_optim_config
    >>> validate_optim_config({"optimizer": {"name": "sgd", "lr": 0.1}})["scheduler"] is None
    True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning_optim.config.optim_config import OptimConfig
    from lightning_optim.config.preview import preview_learning_rates
    from lightning_optim.config.validation import validate_optim_config
    from lightning_optim.errors import OptimConfigError
    from lightning_optim.fit.checkpoints import CheckpointError, SafeCheckpointIO, verify_checkpoint
    from lightning_optim.fit.mixin import OptimMixin
    from lightning_optim.fit.run_length import ResumeConfigWarning, RunLengthWarning
    from lightning_optim.optim.build import build_optimizer
    from lightning_optim.optim.registry import OPTIMIZERS
    from lightning_optim.schedule.build import build_scheduler
    from lightning_optim.schedule.registry import SCHEDULER_NAMES
    from lightning_optim.targets import allow_target_modules

_HOMES = {
    "CheckpointError": "fit.checkpoints",
    "SafeCheckpointIO": "fit.checkpoints",
    "verify_checkpoint": "fit.checkpoints",
    "OptimConfig": "config.optim_config",
    "OptimConfigError": "errors",
    "OptimMixin": "fit.mixin",
    "ResumeConfigWarning": "fit.run_length",
    "RunLengthWarning": "fit.run_length",
    "OPTIMIZERS": "optim.registry",
    "build_optimizer": "optim.build",
    "SCHEDULER_NAMES": "schedule.registry",
    "build_scheduler": "schedule.build",
    "preview_learning_rates": "config.preview",
    "validate_optim_config": "config.validation",
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
