"""Lightning's lr finder on the mixin: ``model.lr`` is ``optim_config["optimizer"]["lr"]``.

``Tuner(trainer).lr_find(model)`` and the ``LearningRateFinder`` callback look for an ``lr`` attribute on the model and
assign their suggestion to it. :class:`~lightning_optim.OptimMixin` answers with a property backed by these
functions: reading gives the optimizer's lr, assigning re-validates the whole ``optim_config`` with the new lr (the
hyperparameters follow), and when the optimizer of a running fit exists already (the callback runs in
``on_fit_start``) its schedule restarts from the new base lr at the step it is at, warmup included.

Examples:
    >>> config = {"optimizer": {"name": "adamw", "lr": 1e-3}, "param_groups": [], "scheduler": None}
    >>> config_with_lr(config, 0.02)["optimizer"]
    {'name': 'adamw', 'lr': 0.02}
"""

from __future__ import annotations

import copy
import inspect
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
from torch.optim.lr_scheduler import CyclicLR, LRScheduler, OneCycleLR

from lightning_optim.errors import OptimConfigError, config_error
from lightning_optim.internals import attached_trainer
from lightning_optim.schedule.lr_schedulers import ClosedFormLR, PlateauLR
from lightning_optim.schedule.registry import TorchScheduler

if TYPE_CHECKING:
    from lightning_optim.config.validation import OptimizerSetSpec, OptimSpec
    from lightning_optim.fit.mixin import OptimMixin

__all__ = [
    "config_with_lr",
    "configured_lr",
    "move_base_lrs",
    "restore_moved_lrs",
    "set_lr",
    "warn_on_lr_before_config",
]

LR_BEFORE_CONFIG = "_lr_before_config"
"""Where a model's own ``self.lr = ...``, assigned before ``optim_config`` exists, waits for it."""

MOVED_LRS = "_lrs_after_lr_change"
"""The optimizer whose base lrs ``model.lr = ...`` moved during a fit, and the lr each of its groups must have."""


def configured_lr(model: OptimMixin) -> float:
    """The lr of the optimizer ``optim_config`` describes: its ``lr``, or the optimizer class's default.

    Before ``optim_config`` is set, a value the model assigned to ``self.lr`` itself.

    Raises:
        AttributeError: neither is set (``hasattr(model, "lr")`` is then False).
        OptimConfigError: ``optim_config`` has several optimizers, so there is no single lr.
    """
    if "_optim_spec" not in model.__dict__ and LR_BEFORE_CONFIG in model.__dict__:
        return model.__dict__[LR_BEFORE_CONFIG]
    spec = model._spec()
    section = _single_optimizer(spec.config)  # refuses several optimizers: spec is an OptimSpec from here on
    return section["lr"] if "lr" in section else _default_lr(cast("OptimSpec", spec).optimizer.info.cls)


def set_lr(model: OptimMixin, lr: float) -> None:
    """Assign ``optim_config`` again with the optimizer's lr set to ``lr`` (checked like any ``optim_config``).

    During a fit whose optimizer is built, each parameter group's base lr moves to what the new config gives it
    (a rule's own ``lr`` stays, ``lr_scale`` scales the new lr) and the schedule goes on from there at its current step
    (:func:`move_base_lrs`). Before ``optim_config`` exists the value waits for it
    (:func:`warn_on_lr_before_config`).

    Raises:
        OptimConfigError: a bad lr, several optimizers, or a scheduler that sets the lr from its own arguments.
    """
    if "_optim_spec" not in model.__dict__:
        model.__dict__[LR_BEFORE_CONFIG] = lr
        return
    old_lr = configured_lr(model)
    # configured_lr refused several optimizers: the spec is an OptimSpec.
    model.optim_config = config_with_lr(model.optim_config, lr, cast("OptimSpec", model._spec()))
    trainer = attached_trainer(model)
    if trainer is None or trainer.state.fn != "fit" or len(trainer.optimizers) != 1:
        return
    optimizer = trainer.optimizers[0]
    scheduler = next((c.scheduler for c in trainer.lr_scheduler_configs if c.scheduler.optimizer is optimizer), None)
    new_lrs = _group_lrs(model, cast("OptimSpec", model._spec()))
    ratio = lr / old_lr if old_lr else 1.0
    model.__dict__[MOVED_LRS] = (optimizer, move_base_lrs(optimizer, scheduler, new_lrs, ratio))


def config_with_lr(config: Mapping[str, Any], lr: float, spec: OptimSpec | None = None) -> dict[str, Any]:
    """A copy of the plain ``config`` with the optimizer's ``lr`` set to ``lr``.

    Raises:
        OptimConfigError: ``config`` has several optimizers, or ``spec``'s scheduler (cyclic, onecycle) sets the lr
            from its own arguments, so the optimizer's lr would not be used.
    """
    if spec is not None and _sets_lr_itself(spec):
        scheduler = spec.config["scheduler"]
        own = " and ".join(f"scheduler.{key}" for key in ("base_lr", "max_lr") if key in scheduler) or "its arguments"
        raise OptimConfigError(
            f"optim_config.optimizer.lr = {lr!r} would not be used: scheduler "
            f"{scheduler.get('name') or scheduler.get('_target_')!r} sets every group's lr from {own}. Set those in "
            "optim_config instead (with Lightning's lr finder: update_attr=False, then choose them from its "
            "suggestion)."
        )
    changed = copy.deepcopy(dict(config))
    _single_optimizer(changed)["lr"] = lr
    return changed


