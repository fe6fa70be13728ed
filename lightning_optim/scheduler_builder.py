"""Build a scheduler from a checked ``scheduler`` section, over the run's length (kept on resume).

Example:
    >>> import torch
    >>> optimizer = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=1.0)
    >>> built = build_scheduler(optimizer, {"name": "warmup_cosine", "warmup_steps": 2}, total_steps=6)
    >>> built.lightning_config["interval"], built.frequency
    ('step', 1)
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from lightning_optim.errors import config_error
from lightning_optim.lr_schedulers import PlateauLR
from lightning_optim.scheduler_specs import SchedulerSpec, needs_run_length, own_options, resolve_scheduler

if TYPE_CHECKING:
    from lightning.pytorch.utilities.types import LRSchedulerConfigType

__all__ = [
    "BuiltScheduler",
    "build_scheduler",
    "resumed_run_length",
    "run_length",
    "run_length_changed",
    "saved_run_length",
]


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


def run_length(trainer: Any, scheduler: Mapping[str, Any]) -> int | None:
    """The run's length in the scheduler's ``interval`` units, or None when the trainer cannot tell.

    Optimizer steps come from ``trainer.estimated_stepping_batches`` (exact under accumulation, ``max_steps`` and
    ``limit_train_batches``); epochs from ``trainer.max_epochs``.
    """
    if trainer is None:
        return None
    if scheduler.get("interval", "step") == "epoch":
        return trainer.max_epochs if trainer.max_epochs not in (None, -1) else None
    total = trainer.estimated_stepping_batches
    return None if math.isinf(total) else int(total)


def saved_run_length(spec: Mapping[str, Any], length: int | None) -> dict[str, Any]:
    """What a checkpoint keeps of the run length a scheduler was built with (plain values, in ``interval`` units).

    Example:
        >>> saved_run_length({"name": "warmup_cosine", "interval": "epoch"}, 8)
        {'interval': 'epoch', 'length': 8}
    """
    return {"interval": spec.get("interval", "step"), "length": length}


def resumed_run_length(spec: Mapping[str, Any], saved: Mapping[str, Any] | None, length: int | None) -> int | None:
    """The run length a resumed scheduler goes on with: the checkpoint's, where the config leaves it to the run.

    ``saved`` is what :func:`saved_run_length` stored; ``length`` is the new trainer's :func:`run_length`. The
    checkpoint's length wins when the schedule's shape depends on the run (:func:`needs_run_length`), so a run
    resumed with another ``max_epochs`` keeps the lr curve it started on. An explicit ``total_steps`` wins over it,
    and a length counted in another ``interval`` is not comparable.

    Example:
        >>> spec = {"name": "warmup_cosine", "total_steps": None}
        >>> resumed_run_length(spec, {"interval": "step", "length": 100}, 200)
        100
        >>> resumed_run_length({**spec, "total_steps": 200}, {"interval": "step", "length": 100}, 200)
        200
    """
    if not saved or saved.get("length") is None or not needs_run_length(spec):
        return length
    return saved["length"] if saved.get("interval") == spec.get("interval", "step") else length


def run_length_changed(
    spec: Mapping[str, Any], saved: int | None, length: int | None, where: str = "optim_config.scheduler"
) -> str:
    """The warning for a resumed scheduler that keeps the checkpoint's run length ``saved`` instead of ``length``.

    Example:
        >>> print(run_length_changed({"name": "warmup_cosine"}, 16, 32))  # doctest: +NORMALIZE_WHITESPACE
        Resuming with a different run length: the checkpoint's run was 16 steps long, this one is 32 steps. The lr
        schedule of optim_config.scheduler ('warmup_cosine') continues as it began, over 16 steps. To stretch it over
        the new run on purpose, set optim_config.scheduler.total_steps: 32 (an explicit value wins over the
        checkpoint's).
    """
    unit = f"{spec.get('interval', 'step')}s"
    new = f"{length} {unit}" if length is not None else "not bounded (no max_steps or max_epochs)"
    return (
        f"Resuming with a different run length: the checkpoint's run was {saved} {unit} long, this one is {new}. "
        f"The lr schedule of {where} ({spec.get('name')!r}) continues as it began, over {saved} {unit}. "
        f"{_stretch_hint(spec, length, where)}"
    )


def _stretch_hint(spec: Mapping[str, Any], length: int | None, where: str) -> str:
    if spec.get("name") == "onecycle":
        return (
            "torch's OneCycleLR keeps its length in its own state, so it cannot be stretched on resume: to change it, "
            "start a new run from the weights (load_from_checkpoint)."
        )
    key, value = f"{where}.total_steps", length
    if spec.get("name") == "sequential":
        last = len(spec["schedulers"]) - 1
        milestones = spec.get("milestones") or [0]
        key, value = f"{where}.schedulers[{last}].total_steps", None if length is None else length - milestones[-1]
    shown = value if value is not None else "<the new length>"
    return (
        f"To stretch it over the new run on purpose, set {key}: {shown} (an explicit value wins over the checkpoint's)."
    )
