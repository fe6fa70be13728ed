"""The ``scheduler`` section of ``optim_config``: the names it takes, the keys each one takes, and their checks.

Closed-form schedules (:mod:`lightning_optim.schedules`) run through :class:`~lightning_optim.lr_schedulers.ScheduleLR`;
``plateau`` through :class:`~lightning_optim.lr_schedulers.PlateauLR`; ``cyclic`` and ``onecycle`` are torch's own
classes, which also cycle momentum.

Example:
    >>> check_scheduler_config({"name": "warmup_cosine", "warmup_steps": 2e1})
    {'name': 'warmup_cosine', 'warmup_steps': 20}
    >>> closed_form_schedule({"name": "step", "step_size": 2}, total_steps=10)
    StepDecay(warmup_steps=0, step_size=2, gamma=0.1)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch.optim.lr_scheduler import CyclicLR, LRScheduler, OneCycleLR, ReduceLROnPlateau

from lightning_optim.errors import OptimConfigError, config_error
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
from lightning_optim.targets import import_class
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
