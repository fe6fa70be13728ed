"""Build learning-rate schedulers from the ``scheduler`` section of ``optim_config``.

Closed-form schedules (:mod:`lightning_optim.schedules`) run through :class:`ScheduleLR`; ``plateau`` through
:class:`PlateauLR`; ``cyclic`` and ``onecycle`` are torch's own classes, which also cycle momentum.

Example:
    >>> import torch
    >>> optimizer = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=1.0)
    >>> built = build_scheduler(optimizer, {"name": "warmup_cosine", "warmup_steps": 2}, total_steps=6)
    >>> built.lightning_config["interval"], built.frequency
    ('step', 1)
    >>> [round(lr, 2) for lr in preview_learning_rates(torch.nn.Linear(2, 1),
    ...     {"optimizer": {"name": "sgd", "lr": 1.0}, "scheduler": {"name": "step", "step_size": 2}}, 5)["default"]]
    [1.0, 1.0, 0.1, 0.1, 0.01]
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.lr_scheduler import CyclicLR, LRScheduler, OneCycleLR, ReduceLROnPlateau

from lightning_optim.config import to_plain_config
from lightning_optim.errors import OptimConfigError, config_error, did_you_mean
from lightning_optim.optimizers import build_optimizer, import_class
from lightning_optim.schedules import (
    ExponentialDecay,
    InverseSqrt,
    MultiStepDecay,
    Polynomial,
    Schedule,
    Sequential,
    StepDecay,
    WarmupCosine,
)
from lightning_optim.value_types import Expected, conform_section, constructor_types, dataclass_types, expected

_LIGHTNING_TYPES = {
    "interval": expected(str, "step"),
    "frequency": expected(int, 1),
    "log_name": expected(str | None),
    "monitor": expected(str | None),
    "strict": expected(bool, True),
}
LIGHTNING_KEYS = tuple(_LIGHTNING_TYPES)
"""Keys for Lightning's scheduler config, beside the schedule's own. ``name`` picks the schedule, so Lightning's
``name`` (the prefix its LR logging uses instead of ``lr-<Optimizer>``) is spelt ``log_name`` here."""

CLOSED_FORM: dict[str, tuple[type[Schedule], dict[str, Any]]] = {
    "warmup_cosine": (WarmupCosine, {}),
    "cosine": (WarmupCosine, {}),
    "warmup_linear": (Polynomial, {"power": 1.0}),
    "polynomial": (Polynomial, {}),
    "warmup_constant": (Schedule, {}),
    "inverse_sqrt": (InverseSqrt, {}),
    "step": (StepDecay, {}),
    "multistep": (MultiStepDecay, {}),
    "exponential": (ExponentialDecay, {}),
}
"""Schedules computed from the step alone: their class and the fixed arguments a name implies."""

TORCH_SCHEDULERS: dict[str, type[LRScheduler]] = {"cyclic": CyclicLR, "onecycle": OneCycleLR}
SCHEDULER_NAMES = (*CLOSED_FORM, *TORCH_SCHEDULERS, "plateau", "sequential")
_PLATEAU_OPTIONS = ("mode", "factor", "patience", "threshold", "threshold_mode", "cooldown", "min_lr", "eps")


class ScheduleLR(LRScheduler):
    """Set every parameter group's lr to its own base lr times ``schedule(step)``.

    Like ``LambdaLR`` with one picklable schedule, plus: a parameter group added during training (e.g. by
    Lightning's ``BaseFinetuning.unfreeze_and_add_param_group``) joins the schedule. Its base lr is its
    ``initial_lr`` if given, else the lr it was added with divided by the current factor, so its lr goes on
    from where it was added and keeps its ratio to the other groups. The schedule itself is not saved in
    ``state_dict``: it is rebuilt from the config, and the checkpoint keeps only plain numbers.

    Example:
        >>> optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.5)
        >>> scheduler = ScheduleLR(optimizer, Schedule(warmup_steps=2))
        >>> scheduler.get_last_lr()
        [0.0]
        >>> optimizer.step(); scheduler.step(); scheduler.get_last_lr()
        [0.25]
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Schedule, last_epoch: int = -1) -> None:
        self.schedule = schedule
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
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

    def state_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key not in ("optimizer", "schedule")}

    def apply_schedule(self) -> None:
        """Set every group's lr to the schedule's value at the current step.

        A resumed run restores each group's lr from the checkpoint, made with the schedule the run began with;
        when the resumed config changed the schedule (e.g. an explicit longer ``total_steps``), this makes its
        first step follow the new one too.
        """
        values = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, values, strict=True):
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        self._last_lr = values


