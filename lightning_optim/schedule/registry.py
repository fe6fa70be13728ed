"""The ``scheduler`` section of ``optim_config``: the names it takes, the keys each one takes, and their checks.

Closed-form schedules (:mod:`lightning_optim.schedule.closed_form`) run through
:class:`~lightning_optim.schedule.lr_schedulers.ClosedFormLR`; ``plateau`` through
:class:`~lightning_optim.schedule.lr_schedulers.PlateauLR`; ``cyclic`` and ``onecycle`` are torch's own classes,
which also cycle momentum.

Examples:
    >>> spec = resolve_scheduler({"name": "step", "step_size": 2e1})
    >>> type(spec.info).__name__, spec.config
    ('ClosedForm', {'name': 'step', 'step_size': 20})
    >>> spec.schedule(total_steps=100)
    StepDecay(warmup_steps=0, step_size=20, gamma=0.1)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch.optim.lr_scheduler import CyclicLR, LRScheduler, OneCycleLR, ReduceLROnPlateau
from typing_extensions import override

from lightning_optim.errors import OptimConfigError, config_error
from lightning_optim.schedule.closed_form import (
    CosineRestarts,
    ExponentialDecay,
    InverseSqrt,
    MultiStepDecay,
    Polynomial,
    Schedule,
    Sequential,
    StepDecay,
    WarmupCosine,
    WarmupStableDecay,
)
from lightning_optim.schedule.lr_schedulers import ClosedFormLR, PlateauLR
from lightning_optim.targets import import_class
from lightning_optim.value_types import Expected, conform_section, constructor_types, dataclass_types, expected

__all__ = [
    "SCHEDULERS",
    "SCHEDULER_NAMES",
    "ClosedForm",
    "OpenEndedClosedForm",
    "Plateau",
    "RunsClosedForm",
    "SchedulerInfo",
    "SchedulerSpec",
    "needs_run_length",
    "own_options",
    "resolve_scheduler",
]

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

_PLATEAU_OPTIONS = ("mode", "factor", "patience", "threshold", "threshold_mode", "cooldown", "min_lr", "eps")


@dataclass(frozen=True)
class SchedulerInfo:
    """One scheduler name of the config: the keys it takes, whether it needs the run's length, how it is built.

    Examples:
        >>> SCHEDULERS["onecycle"].needs_run_length({"name": "onecycle"}), SCHEDULERS["step"].conf_file
        (True, 'scheduler/step.yaml')
    """

    name: str
    sets_own_lr: ClassVar[bool] = False
    """Whether the scheduler sets the lr from its own arguments rather than from the groups' lr."""

    @property
    def conf_file(self) -> str:
        """The scheduler's file in the Hydra config tree (``lightning_optim/conf``)."""
        return f"scheduler/{self.name}.yaml"

    def own_types(self) -> dict[str, Expected]:
        """The scheduler's own keys (beside ``name`` and Lightning's), each with the type it takes."""
        raise NotImplementedError

    def key_types(self) -> dict[str, Expected]:
        """Every key a section of this scheduler may hold, with the type it takes."""
        return {**self.own_types(), "name": expected(str), **_LIGHTNING_TYPES}

    def needs_run_length(self, spec: Mapping[str, Any]) -> bool:
        """Whether the section ``spec`` leaves a length to the run (e.g. ``total_steps: null``)."""
        return False

    def check(self, spec: dict[str, Any], where: str) -> dict[str, Any]:
        """The checks a section of conformed keys still needs; returns it, completed."""
        return spec

    def build(
        self, optimizer: torch.optim.Optimizer, spec: Mapping[str, Any], total_steps: int, where: str
    ) -> LRScheduler:
        """The scheduler for a checked section ``spec`` over a run of ``total_steps``."""
        raise NotImplementedError


@dataclass(frozen=True)
class RunsClosedForm(SchedulerInfo):
    """A scheduler name whose lr is a pure :class:`~lightning_optim.schedule.closed_form.Schedule`, run by
    ``ClosedFormLR``."""

    def schedule(self, spec: Mapping[str, Any], total_steps: int, where: str) -> Schedule:
        """The schedule a checked section ``spec`` gives over a run of ``total_steps``."""
        raise NotImplementedError

    @override
    def build(
        self, optimizer: torch.optim.Optimizer, spec: Mapping[str, Any], total_steps: int, where: str
    ) -> LRScheduler:
        return ClosedFormLR(optimizer, self.schedule(spec, total_steps, where))


