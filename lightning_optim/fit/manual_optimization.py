"""Manual optimization (``automatic_optimization = False``): the user clips and steps, the mixin keeps count.

Lightning calls neither ``configure_gradient_clipping`` nor the schedulers there: ``training_step`` calls
``self.clip_gradients(...)`` and ``self.lr_schedulers().step()`` itself. :func:`clip_arguments` resolves
``clip_gradients``' arguments as Lightning does, so the mixin can clip there and keep what it measured;
:class:`SchedulerStepCheck` warns when a scheduler the mixin built is never stepped (its lr would stay at warmup's 0).

Examples:
    >>> from types import SimpleNamespace
    >>> clip_arguments(SimpleNamespace(gradient_clip_val=None, gradient_clip_algorithm=None), 0.5, None)
    (0.5, 'norm')
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch.optim.lr_scheduler import LRScheduler

from lightning_optim.clipping.arithmetic import algorithm_name, check_threshold

__all__ = [
    "SchedulerStepCheck",
    "UnsteppedSchedulerWarning",
    "clip_arguments",
    "max_steps_counts_every_optimizer",
    "unapplied_frequency",
]


class UnsteppedSchedulerWarning(UserWarning):
    """Under manual optimization, a scheduler built from ``optim_config`` was never stepped."""


def clip_arguments(trainer: Any, threshold: float | None, algorithm: str | None) -> tuple[float, str]:
    """``LightningModule.clip_gradients``' threshold and algorithm, resolved as Lightning resolves them.

    A None takes the Trainer's value (threshold 0: no clipping; algorithm ``"norm"``); a value that contradicts
    the Trainer's is refused, as Lightning does. A negative or non-finite threshold is refused too: norm clipping
    would flip the gradients' sign (Lightning's own clipping skips it silently).

    Raises:
        MisconfigurationException: a value differing from the Trainer's, or an unknown algorithm.
        ValueError: a negative or non-finite threshold.

    Examples:
        >>> from types import SimpleNamespace
        >>> clip_arguments(SimpleNamespace(gradient_clip_val=None, gradient_clip_algorithm=None), -1, "norm")
        Traceback (most recent call last):
        ...
        ValueError: clip_gradients(gradient_clip_val=-1) is not valid. Expected a finite threshold > 0, e.g. 1.0, \
or 0 / None for no clipping (a negative threshold flips the sign of the clipped gradients: gradient ascent).
    """
    trainer_threshold = trainer.gradient_clip_val
    trainer_algorithm = trainer.gradient_clip_algorithm
    if threshold is None:
        threshold = trainer_threshold or 0.0
    elif trainer_threshold is not None and trainer_threshold != threshold:
        raise MisconfigurationException(
            f"You have set `Trainer(gradient_clip_val={trainer_threshold!r})` and have passed "
            f"`clip_gradients(gradient_clip_val={threshold!r})`. Please use only one of them."
        )
    check_threshold(threshold, "clip_gradients")
    if algorithm is None:
        algorithm = algorithm_name(trainer_algorithm)
    else:
        algorithm = algorithm.lower()
        if trainer_algorithm is not None and algorithm_name(trainer_algorithm) != algorithm:
            raise MisconfigurationException(
                f"You have set `Trainer(gradient_clip_algorithm={algorithm_name(trainer_algorithm)!r})` and have "
                f"passed `clip_gradients(gradient_clip_algorithm={algorithm!r})`. Please use only one of them."
            )
    if algorithm not in ("norm", "value"):
        raise MisconfigurationException(
            f"`gradient_clip_algorithm` {algorithm} is invalid. Allowed algorithms: ['value', 'norm']."
        )
    return threshold, algorithm


def unapplied_frequency(schedulers: Sequence[tuple[str, Any]]) -> str | None:
    """The warning for schedulers whose ``frequency`` is not 1 under manual optimization, or None.

    ``schedulers`` pairs each scheduler's key path with its ``BuiltScheduler``. Lightning applies neither
    ``interval`` nor ``frequency`` there: each ``scheduler.step()`` the user calls moves the schedule one unit.

    Examples:
        >>> from types import SimpleNamespace
        >>> print(unapplied_frequency([("optim_config.scheduler", SimpleNamespace(frequency=4))]))
        Under manual optimization Lightning does not step schedulers, so optim_config.scheduler.frequency = 4 is not \