class PlateauLR(LRScheduler):
    """Linear warmup per step, then torch's ``ReduceLROnPlateau`` fed by :meth:`step_on_metric`.

    :meth:`step` advances the warmup only; the caller calls :meth:`step_on_metric` once after each validation
    run that produced ``monitor``, so the plateau never acts on a stale value. Metrics seen during warmup are
    ignored.

    Example:
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

    def get_lr(self) -> list[float]:
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

    def state_dict(self) -> dict[str, Any]:
        state = {key: value for key, value in self.__dict__.items() if key not in ("optimizer", "warmup", "plateau")}
        return {**state, "plateau": self.plateau.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        self.plateau.load_state_dict(state.pop("plateau"))
        self.__dict__.update(state)


@dataclass
class BuiltScheduler:
    """A scheduler with the config Lightning gets and the step ``frequency`` counted in optimizer steps."""

    scheduler: LRScheduler
    lightning_config: dict[str, Any]
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


def _schedule_types(name: str) -> dict[str, Expected]:
    cls, fixed = CLOSED_FORM[name]
    types = {key: wanted for key, wanted in dataclass_types(cls).items() if key not in fixed}
    if "total_steps" in types:
        # null: the run's length, from the trainer.
        types["total_steps"] = expected(types["total_steps"].hint | None)
        types["warmup_ratio"] = expected(float, 0.1)
    return types


def _schedule_keys(name: str) -> set[str]:
    return set(_schedule_types(name))


def _signature_types(cls: type) -> dict[str, Expected]:
    types = constructor_types(cls)
    return {key: wanted for key, wanted in types.items() if key not in ("last_epoch", "verbose")}


def target_scheduler_class(path: str, where: str = "scheduler") -> type[LRScheduler]:
    """The ``LRScheduler`` subclass a ``_target_`` names, refused unless it is one (nothing is called).

    Example:
        >>> target_scheduler_class("torch.optim.lr_scheduler.StepLR").__name__
        'StepLR'
    """
    cls = import_class(path, LRScheduler, f"{where}._target_", "torch.optim.lr_scheduler.StepLR")
    if issubclass(cls, ReduceLROnPlateau):
        raise config_error(f"{where}._target_", path, "name: plateau, which steps after validation")
    return cls


def scheduler_key_types(spec: Mapping[str, Any], where: str = "scheduler") -> dict[str, Expected]:
    """The keys a scheduler section may hold (its own and Lightning's), each with the type it takes.

    Example:
        >>> scheduler_key_types({"name": "step"})["step_size"].hint
        <class 'int'>
    """
    if "_target_" in spec:
        cls = target_scheduler_class(spec["_target_"], where)
        return {**_signature_types(cls), "_target_": expected(str), **_LIGHTNING_TYPES}
    name = spec.get("name")
    if name in CLOSED_FORM:
        types = _schedule_types(name)
    elif name in TORCH_SCHEDULERS:
        types = _signature_types(TORCH_SCHEDULERS[name])
    elif name == "plateau":
        plateau = _signature_types(ReduceLROnPlateau)
        types = {"warmup_steps": dataclass_types(Schedule)["warmup_steps"]}
        types |= {key: plateau[key] for key in _PLATEAU_OPTIONS}
    elif name == "sequential":
        # Each child is checked as a schedule of its own.
        types = {"schedulers": expected(), "milestones": dataclass_types(Sequential)["milestones"]}
    else:
        raise config_error(f"{where}.name", name, "one of: " + ", ".join(SCHEDULER_NAMES), SCHEDULER_NAMES)
    return {**types, "name": expected(str), **_LIGHTNING_TYPES}


def check_scheduler_config(spec: Mapping[str, Any], where: str = "scheduler") -> dict[str, Any]:
    """Refuse unknown names and keys, values of the wrong type and bad Lightning keys, before any trainer exists.

    Returns:
        ``spec`` with its values as the schedule takes them (an integral float for an integer key as an int).

    Example:
        >>> check_scheduler_config({"name": "step", "step_size": 1e3})
        {'name': 'step', 'step_size': 1000}
        >>> check_scheduler_config({"name": "plateau"})
        Traceback (most recent call last):
        ...
        lightning_optim.errors.OptimConfigError: optim_config.scheduler.monitor = None is not valid. Expected \
the name of a logged validation metric, e.g. 'val/loss'.
    """
    spec = _checked_keys(spec, scheduler_key_types(spec, where), where)
    interval = spec.get("interval", "step")
    if interval not in ("step", "epoch"):
        raise config_error(f"{where}.interval", interval, "'step' (optimizer steps) or 'epoch'", ["step", "epoch"])
    frequency = spec.get("frequency", 1)
    if frequency < 1:
        raise config_error(f"{where}.frequency", frequency, "an integer >= 1")
    if spec.get("name") == "plateau" and not spec.get("monitor"):
        raise config_error(
            f"{where}.monitor", spec.get("monitor"), "the name of a logged validation metric, e.g. 'val/loss'"
        )
    if spec.get("name") == "sequential":
        spec["schedulers"] = _check_sequential(spec, where)
    if spec.get("name") in CLOSED_FORM:
        _closed_form_schedule(spec, where, total_steps=None)
    return spec


def _checked_keys(spec: Mapping[str, Any], types: Mapping[str, Expected], where: str) -> dict[str, Any]:
    """``spec`` conformed to ``types``, after refusing a key it does not know and a bad warmup_ratio."""
    for key, value in spec.items():
        if key not in types:
            raise config_error(
                f"{where}.{key}", value, "one of the keys: " + ", ".join(sorted(types)), types, unknown_key=True
            )
    spec = conform_section(spec, types, where)
    if "warmup_ratio" in spec:
        if "warmup_steps" in spec:
            raise config_error(
                f"{where}.warmup_ratio", spec["warmup_ratio"], "either warmup_steps or warmup_ratio, not both"
            )
        if not 0 <= spec["warmup_ratio"] <= 1:
            raise config_error(
                f"{where}.warmup_ratio", spec["warmup_ratio"], "a fraction of the run from 0 to 1, e.g. 0.1"
            )
    return spec


def _check_sequential(spec: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    children = spec.get("schedulers")
    if not isinstance(children, list) or len(children) < 2:
        raise config_error(f"{where}.schedulers", children, "a list of two or more schedules, e.g. cosine then step")
    checked = []
    for index, child in enumerate(children):
        child_where = f"{where}.schedulers[{index}]"
        if not isinstance(child, dict) or child.get("name") not in CLOSED_FORM:
            raise config_error(
                f"{child_where}.name",
                None if not isinstance(child, dict) else child.get("name"),
                "one of the closed-form schedules: " + ", ".join(CLOSED_FORM),
                CLOSED_FORM,
            )
        checked.append(_checked_keys(child, {**_schedule_types(child["name"]), "name": expected(str)}, child_where))
    return checked


def _closed_form_schedule(spec: Mapping[str, Any], where: str, total_steps: int | None) -> Schedule:
    cls, fixed = CLOSED_FORM[spec["name"]]
    keys = _schedule_keys(spec["name"])
    arguments = {key: value for key, value in spec.items() if key in keys and key != "warmup_ratio"}
    if "total_steps" in keys:
        given = arguments.get("total_steps")
        run_steps = given if given is not None else total_steps
        # Before a trainer exists, check everything else against a run long enough for any warmup.
        arguments["total_steps"] = run_steps if run_steps is not None else max(arguments.get("warmup_steps", 0), 1)
        if "warmup_ratio" in spec:
            arguments["warmup_steps"] = round(spec["warmup_ratio"] * arguments["total_steps"])
    try:
        return cls(**fixed, **arguments)
    except (ValueError, TypeError) as error:
        raise OptimConfigError(f"optim_config.{where}: {error}") from None


def _sequential_schedule(spec: Mapping[str, Any], where: str, total_steps: int) -> Schedule:
    milestones = list(spec.get("milestones") or [])
    starts = [0, *milestones]
    phases = []
    for index, child in enumerate(spec["schedulers"]):
        phase_length = (starts[index + 1] if index < len(milestones) else total_steps) - starts[index]
        phases.append(_closed_form_schedule(child, f"{where}.schedulers[{index}]", max(phase_length, 1)))
    try:
        return Sequential(schedules=tuple(phases), milestones=tuple(milestones))
    except ValueError as error:
        raise OptimConfigError(f"optim_config.{where}: {error}") from None


def _torch_scheduler(
    optimizer: torch.optim.Optimizer, cls: type[LRScheduler], options: dict[str, Any], where: str
) -> LRScheduler:
    try:
        return cls(optimizer, **options)
    except (ValueError, TypeError) as error:
        raise OptimConfigError(f"optim_config.{where}: {cls.__name__} refused {options}: {error}") from None


def closed_form_schedule(spec: Mapping[str, Any], total_steps: int, where: str = "scheduler") -> Schedule:
    """The pure schedule a closed-form or ``sequential`` scheduler section describes, over a run of ``total_steps``.

    Example:
        >>> closed_form_schedule({"name": "warmup_cosine", "warmup_ratio": 0.25}, 8)
        WarmupCosine(warmup_steps=2, total_steps=8, min_lr_ratio=0.0)
    """
    if spec.get("name") == "sequential":
        return _sequential_schedule(spec, where, total_steps)
    return _closed_form_schedule(spec, where, total_steps)


def needs_run_length(spec: Mapping[str, Any]) -> bool:
    """Whether the scheduler needs the run's length (``total_steps: null``, ``warmup_ratio``, ``sequential``).

    Example:
        >>> needs_run_length({"name": "warmup_cosine", "total_steps": None}), needs_run_length({"name": "step"})
        (True, False)
    """
    name = spec.get("name")
    if name == "sequential":
        # The phases before the last one end at a milestone; only the last one can run to the end of the run.
        children = spec.get("schedulers")
        last = children[-1] if isinstance(children, list) and children else None
        return isinstance(last, Mapping) and needs_run_length(last)
    if name == "onecycle":
        return spec.get("total_steps") is None
    return name in CLOSED_FORM and "total_steps" in _schedule_keys(name) and spec.get("total_steps") is None


def build_scheduler(
    optimizer: torch.optim.Optimizer, spec: Mapping[str, Any], total_steps: int | None, where: str = "scheduler"
) -> BuiltScheduler:
    """Build the scheduler for ``optimizer``; ``total_steps`` is the run's length in units of ``interval``.

    ``total_steps`` is None when the run's length is unknown (a trainer without ``max_steps``/``max_epochs``).

    ``total_steps: null`` in the config (and ``warmup_ratio``) resolve against ``total_steps``.

    Raises:
        OptimConfigError: a bad value, or a warmup longer than the run.
    """
    spec = check_scheduler_config(spec, where)
    if total_steps is None:
        if needs_run_length(spec):
            raise config_error(
                f"{where}.total_steps",
                None,
                "a number of steps: the trainer has no max_steps or max_epochs to derive it",
            )
        total_steps = sys.maxsize
    interval = spec.get("interval", "step")
    name = spec.get("name")
    own = {key: value for key, value in spec.items() if key not in (*LIGHTNING_KEYS, "name", "_target_")}
    warmup_steps = own.get("warmup_steps")
    if isinstance(warmup_steps, int) and warmup_steps > total_steps:
        raise config_error(
            f"{where}.warmup_steps",
            warmup_steps,
            f"at most the run's {total_steps} {interval}s (warmup longer than the run)",
        )
    if "_target_" in spec:
        scheduler = _torch_scheduler(optimizer, target_scheduler_class(spec["_target_"], where), own, where)
    elif name in CLOSED_FORM or name == "sequential":
        scheduler = ScheduleLR(optimizer, closed_form_schedule(spec, total_steps, where))
    elif name == "onecycle":
        scheduler = _torch_scheduler(
            optimizer, OneCycleLR, {**own, "total_steps": own.get("total_steps") or total_steps}, where
        )
    elif name == "cyclic":
        scheduler = _torch_scheduler(optimizer, CyclicLR, own, where)
    else:
        scheduler = PlateauLR(optimizer, monitor=spec["monitor"], **own)
    frequency = spec.get("frequency", 1)
    lightning_config = {
        "scheduler": scheduler,
        "interval": interval,
        "frequency": 1 if interval == "step" else frequency,
    }
    if spec.get("log_name"):
        lightning_config["name"] = spec["log_name"]
    return BuiltScheduler(scheduler, lightning_config, frequency, interval)


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
    module: torch.nn.Module, optim_config: Mapping[str, Any], total_steps: int
) -> dict[str, list[float]]:
    """The lr of every parameter group for each step ``0 .. total_steps - 1``, without training.

    Holds a value per step; :func:`sample_learning_rates` previews a long run at a bounded cost. A plateau
    schedule has no metric here, so it shows its warmup and then a constant lr.

    Example:
        >>> lrs = preview_learning_rates(torch.nn.Linear(2, 1), {"optimizer": {"name": "sgd", "lr": 1.0},
        ...     "scheduler": {"name": "warmup_cosine", "warmup_steps": 2}}, 4)
        >>> [round(lr, 3) for lr in lrs["default"]]
        [0.0, 0.5, 1.0, 0.5]
    """
    optimizer, built = _preview_scheduler(module, optim_config, total_steps)
    names = _group_names(optimizer)
    lrs: dict[str, list[float]] = {name: [] for name in names}
    for group_lrs in _stepped_learning_rates(optimizer, built, total_steps):
        for name, lr in zip(names, group_lrs, strict=True):
            lrs[name].append(lr)
    return lrs


def sample_learning_rates(
    module: torch.nn.Module,
    optim_config: Mapping[str, Any],
    total_steps: int,
    include: Iterable[int] = (),
    points: int = PREVIEW_POINTS,
) -> LearningRatePreview:
    """Every group's lr at ``points`` evenly spaced steps of a run, plus the steps it must show exactly.

    Those are ``include``, the first and the last step and each group's peak; for a closed-form schedule also
    every boundary (:meth:`~lightning_optim.schedules.Schedule.boundaries`: warmup end, milestones, ...) and the
    step before it. A closed-form schedule (or a constant lr) is evaluated at these steps only, so a run of 10⁹
    steps costs what one of a thousand does. A stateful scheduler (``cyclic``, ``onecycle``, ``plateau``, a
    ``_target_``) is stepped through the whole run, up to :data:`PREVIEW_STEP_LIMIT` steps.

    Raises:
        OptimConfigError: a stateful scheduler over more than :data:`PREVIEW_STEP_LIMIT` steps.

    Example:
        >>> preview = sample_learning_rates(torch.nn.Linear(2, 1), {"optimizer": {"name": "sgd", "lr": 1.0},
        ...     "scheduler": {"name": "warmup_cosine", "warmup_steps": 1000}}, 10**9, points=3)
        >>> preview.steps
        [0, 999, 1000, 500000000, 999999999]
        >>> [round(lr, 3) for lr in preview.lrs["default"]]
        [0.0, 0.999, 1.0, 0.5, 0.0]
    """
    optimizer, built = _preview_scheduler(module, optim_config, total_steps)
    names = _group_names(optimizer)
    wanted = {round(index * (total_steps - 1) / max(points - 1, 1)) for index in range(points)}
    wanted |= {step for step in include if 0 <= step < total_steps} | {0, total_steps - 1}
    if built is None or isinstance(built.scheduler, ScheduleLR):
        return _closed_form_preview(optimizer, names, built, total_steps, wanted)
    if total_steps > PREVIEW_STEP_LIMIT:
        name = built.scheduler.__class__.__name__
        raise OptimConfigError(
            f"Cannot preview {total_steps} steps of the scheduler {name}: a stateful scheduler is stepped through "
            f"every step, and a preview stops at PREVIEW_STEP_LIMIT = {PREVIEW_STEP_LIMIT} steps. Preview a run of "
            f"at most {PREVIEW_STEP_LIMIT} steps (e.g. trainer.max_steps={PREVIEW_STEP_LIMIT}), or use a closed-form "
            "schedule (warmup_cosine, step, ...), which previews any length."
        )
    return _stepped_preview(optimizer, names, built, total_steps, wanted)


def _preview_scheduler(
    module: torch.nn.Module, optim_config: Mapping[str, Any], total_steps: int
) -> tuple[torch.optim.Optimizer, BuiltScheduler | None]:
    config = to_plain_config(optim_config)
    optimizer = build_optimizer(module, config["optimizer"], config["param_groups"])
    built = build_scheduler(optimizer, config["scheduler"], total_steps) if config["scheduler"] else None
    return optimizer, built


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
        schedule, frequency, base_lrs = built.scheduler.schedule, built.frequency, built.scheduler.base_lrs
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
    spec: Mapping[str, Any], saved: int, length: int | None, where: str = "optim_config.scheduler"
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
