"""Build a scheduler from a checked ``scheduler`` section, over a run of a given length.

Examples:
    >>> import torch
    >>> optimizer = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=1.0)
    >>> built = build_scheduler(optimizer, {"name": "warmup_cosine", "warmup_steps": 2}, total_steps=6)
    >>> built.lightning_config["interval"], built.frequency
    ('step', 1)
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from lightning_optim.errors import config_error
from lightning_optim.schedule.lr_schedulers import PlateauLR
from lightning_optim.schedule.registry import SchedulerSpec, own_options, resolve_scheduler

if TYPE_CHECKING:
    from lightning.pytorch.utilities.types import LRSchedulerConfigType

__all__ = ["BuiltScheduler", "build_scheduler"]


@dataclass
class BuiltScheduler:
    """A scheduler with the config Lightning gets and the step ``frequency`` counted in optimizer steps."""

    scheduler: LRScheduler
    lightning_config: LRSchedulerConfigType
    frequency: int
    interval: str

    def advance(self) -> None:
        """Move the schedule ``frequency`` steps on, at the moment Lightning steps it.

        Counts in the config (``warmup_steps``, ``total_steps``, ``step_size``, ...) are optimizer steps (or epochs
        with ``interval: epoch``), never scheduler calls: ``frequency`` only says how often the lr is updated.
        """
        for _ in range(self.frequency):
            self.scheduler.step()

    @property
    def steps_on_validation(self) -> bool:
        """Whether the scheduler also needs :meth:`PlateauLR.step_on_metric` after each validation run."""
        return isinstance(self.scheduler, PlateauLR)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    spec: SchedulerSpec | Mapping[str, Any],
    total_steps: int | None,
    where: str = "scheduler",
) -> BuiltScheduler:
    """Build the scheduler for ``optimizer``; ``total_steps`` is the run's length in units of ``interval``.

    ``total_steps`` is None when the run's length is unknown (a trainer without ``max_steps``/``max_epochs``).

    ``total_steps: null`` in the config (and ``warmup_ratio``) resolve against ``total_steps``.

    ``spec`` is a ``scheduler`` section, checked here (``where`` names it in errors), or a :class:`SchedulerSpec`
    that validation already checked.

    Raises:
        OptimConfigError: a bad value, or a warmup longer than the run.
    """
    if not isinstance(spec, SchedulerSpec):
        spec = resolve_scheduler(spec, where)
    config, where = spec.config, spec.where
    if total_steps is None:
        if spec.needs_run_length:
            raise config_error(
                f"{where}.total_steps",
                None,
                "a number of steps: the trainer has no max_steps or max_epochs to derive it",
            )
        total_steps = sys.maxsize
    interval = config.get("interval", "step")
    warmup_steps = own_options(config).get("warmup_steps")
    if isinstance(warmup_steps, int) and warmup_steps > total_steps:
        raise config_error(
            f"{where}.warmup_steps",
            warmup_steps,
            f"at most the run's {total_steps} {interval}s (warmup longer than the run)",
        )
    scheduler = spec.info.build(optimizer, config, total_steps, where)
    frequency = config.get("frequency", 1)
    lightning_config: LRSchedulerConfigType = {
        "scheduler": scheduler,
        "interval": interval,
        "frequency": 1 if interval == "step" else frequency,
    }
    if config.get("log_name"):
        lightning_config["name"] = config["log_name"]
    return BuiltScheduler(scheduler, lightning_config, frequency, interval)