applied: each self.lr_schedulers().step() in training_step moves the schedule by one step. Call it every step \
(the lr follows the schedule exactly), or remove frequency.
    """
    keys = [f"{where}.frequency = {built.frequency}" for where, built in schedulers if built.frequency != 1]
    if not keys:
        return None
    return (
        f"Under manual optimization Lightning does not step schedulers, so {', '.join(keys)} is not applied: each "
        "self.lr_schedulers().step() in training_step moves the schedule by one step. Call it every step (the lr "
        "follows the schedule exactly), or remove frequency."
    )


def max_steps_counts_every_optimizer(trainer: Any, optimizers: int, sized_by_run: Sequence[str]) -> str | None:
    """The warning for schedules sized by ``max_steps`` with several optimizers under manual optimization, or None.

    ``trainer.global_step``, which ``max_steps`` bounds, counts every optimizer's step, while
    ``estimated_stepping_batches`` (the run length a schedule takes) is ``max_steps``: with two optimizers stepping
    once per batch the run has half that many batches, and a schedule stepped once per batch ends halfway.
    ``sized_by_run`` names the schedules that take their length from the run.

    Examples:
        >>> from types import SimpleNamespace
        >>> trainer = SimpleNamespace(max_steps=8, estimated_stepping_batches=8)
        >>> print(max_steps_counts_every_optimizer(trainer, 2, ["optim_config.optimizers.g.scheduler"]))
        Manual optimization with 2 optimizers: trainer.global_step, which max_steps=8 bounds, counts every \
optimizer's step, so the run has 4 training batches if each optimizer steps once per batch; the schedule of \
optim_config.optimizers.g.scheduler takes its length from the run and is sized for 8 steps. Set its total_steps \
(e.g. 4), or bound the run with max_epochs instead.
    """
    if trainer is None or optimizers < 2 or not sized_by_run or trainer.max_steps in (None, -1):
        return None
    if trainer.estimated_stepping_batches != trainer.max_steps:
        return None
    batches = trainer.max_steps // optimizers
    return (
        f"Manual optimization with {optimizers} optimizers: trainer.global_step, which max_steps={trainer.max_steps} "
        f"bounds, counts every optimizer's step, so the run has {batches} training batches if each optimizer steps "
        f"once per batch; the schedule of {', '.join(sized_by_run)} takes its length from the run and is sized for "
        f"{trainer.max_steps} steps. Set its total_steps (e.g. {batches}), or bound the run with max_epochs instead."
    )


class SchedulerStepCheck:
    """Warn once when, under manual optimization, a scheduler was not stepped during the first epoch of a fit.

    Lightning never steps schedulers under manual optimization; a warmup schedule that is never stepped keeps
    the lr at 0 for the whole run. Made at the start of training; :meth:`check` runs after the first epoch.

    Examples:
        >>> import torch
        >>> optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: step / 10)
        >>> check = SchedulerStepCheck([("optim_config.scheduler", scheduler)], optimizer_steps=0)
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     check.check(optimizer_steps=8)
        >>> print(caught[0].message)  # doctest: +ELLIPSIS
        Manual optimization: the scheduler of optim_config.scheduler was not stepped during the first epoch ...
    """

    def __init__(self, schedulers: Sequence[tuple[str, LRScheduler]], optimizer_steps: int) -> None:
        self._schedulers = [(where, scheduler, scheduler.last_epoch) for where, scheduler in schedulers]
        self._optimizer_steps = optimizer_steps
        self.done = not self._schedulers

    def check(self, optimizer_steps: int) -> None:
        """Warn for every scheduler still at its first position, if the optimizers stepped meanwhile."""
        if self.done or optimizer_steps == self._optimizer_steps:
            return
        self.done = True
        unstepped = [
            (where, scheduler) for where, scheduler, start in self._schedulers if scheduler.last_epoch == start
        ]
        if not unstepped:
            return
        names = ", ".join(where for where, _ in unstepped)
        lrs = sorted({f"{group['lr']:g}" for _, scheduler in unstepped for group in scheduler.optimizer.param_groups})
        warnings.warn(
            f"Manual optimization: the scheduler of {names} was not stepped during the first epoch "
            f"({optimizer_steps - self._optimizer_steps} optimizer steps), so the lr stays where it started "
            f"({', '.join(lrs)}; 0 during warmup). Lightning does not step schedulers when automatic_optimization is "
            "False: call sch.step() in training_step after opt.step() (sch = self.lr_schedulers(), a list with "
            "several schedulers), once per optimizer step (interval: step) or once per epoch in "
            "on_train_epoch_end (interval: epoch).",
            UnsteppedSchedulerWarning,
            stacklevel=2,
        )
