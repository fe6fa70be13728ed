"""The two ``LRScheduler`` classes behind the ``scheduler`` config: a pure schedule, and plateau with warmup.

:class:`ClosedFormLR` runs a closed-form schedule (:mod:`lightning_optim.schedule.closed_form`); :class:`PlateauLR`
warms up per step and then follows torch's ``ReduceLROnPlateau``, fed by :func:`step_plateau` after each validation run.

Examples:
    >>> from lightning_optim.schedule.closed_form import StepDecay
    >>> optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)
    >>> scheduler = ClosedFormLR(optimizer, StepDecay(step_size=1, gamma=0.5))
    >>> optimizer.step(); scheduler.step(); scheduler.get_last_lr()
    [0.5]
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau
from typing_extensions import override

from lightning_optim.errors import OptimConfigError, did_you_mean
from lightning_optim.schedule.closed_form import Schedule

__all__ = ["ClosedFormLR", "PlateauLR", "step_plateau", "write_lrs"]


class ClosedFormLR(LRScheduler):
    """Set every parameter group's lr to its own base lr times ``schedule(step)``.

    Like ``LambdaLR`` with one picklable schedule, plus: a parameter group added during training (e.g. by
    Lightning's ``BaseFinetuning.unfreeze_and_add_param_group``) joins the schedule. Its base lr is its
    ``initial_lr`` if given, else the lr it was added with divided by the current factor, so its lr goes on
    from where it was added and keeps its ratio to the other groups. The schedule itself is not saved in
    ``state_dict``: it is rebuilt from the config, and the checkpoint keeps only plain numbers.

    Examples:
        >>> optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.5)
        >>> scheduler = ClosedFormLR(optimizer, Schedule(warmup_steps=2))
        >>> scheduler.get_last_lr()
        [0.0]
        >>> optimizer.step(); scheduler.step(); scheduler.get_last_lr()
        [0.25]
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Schedule, last_epoch: int = -1) -> None:
        self.schedule = schedule
        super().__init__(optimizer, last_epoch)

    @override
    def get_lr(self) -> list[float | torch.Tensor]:
        self._adopt_new_groups()
        factor = self.schedule(self.last_epoch)
        return [base_lr * factor for base_lr in self.base_lrs]

    def _adopt_new_groups(self) -> None:
        new_groups = self.optimizer.param_groups[len(self.base_lrs) :]
        if not new_groups:
            return
        current = self.schedule(max(self.last_epoch - 1, 0))
        for group in new_groups:
            if "initial_lr" not in group:
                group["initial_lr"] = group["lr"] / current if current > 0 else group["lr"]
            self.base_lrs.append(group["initial_lr"])

    @override
    def state_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key not in ("optimizer", "schedule")}

    def apply_schedule(self) -> None:
        """Set every group's lr to the schedule's value at the current step.

        A resumed run restores each group's lr from the checkpoint, made with the schedule the run began with;
        when the resumed config changed the schedule (e.g. an explicit longer ``total_steps``), this makes its
        first step follow the new one too.
        """
        values = self.get_lr()
        write_lrs(self.optimizer.param_groups, values)
        self._last_lr = values


def write_lrs(groups: Sequence[dict[str, Any]], values: Sequence[float | torch.Tensor]) -> None:
    """Set each group's lr, in place where it is a tensor (a fused or capturable optimizer's ``lr`` can be one).

    Examples:
        >>> groups = [{"lr": 0.1}, {"lr": torch.tensor(0.1)}]
        >>> write_lrs(groups, [0.5, 0.25]); groups[0]["lr"], float(groups[1]["lr"])
        (0.5, 0.25)
    """
    for group, value in zip(groups, values, strict=True):
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(value)
        else:
            group["lr"] = value


class PlateauLR(LRScheduler):
    """Linear warmup per step, then torch's ``ReduceLROnPlateau`` fed by :meth:`step_on_metric`.

    :meth:`step` advances the warmup only; the caller calls :meth:`step_on_metric` once after each validation
    run that produced ``monitor``, so the plateau never acts on a stale value. Metrics seen during warmup are
    ignored.

    Examples:
        >>> optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)
        >>> scheduler = PlateauLR(optimizer, monitor="val/loss", patience=0)
        >>> scheduler.step_on_metric(1.0); scheduler.step_on_metric(2.0); scheduler.get_last_lr()
        [0.1]
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, *, monitor: str, warmup_steps: int = 0, **plateau_options: Any
    ) -> None:
        self.monitor = monitor
        self.warmup = Schedule(warmup_steps=warmup_steps)
        self.plateau = ReduceLROnPlateau(optimizer, **plateau_options)
        super().__init__(optimizer)

    @override
    def get_lr(self) -> list[float | torch.Tensor]:
        groups = self.optimizer.param_groups
        self.base_lrs.extend(group.setdefault("initial_lr", group["lr"]) for group in groups[len(self.base_lrs) :])
        if self.last_epoch > self.warmup.warmup_steps:
            return [group["lr"] for group in groups]
        factor = self.warmup(self.last_epoch)
        return [base_lr * factor for base_lr in self.base_lrs]

    def step_on_metric(self, value: float | torch.Tensor) -> None:
        """Feed one validation result to the plateau logic (ignored during warmup)."""
        if self.last_epoch < self.warmup.warmup_steps:
            return
        self.plateau.step(value)
        self._last_lr = self.plateau.get_last_lr()

    @override
    def state_dict(self) -> dict[str, Any]:
        state = {key: value for key, value in self.__dict__.items() if key not in ("optimizer", "warmup", "plateau")}
        return {**state, "plateau": self.plateau.state_dict()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        self.plateau.load_state_dict(state.pop("plateau"))
        self.__dict__.update(state)


def missing_metric_message(monitor: str, available: list[str], key: str = "optim_config.scheduler.monitor") -> str:
    """The error for a plateau whose ``monitor`` the validation run did not log."""
    return (
        f"{key} = {monitor!r} was not logged by the validation run that just ended."
        f"{did_you_mean(monitor, available)} Metrics that exist: {sorted(available)}. Log it with "
        f"self.log({monitor!r}, ...) in validation_step, or set the monitor to one of these."
    )


def step_plateau(
    scheduler: PlateauLR,
    metrics: Mapping[str, Any],
    strict: bool = True,
    sanity_check: bool = False,
    key: str = "optim_config.scheduler.monitor",
) -> None:
    """Feed ``scheduler`` the monitored value a validation run just logged into ``metrics``.

    During Lightning's sanity check nothing is stepped; a missing ``monitor`` is an error there only when a logged
    metric has a close name (a typo fails before the first training step; a metric the model logs only outside
    the sanity check is waited for, as Lightning's own callbacks do).

    Raises:
        OptimConfigError: the metric is missing and ``strict`` (otherwise a warning); ``key`` names the setting.
    """
    value = metrics.get(scheduler.monitor)
    if value is not None:
        if not sanity_check:
            scheduler.step_on_metric(value)
        return
    if sanity_check and not did_you_mean(scheduler.monitor, list(metrics)):
        return
    message = missing_metric_message(scheduler.monitor, list(metrics), key)
    if strict:
        raise OptimConfigError(message)
    warnings.warn(message, RuntimeWarning, stacklevel=2)
