"""Optimizers, parameter groups and LR schedules from a plain config, for PyTorch Lightning.

Example:
    >>> from lightning_optim import OptimMixin, validate_optim_config
    >>> validate_optim_config({"optimizer": {"name": "sgd", "lr": 0.1}})["scheduler"] is None
    True
"""

from lightning_optim.checkpoints import CheckpointError, SafeCheckpointIO, verify_checkpoint
from lightning_optim.config import OptimConfig, OptimConfigError
from lightning_optim.mixin import OptimMixin, ResumeConfigWarning
from lightning_optim.optimizers import OPTIMIZERS, build_optimizer
from lightning_optim.schedulers import SCHEDULER_NAMES, build_scheduler, preview_learning_rates
from lightning_optim.validation import validate_optim_config

__all__ = [
    "OPTIMIZERS",
    "SCHEDULER_NAMES",
    "CheckpointError",
    "OptimConfig",
    "OptimConfigError",
    "OptimMixin",
    "ResumeConfigWarning",
    "SafeCheckpointIO",
    "build_optimizer",
    "build_scheduler",
    "preview_learning_rates",
    "validate_optim_config",
    "verify_checkpoint",
]