@dataclass(frozen=True)
class ClosedForm(RunsClosedForm):
    """A schedule computed from the step alone: its dataclass and the fixed arguments its name implies."""

    schedule_class: type[Schedule] = Schedule
    fixed: Mapping[str, Any] = field(default_factory=dict)

    @override
    def own_types(self) -> dict[str, Expected]:
        types = {key: wanted for key, wanted in dataclass_types(self.schedule_class).items() if key not in self.fixed}
        if "total_steps" in types:
            # null: the run's length, from the trainer.
            types["total_steps"] = expected(types["total_steps"].hint | None)
            types["warmup_ratio"] = expected(float, 0.1)
        return types

    @override
    def needs_run_length(self, spec: Mapping[str, Any]) -> bool:
        return "total_steps" in self.own_types() and spec.get("total_steps") is None

    @override
    def check(self, spec: dict[str, Any], where: str) -> dict[str, Any]:
        self.schedule(spec, None, where)
        return spec

    @override
    def schedule(self, spec: Mapping[str, Any], total_steps: int | None, where: str) -> Schedule:
        """The schedule over a run of ``total_steps``; None checks it against a run long enough for any warmup."""
        keys = set(self.own_types())
        arguments = {key: value for key, value in spec.items() if key in keys and key != "warmup_ratio"}
        if "total_steps" in keys:
            given = arguments.get("total_steps")
            run_steps = given if given is not None else total_steps
            # Before a trainer exists, check everything else against a run long enough for any warmup.
            arguments["total_steps"] = run_steps if run_steps is not None else max(arguments.get("warmup_steps", 0), 1)
            if "warmup_ratio" in spec:
                arguments["warmup_steps"] = round(spec["warmup_ratio"] * arguments["total_steps"])
        try:
            return self.schedule_class(**self.fixed, **arguments)
        except (ValueError, TypeError) as error:
            raise OptimConfigError(f"optim_config.{where}: {error}") from None


@dataclass(frozen=True)
class OpenEndedClosedForm(ClosedForm):
    """A closed-form schedule with no end (``cosine_restarts``): only a ``warmup_ratio`` needs the run's length.

    Examples:
        >>> info = SCHEDULERS["cosine_restarts"]
        >>> info.needs_run_length({"cycle_steps": 10}), info.needs_run_length({"warmup_ratio": 0.1})
        (False, True)
        >>> info.schedule({"cycle_steps": 10, "warmup_ratio": 0.1}, 200, "scheduler").warmup_steps
        20
    """

    @override
    def own_types(self) -> dict[str, Expected]:
        return {**super().own_types(), "warmup_ratio": expected(float, 0.1)}

    @override
    def needs_run_length(self, spec: Mapping[str, Any]) -> bool:
        return "warmup_ratio" in spec

    @override
    def schedule(self, spec: Mapping[str, Any], total_steps: int | None, where: str) -> Schedule:
        if "warmup_ratio" in spec:
            # Before a trainer exists (total_steps None), the rest is checked with no warmup.
            warmup_steps = round(spec["warmup_ratio"] * (total_steps or 0))
            spec = {
                **{key: value for key, value in spec.items() if key != "warmup_ratio"},
                "warmup_steps": warmup_steps,
            }
        return super().schedule(spec, total_steps, where)


@dataclass(frozen=True)
class SequentialSchedules(RunsClosedForm):
    """Closed-form schedules one after another, each starting at a milestone."""

    @override
    def own_types(self) -> dict[str, Expected]:
        # Each child is checked as a schedule of its own.
        return {"schedulers": expected(), "milestones": dataclass_types(Sequential)["milestones"]}

    @override
    def needs_run_length(self, spec: Mapping[str, Any]) -> bool:
        # The phases before the last one end at a milestone; only the last one can run to the end of the run.
        children = spec.get("schedulers")
        last = children[-1] if isinstance(children, list) and children else None
        return isinstance(last, Mapping) and needs_run_length(last)

    @override
    def check(self, spec: dict[str, Any], where: str) -> dict[str, Any]:
        children = spec.get("schedulers")
        if not isinstance(children, list) or len(children) < 2:
            raise config_error(
                f"{where}.schedulers", children, "a list of two or more schedules, e.g. cosine then step"
            )
        checked = []
        for index, child in enumerate(children):
            child_where = f"{where}.schedulers[{index}]"
            name = child.get("name") if isinstance(child, dict) else None
            info = SCHEDULERS.get(name) if isinstance(name, str) else None
            if not isinstance(info, ClosedForm):
                raise config_error(
                    f"{child_where}.name",
                    name,
                    "one of the closed-form schedules: " + ", ".join(CLOSED_FORM_NAMES),
                    CLOSED_FORM_NAMES,
                )
            checked.append(_checked_keys(child, {**info.own_types(), "name": expected(str)}, child_where))
        spec["schedulers"] = checked
        return spec

    @override
    def schedule(self, spec: Mapping[str, Any], total_steps: int, where: str) -> Schedule:
        """The phases over a run of ``total_steps``: the last one runs to the end of the run."""
        milestones = list(spec.get("milestones") or [])
        starts = [0, *milestones]
        phases = []
        for index, child in enumerate(spec["schedulers"]):
            phase_length = (starts[index + 1] if index < len(milestones) else total_steps) - starts[index]
            phase = SCHEDULERS[child["name"]]
            assert isinstance(phase, ClosedForm)  # check() admitted only closed-form children
            phases.append(phase.schedule(child, max(phase_length, 1), f"{where}.schedulers[{index}]"))
        try:
            return Sequential(schedules=tuple(phases), milestones=tuple(milestones))
        except ValueError as error:
            raise OptimConfigError(f"optim_config.{where}: {error}") from None