def move_base_lrs(
    optimizer: torch.optim.Optimizer, scheduler: LRScheduler | None, new_lrs: Mapping[str, float], ratio: float
) -> list[float]:
    """Give each group of a built ``optimizer`` its new base lr and keep the schedule's place; return the groups' lrs.

    ``new_lrs`` holds the base lr by group name; a group the config does not name (one a finetuning callback added)
    gets its base lr times ``ratio``. With a closed-form schedule (or a plateau still in warmup) the lrs are the
    schedule's values at its current step for the new base lrs, exactly as a run built with the new config has them;
    otherwise each group keeps its current share of its base lr (a plateau's reductions, a torch scheduler's factor).

    Examples:
        >>> from lightning_optim.schedule.closed_form import Schedule
        >>> optimizer = torch.optim.SGD([{"params": [torch.zeros(1)], "name": "default", "lr": 0.1}])
        >>> scheduler = ClosedFormLR(optimizer, Schedule(warmup_steps=4))
        >>> optimizer.step(); scheduler.step(); optimizer.param_groups[0]["lr"]
        0.025
        >>> move_base_lrs(optimizer, scheduler, {"default": 1.0}, ratio=10.0)
        [0.25]
    """
    groups = optimizer.param_groups
    old_bases = [float(base) for base in scheduler.base_lrs] if scheduler is not None else []
    old_bases += [float(group.get("initial_lr", group["lr"])) for group in groups[len(old_bases) :]]
    new_bases = [
        new_lrs.get(group.get("name", ""), base * ratio) for group, base in zip(groups, old_bases, strict=True)
    ]
    if scheduler is None:
        _write_lrs(groups, new_bases)
        return new_bases
    for group, base in zip(groups, new_bases, strict=True):
        group["initial_lr"] = base
    scheduler.base_lrs = list(new_bases)
    if isinstance(scheduler, ClosedFormLR):
        scheduler.apply_schedule()
    elif isinstance(scheduler, PlateauLR) and scheduler.last_epoch <= scheduler.warmup.warmup_steps:
        _write_lrs(groups, [float(value) for value in scheduler.get_lr()])
    else:
        current = [float(group["lr"]) for group in groups]
        moved = zip(current, old_bases, new_bases, strict=True)
        _write_lrs(groups, [lr * new / old if old else new for lr, old, new in moved])
    return [float(group["lr"]) for group in groups]


def restore_moved_lrs(model: OptimMixin) -> None:
    """Put back the lrs :func:`set_lr` gave the groups, when something overwrote them since (Lightning's lr finder
    sets every group to its suggestion right after assigning ``model.lr``, which would undo warmup and per-group
    lrs for the steps before the schedule's next update)."""
    moved = model.__dict__.pop(MOVED_LRS, None)
    trainer = attached_trainer(model)
    if moved is None or trainer is None or not any(moved[0] is optimizer for optimizer in trainer.optimizers):
        return
    optimizer, values = moved
    _write_lrs(optimizer.param_groups, values)


def warn_on_lr_before_config(model: OptimMixin, spec: OptimSpec | OptimizerSetSpec) -> None:
    """Warn when the model assigned ``self.lr`` before ``optim_config`` with a value the optimizer will not use.

    A model written for Lightning's lr finder often keeps ``self.lr``; with the mixin, ``model.lr`` is the optimizer's
    lr from ``optim_config``, which wins.
    """
    if LR_BEFORE_CONFIG not in model.__dict__:
        return
    before = model.__dict__.pop(LR_BEFORE_CONFIG)
    section = spec.config.get("optimizer")
    if not isinstance(section, dict):  # several optimizers: model.lr does not exist
        return
    if section.get("lr", _default_lr(cast("OptimSpec", spec).optimizer.info.cls)) == before:
        return
    warnings.warn(
        f"{type(model).__name__} set self.lr = {before!r} before self.optim_config; OptimMixin's model.lr is "
        f"optim_config.optimizer.lr = {section.get('lr')!r}, which the optimizer uses (and Lightning's lr finder "
        f"tunes). Set the lr in optim_config instead.",
        UserWarning,
        stacklevel=4,  # this function, the optim_config setter, nn.Module.__setattr__, the model
    )


def _single_optimizer(config: Mapping[str, Any]) -> dict[str, Any]:
    section = config.get("optimizer")
    if isinstance(section, dict):
        return section
    names = sorted(config.get("optimizers") or {})
    raise OptimConfigError(
        f"model.lr is optim_config.optimizer.lr, and this optim_config has several optimizers ({', '.join(names)}), "
        "each with its own lr. Lightning's lr finder (Tuner.lr_find, LearningRateFinder) tunes a single optimizer; "
        "set each lr in optim_config['optimizers'][<name>]['optimizer']['lr']."
    )


def _sets_lr_itself(spec: OptimSpec) -> bool:
    info = spec.scheduler.info if spec.scheduler is not None else None
    return isinstance(info, TorchScheduler) and issubclass(info.scheduler_class, (CyclicLR, OneCycleLR))


def _default_lr(cls: type[torch.optim.Optimizer]) -> float:
    parameter = inspect.signature(cls).parameters.get("lr")
    if parameter is None or parameter.default is inspect.Parameter.empty:
        raise config_error("optimizer.lr", None, f"a learning rate: {cls.__name__} has no default")
    return float(parameter.default)


def _group_lrs(model: OptimMixin, spec: OptimSpec) -> dict[str, float]:
    default = configured_lr(model)
    return {group["name"]: float(group.get("lr", default)) for group in spec.optimizer.groups(model)}


def _write_lrs(groups: Sequence[dict[str, Any]], values: Sequence[float]) -> None:
    for group, value in zip(groups, values, strict=True):
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(value)
        else:
            group["lr"] = value
