"""Every parameter group's learning rate over a run, without training: in full, or sampled at a bounded cost.

Examples:
    >>> import torch
    >>> [round(lr, 2) for lr in preview_learning_rates(torch.nn.Linear(2, 1),
    ...     {"optimizer": {"name": "sgd", "lr": 1.0}, "scheduler": {"name": "step", "step_size": 2}}, 5)["default"]]
    [1.0, 1.0, 0.1, 0.1, 0.01]
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from lightning_optim.config.optimizer_sets import select_parameters
from lightning_optim.config.validation import OptimizerSetSpec, OptimSpec, resolve_optim_config
from lightning_optim.errors import OptimConfigError
from lightning_optim.names import named_parameters
from lightning_optim.optim.registry import OptimizerSpec
from lightning_optim.schedule.build import BuiltScheduler, build_scheduler
from lightning_optim.schedule.closed_form import Schedule
from lightning_optim.schedule.lr_schedulers import ClosedFormLR

__all__ = [
    "PREVIEW_POINTS",
    "PREVIEW_STEP_LIMIT",
    "LearningRatePreview",
    "preview_learning_rates",
    "sample_learning_rates",
]

PREVIEW_POINTS = 1000
"""Evenly spaced steps :func:`sample_learning_rates` evaluates, beside those it must show exactly."""

PREVIEW_STEP_LIMIT = 1_000_000
"""The longest run a stateful scheduler (cyclic, onecycle, plateau, a ``_target_``) is stepped through to preview."""


@dataclass(frozen=True)
class LearningRatePreview:
    """Every parameter group's lr at some optimizer steps of a run of ``total_steps`` steps.

    Attributes:
        total_steps: the run's length: steps ``0 .. total_steps - 1``.
        steps: the steps evaluated, increasing; always the first and the last one, and each group's peak.
        lrs: each group's lr at each of ``steps``.
    """

    total_steps: int
    steps: list[int]
    lrs: dict[str, list[float]]


def preview_learning_rates(
    module: torch.nn.Module,
    optim_config: Mapping[str, Any] | OptimSpec | OptimizerSetSpec,
    total_steps: int,
    optimizer: str | None = None,
    batch_size: int | None = None,
) -> dict[str, list[float]]:
    """The lr of every parameter group for each step ``0 .. total_steps - 1``, without training.

    Holds a value per step; :func:`sample_learning_rates` previews a long run at a bounded cost. A plateau
    schedule has no metric here, so it shows its warmup and then a constant lr. With several optimizers
    (``optim_config.optimizers``) ``optimizer`` names the one to preview. ``batch_size`` is the effective batch size
    assumed for ``optimizer.lr_scaling`` (without it, a warning says the lrs shown are those at ``base_batch_size``).

    Examples:
        >>> lrs = preview_learning_rates(torch.nn.Linear(2, 1), {"optimizer": {"name": "sgd", "lr": 1.0},
        ...     "scheduler": {"name": "warmup_cosine", "warmup_steps": 2}}, 4)
        >>> [round(lr, 3) for lr in lrs["default"]]
        [0.0, 0.5, 1.0, 0.5]
    """
    stand_in, built = _preview_scheduler(module, optim_config, total_steps, optimizer, batch_size)
    names = _group_names(stand_in)
    lrs: dict[str, list[float]] = {name: [] for name in names}
    for group_lrs in _stepped_learning_rates(stand_in, built, total_steps):
        for name, lr in zip(names, group_lrs, strict=True):
            lrs[name].append(lr)
    return lrs


def sample_learning_rates(
    module: torch.nn.Module,
    optim_config: Mapping[str, Any] | OptimSpec | OptimizerSetSpec,
    total_steps: int,
    include: Iterable[int] = (),
    points: int = PREVIEW_POINTS,
    optimizer: str | None = None,
    batch_size: int | None = None,
) -> LearningRatePreview:
    """Every group's lr at ``points`` evenly spaced steps of a run, plus the steps it must show exactly.

    Those are ``include``, the first and the last step and each group's peak; for a closed-form schedule also
    every boundary (:meth:`~lightning_optim.schedule.closed_form.Schedule.boundaries`: warmup end, milestones, ...)
    and the step before it. A closed-form schedule (or a constant lr) is evaluated at these steps only, so a run of 10⁹
    steps costs what one of a thousand does. A stateful scheduler (``cyclic``, ``onecycle``, ``plateau``, a
    ``_target_``) is stepped through the whole run, up to :data:`PREVIEW_STEP_LIMIT` steps. With several optimizers
    (``optim_config.optimizers``) ``optimizer`` names the one to preview. ``batch_size``: as in
    :func:`preview_learning_rates`.

    Raises:
        OptimConfigError: a stateful scheduler over more than :data:`PREVIEW_STEP_LIMIT` steps; several optimizers
            and ``optimizer`` not one of their names.

    Examples:
        >>> preview = sample_learning_rates(torch.nn.Linear(2, 1), {"optimizer": {"name": "sgd", "lr": 1.0},
        ...     "scheduler": {"name": "warmup_cosine", "warmup_steps": 1000}}, 10**9, points=3)
        >>> preview.steps
        [0, 999, 1000, 500000000, 999999999]
        >>> [round(lr, 3) for lr in preview.lrs["default"]]
        [0.0, 0.999, 1.0, 0.5, 0.0]
    """
    stand_in, built = _preview_scheduler(module, optim_config, total_steps, optimizer, batch_size)
    names = _group_names(stand_in)
    wanted = {round(index * (total_steps - 1) / max(points - 1, 1)) for index in range(points)}
    wanted |= {step for step in include if 0 <= step < total_steps} | {0, total_steps - 1}
    if built is None or isinstance(built.scheduler, ClosedFormLR):
        return _closed_form_preview(stand_in, names, built, total_steps, wanted)
    if total_steps > PREVIEW_STEP_LIMIT:
        name = built.scheduler.__class__.__name__
        raise OptimConfigError(
            f"Cannot preview {total_steps} steps of the scheduler {name}: a stateful scheduler is stepped through "
            f"every step, and a preview stops at PREVIEW_STEP_LIMIT = {PREVIEW_STEP_LIMIT} steps. Preview a run of "
            f"at most {PREVIEW_STEP_LIMIT} steps (e.g. trainer.max_steps={PREVIEW_STEP_LIMIT}), or use a closed-form "
            "schedule (warmup_cosine, step, ...), which previews any length."
        )
    return _stepped_preview(stand_in, names, built, total_steps, wanted)


def _preview_scheduler(
    module: torch.nn.Module,
    optim_config: Mapping[str, Any] | OptimSpec | OptimizerSetSpec,
    total_steps: int,
    optimizer: str | None,
    batch_size: int | None,
) -> tuple[torch.optim.Optimizer, BuiltScheduler | None]:
    if isinstance(optim_config, (OptimSpec, OptimizerSetSpec)):
        spec = optim_config
    else:
        spec = resolve_optim_config(optim_config)
    named = None
    if isinstance(spec, OptimSpec) and optimizer is not None:
        raise OptimConfigError(
            f"optimizer={optimizer!r} names one of several optimizers, but optim_config has one (no 'optimizers' "
            "section): leave optimizer unset."
        )
    if isinstance(spec, OptimizerSetSpec):
        names = [member.name for member in spec.members]
        if optimizer not in names:
            raise OptimConfigError(
                f"optim_config has several optimizers ({', '.join(names)}): preview one at a time, naming it "
                f"(optimizer={names[0]!r}); got optimizer={optimizer!r}."
            )
        index = names.index(optimizer)
        named = select_parameters(named_parameters(module), spec.members)[index]
        spec = spec.members[index].spec
    factor = _lr_scaling_factor(spec.optimizer, batch_size)
    # Torch's schedulers need an optimizer; only the groups' names and lrs matter, so a plain SGD over stand-ins.
    groups = [
        {"params": [torch.zeros(1)], "name": name, "lr": lr * factor}
        for name, lr in _group_lrs(module, spec.optimizer, named)
    ]
    stand_in = torch.optim.SGD(groups)
    built = build_scheduler(stand_in, spec.scheduler, total_steps) if spec.scheduler is not None else None
    return stand_in, built


def _lr_scaling_factor(spec: OptimizerSpec, batch_size: int | None) -> float:
    """``optimizer.lr_scaling``'s factor at the assumed effective batch size; 1 (and a warning) without one."""
    if spec.lr_scaling is None:
        return 1.0
    if batch_size is None:
        warnings.warn(
            f"optim_config.optimizer.lr_scaling: the preview cannot know the effective batch size of the run (the "
            f"train loader's batch size x world size x accumulation), so it shows the lrs at base_batch_size "
            f"{spec.lr_scaling.base_batch_size}; give an assumed one as batch_size=.",
            UserWarning,
            stacklevel=4,
        )
        return 1.0
    return spec.lr_scaling.factor(batch_size)