@dataclass(frozen=True)
class TorchScheduler(SchedulerInfo):
    """One of torch's own schedulers, built with the section's keys; ``run_length_key`` null means the run's length.

    ``per_group`` names keys that take one number or a list of one per parameter group, as torch's constructor reads
    them (``_format_param``), where its annotation says only ``float``.
    """

    scheduler_class: type[LRScheduler] = LRScheduler
    run_length_key: str | None = None
    per_group: tuple[str, ...] = ()
    sets_own_lr: ClassVar[bool] = True

    @override
    def own_types(self) -> dict[str, Expected]:
        types = constructor_types(self.scheduler_class)
        for key in self.per_group:
            types[key] = expected(float | list[float], types[key].example)
        return {key: wanted for key, wanted in types.items() if key not in ("last_epoch", "verbose")}

    @override
    def needs_run_length(self, spec: Mapping[str, Any]) -> bool:
        return self.run_length_key is not None and spec.get(self.run_length_key) is None

    @override
    def build(
        self, optimizer: torch.optim.Optimizer, spec: Mapping[str, Any], total_steps: int, where: str
    ) -> LRScheduler:
        options = own_options(spec)
        if self.run_length_key is not None:
            options[self.run_length_key] = options.get(self.run_length_key) or total_steps
        try:
            return self.scheduler_class(optimizer, **options)
        except (ValueError, TypeError) as error:
            raise OptimConfigError(
                f"optim_config.{where}: {self.scheduler_class.__name__} refused {options}: {error}"
            ) from None


@dataclass(frozen=True)
class TargetScheduler(TorchScheduler):
    """An ``LRScheduler`` subclass named by ``_target_`` (its dotted path is the name)."""

    @override
    def key_types(self) -> dict[str, Expected]:
        return {**self.own_types(), "_target_": expected(str), **_LIGHTNING_TYPES}


@dataclass(frozen=True)
class Plateau(SchedulerInfo):
    """Warmup per step, then torch's ``ReduceLROnPlateau`` stepped after each validation run (:class:`PlateauLR`)."""

    @override
    def own_types(self) -> dict[str, Expected]:
        plateau = TorchScheduler("", ReduceLROnPlateau).own_types()
        return {
            "warmup_steps": dataclass_types(Schedule)["warmup_steps"],
            **{key: plateau[key] for key in _PLATEAU_OPTIONS},
        }

    @override
    def check(self, spec: dict[str, Any], where: str) -> dict[str, Any]:
        if not spec.get("monitor"):
            raise config_error(
                f"{where}.monitor", spec.get("monitor"), "the name of a logged validation metric, e.g. 'val/loss'"
            )
        return spec

    @override
    def build(
        self, optimizer: torch.optim.Optimizer, spec: Mapping[str, Any], total_steps: int, where: str
    ) -> LRScheduler:
        return PlateauLR(optimizer, monitor=spec["monitor"], **own_options(spec))


SCHEDULERS: dict[str, SchedulerInfo] = {
    info.name: info
    for info in (
        ClosedForm("warmup_cosine", WarmupCosine),
        ClosedForm("cosine", WarmupCosine),
        ClosedForm("warmup_linear", Polynomial, {"power": 1.0}),
        ClosedForm("polynomial", Polynomial),
        ClosedForm("warmup_constant", Schedule),
        ClosedForm("inverse_sqrt", InverseSqrt),
        ClosedForm("step", StepDecay),
        ClosedForm("multistep", MultiStepDecay),
        ClosedForm("exponential", ExponentialDecay),
        ClosedForm("wsd", WarmupStableDecay),
        OpenEndedClosedForm("cosine_restarts", CosineRestarts),
        TorchScheduler("cyclic", CyclicLR, per_group=("base_momentum", "max_momentum")),
        TorchScheduler("onecycle", OneCycleLR, run_length_key="total_steps"),
        Plateau("plateau"),
        SequentialSchedules("sequential"),
    )
}
"""Every scheduler name of the config; ``conf/scheduler/<name>.yaml`` holds each one's settings."""

SCHEDULER_NAMES = tuple(SCHEDULERS)
CLOSED_FORM_NAMES = tuple(name for name, info in SCHEDULERS.items() if isinstance(info, ClosedForm))


def own_options(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The scheduler's own arguments in a section: all but ``name``, ``_target_`` and Lightning's keys."""
    return {key: value for key, value in spec.items() if key not in (*LIGHTNING_KEYS, "name", "_target_")}


def target_scheduler_class(path: str, where: str = "scheduler") -> type[LRScheduler]:
    """The ``LRScheduler`` subclass a ``_target_`` names, refused unless it is one (nothing is called).

    Examples:
        >>> target_scheduler_class("torch.optim.lr_scheduler.StepLR").__name__
        'StepLR'
    """
    cls = import_class(path, LRScheduler, f"{where}._target_", "torch.optim.lr_scheduler.StepLR")
    if issubclass(cls, ReduceLROnPlateau):
        raise config_error(f"{where}._target_", path, "name: plateau, which steps after validation")
    return cls


def scheduler_info(spec: Mapping[str, Any], where: str = "scheduler") -> SchedulerInfo:
    """The registered scheduler a section names, or the class its ``_target_`` names.

    Examples:
        >>> scheduler_info({"name": "onecycle"}).scheduler_class.__name__
        'OneCycleLR'
    """
    if "_target_" in spec:
        return TargetScheduler(spec["_target_"], target_scheduler_class(spec["_target_"], where))
    name = spec.get("name")
    if name not in SCHEDULERS:
        raise config_error(f"{where}.name", name, "one of: " + ", ".join(SCHEDULER_NAMES), SCHEDULER_NAMES)
    return SCHEDULERS[name]


@dataclass(frozen=True)
class SchedulerSpec:
    """A checked ``scheduler`` section: what ``build_scheduler`` takes as it is.

    Attributes:
        info: the scheduler's info record (for a ``_target_``, the class it names).
        config: the section as plain containers, its values as the scheduler takes them (what ``hparams`` store).
        where: the section's key in error messages.
    """

    info: SchedulerInfo
    config: dict[str, Any]
    where: str = "scheduler"

    @property
    def needs_run_length(self) -> bool:
        """Whether the section leaves a length to the run (``total_steps: null``, ``warmup_ratio``, ...)."""
        return self.info.needs_run_length(self.config)

    def schedule(self, total_steps: int) -> Schedule:
        """The pure schedule of a closed-form or ``sequential`` section, over a run of ``total_steps``.

        Examples:
            >>> resolve_scheduler({"name": "warmup_cosine", "warmup_ratio": 0.25}).schedule(8)
            WarmupCosine(warmup_steps=2, total_steps=8, min_lr_ratio=0.0)
        """
        if not isinstance(self.info, RunsClosedForm):
            raise TypeError(f"{self.info.name!r} is not a closed-form schedule")
        return self.info.schedule(self.config, total_steps, self.where)


def resolve_scheduler(section: Mapping[str, Any], where: str = "scheduler") -> SchedulerSpec:
    """Refuse unknown names and keys, values of the wrong type and bad Lightning keys, before any trainer exists.

    Returns:
        The checked section, its values as the schedule takes them (an integral float for an integer key as an int).

    Examples:
        >>> resolve_scheduler({"name": "step", "step_size": 1e3}).config
        {'name': 'step', 'step_size': 1000}
        >>> resolve_scheduler({"name": "plateau"})
        Traceback (most recent call last):
        ...
        lightning_optim.errors.OptimConfigError: optim_config.scheduler.monitor = None is not valid. Expected \
the name of a logged validation metric, e.g. 'val/loss'.
    """
    info = scheduler_info(section, where)
    config = _checked_keys(section, info.key_types(), where)
    interval = config.get("interval", "step")
    if interval not in ("step", "epoch"):
        raise config_error(f"{where}.interval", interval, "'step' (optimizer steps) or 'epoch'", ["step", "epoch"])
    frequency = config.get("frequency", 1)
    if frequency < 1:
        raise config_error(f"{where}.frequency", frequency, "an integer >= 1")
    return SchedulerSpec(info, info.check(config, where), where)


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


def needs_run_length(spec: Mapping[str, Any]) -> bool:
    """Whether the scheduler needs the run's length (``total_steps: null``, ``warmup_ratio``, ``sequential``).

    Examples:
        >>> needs_run_length({"name": "warmup_cosine", "total_steps": None}), needs_run_length({"name": "step"})
        (True, False)
    """
    name = spec.get("name")
    info = SCHEDULERS.get(name) if "_target_" not in spec and isinstance(name, str) else None
    return info is not None and info.needs_run_length(spec)