def _group_lrs(
    module: torch.nn.Module, spec: OptimizerSpec, named: list[tuple[str, torch.nn.Parameter]] | None
) -> list[tuple[str, float]]:
    """Each parameter group's name and lr, as the optimizer ``spec`` describes would have them."""
    return [(group["name"], float(group.get("lr", spec.lr))) for group in spec.groups(module, named)]


def _group_names(optimizer: torch.optim.Optimizer) -> list[str]:
    return [group.get("name", f"pg{index + 1}") for index, group in enumerate(optimizer.param_groups)]


def _closed_form_preview(
    optimizer: torch.optim.Optimizer,
    names: list[str],
    built: BuiltScheduler | None,
    total_steps: int,
    wanted: set[int],
) -> LearningRatePreview:
    if built is None:
        schedule, frequency, base_lrs = Schedule(), 1, [group["lr"] for group in optimizer.param_groups]
    else:
        scheduler = built.scheduler
        assert isinstance(scheduler, ClosedFormLR)  # the caller sends only closed-form schedules here
        schedule, frequency, base_lrs = scheduler.schedule, built.frequency, scheduler.base_lrs
    # The lr changes every `frequency` steps, to the schedule's value there: a piece of the schedule first shows at
    # the first multiple of `frequency` from its boundary on, and last at the last multiple before the next one.
    boundaries = schedule.boundaries(total_steps)
    firsts = {-(-boundary // frequency) * frequency for boundary in boundaries}
    lasts = {step - step % frequency for step in {*(boundary - 1 for boundary in boundaries), total_steps - 1}}
    steps = sorted(wanted | {step for step in firsts | lasts if 0 <= step < total_steps})
    factors = [schedule(step - step % frequency) for step in steps]
    return LearningRatePreview(
        total_steps,
        steps,
        {name: [base * factor for factor in factors] for name, base in zip(names, base_lrs, strict=True)},
    )


def _stepped_preview(
    optimizer: torch.optim.Optimizer, names: list[str], built: BuiltScheduler, total_steps: int, wanted: set[int]
) -> LearningRatePreview:
    kept: dict[int, list[float]] = {}
    peaks: dict[int, tuple[float, int, list[float]]] = {}
    for step, group_lrs in enumerate(_stepped_learning_rates(optimizer, built, total_steps)):
        if step in wanted:
            kept[step] = group_lrs
        for index, lr in enumerate(group_lrs):
            if index not in peaks or lr > peaks[index][0]:
                peaks[index] = (lr, step, group_lrs)
    kept.update({step: group_lrs for _, step, group_lrs in peaks.values()})
    steps = sorted(kept)
    return LearningRatePreview(
        total_steps, steps, {name: [kept[step][index] for step in steps] for index, name in enumerate(names)}
    )


def _stepped_learning_rates(
    optimizer: torch.optim.Optimizer, built: BuiltScheduler | None, total_steps: int
) -> Iterator[list[float]]:
    """Every group's lr at each step, stepping the scheduler as training would."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*before.*optimizer.step", category=UserWarning)
        for step in range(total_steps):
            yield [float(group["lr"]) for group in optimizer.param_groups]
            if built is not None and (step + 1) % built.frequency == 0:
                built.advance()
