"""Lightning's lr finder on the mixin: ``model.lr`` is ``optim_config["optimizer"]["lr"]``.

``Tuner(trainer).lr_find(model)`` and the ``LearningRateFinder`` callback look for an ``lr`` attribute on the model and
assign their suggestion to it. :class:`~lightning_optim.OptimMixin` answers with a property backed by these
functions, which take the resolved config: reading gives the optimizer's lr (:func:`configured_lr`), assigning
re-validates the whole ``optim_config`` with the new lr (:func:`config_with_lr`; the hyperparameters follow), and
when the optimizer of a running fit exists already (the callback runs in ``on_fit_start``) its schedule restarts
from the new base lr at the step it is at, warmup included (:func:`moved_lrs`, kept by the fit's driver until
Lightning's finder has overwritten the groups' lrs, then put back: :class:`MovedLrs`).

Examples:
    >>> config = {"optimizer": {"name": "adamw", "lr": 1e-3}, "param_groups": [], "scheduler": None}
    >>> config_with_lr(config, 0.02)["optimizer"]
    {'name': 'adamw', 'lr': 0.02}
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
from torch.optim.lr_scheduler import CyclicLR, LRScheduler, OneCycleLR

from lightning_optim.errors import OptimConfigError
from lightning_optim.schedule.lr_schedulers import ClosedFormLR, PlateauLR, write_lrs
from lightning_optim.schedule.registry import TorchScheduler

if TYPE_CHECKING:
    import lightning as L

    from lightning_optim.config.validation import OptimizerSetSpec, OptimSpec

__all__ = [
    "MovedLrs",
    "config_with_lr",
    "configured_lr",
    "move_base_lrs",
    "moved_lrs",
    "warn_on_lr_before_config",
]


def configured_lr(spec: OptimSpec | OptimizerSetSpec) -> float:
    """The lr of the optimizer the config describes: its ``lr``, or the optimizer class's default.

    Raises:
        OptimConfigError: the config has several optimizers, so there is no single lr.

    Examples:
        >>> from lightning_optim.config.validation import resolve_optim_config
        >>> configured_lr(resolve_optim_config({"optimizer": {"name": "adadelta"}}))
        1.0
    """
    _single_optimizer(spec.config)  # refuses several optimizers: spec is an OptimSpec from here on
    return cast("OptimSpec", spec).optimizer.lr


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


@dataclass
class MovedLrs:
    """The lrs that ``model.lr = x`` gave the groups of a built optimizer during a fit.

    Lightning's lr finder sets every group to its suggestion right after assigning ``model.lr``, which would undo
    warmup and per-group lrs for the steps before the schedule's next update: :meth:`restore` puts them back.

    Examples:
        >>> from types import SimpleNamespace
        >>> optimizer = torch.optim.SGD([torch.zeros(1)], lr=0.3)
        >>> MovedLrs(optimizer, [0.1]).restore(SimpleNamespace(optimizers=[optimizer]))
        >>> optimizer.param_groups[0]["lr"]
        0.1
    """

    optimizer: torch.optim.Optimizer
    lrs: list[float]

    def restore(self, trainer: L.Trainer) -> None:
        """Write the lrs back, if the optimizer is still the trainer's."""
        if any(self.optimizer is optimizer for optimizer in trainer.optimizers):
            write_lrs(self.optimizer.param_groups, self.lrs)


def moved_lrs(
    trainer: L.Trainer | None, spec: OptimSpec, module: torch.nn.Module, old_lr: float, lr: float
) -> MovedLrs | None:
    """Move the base lrs of the fit's optimizer to what ``spec`` (the config with the new ``lr``) gives its groups.

    Each group's base lr becomes the new config's (a rule's own ``lr`` stays, ``lr_scale`` scales the new lr) and the
    schedule goes on from there at its current step (:func:`move_base_lrs`). None outside a fit whose single
    optimizer is built.
    """
    if trainer is None or trainer.state.fn != "fit" or len(trainer.optimizers) != 1:
        return None
    optimizer = trainer.optimizers[0]
    scheduler = next((c.scheduler for c in trainer.lr_scheduler_configs if c.scheduler.optimizer is optimizer), None)
    new_lrs = {group["name"]: float(group.get("lr", spec.optimizer.lr)) for group in spec.optimizer.groups(module)}
    ratio = lr / old_lr if old_lr else 1.0
    return MovedLrs(optimizer, move_base_lrs(optimizer, scheduler, new_lrs, ratio))


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
        write_lrs(groups, new_bases)
        return new_bases
    for group, base in zip(groups, new_bases, strict=True):
        group["initial_lr"] = base
    scheduler.base_lrs = list(new_bases)
    if isinstance(scheduler, ClosedFormLR):
        scheduler.apply_schedule()
    elif isinstance(scheduler, PlateauLR) and scheduler.last_epoch <= scheduler.warmup.warmup_steps:
        write_lrs(groups, [float(value) for value in scheduler.get_lr()])
    else:
        current = [float(group["lr"]) for group in groups]
        moved = zip(current, old_bases, new_bases, strict=True)
        write_lrs(groups, [lr * new / old if old else new for lr, old, new in moved])
    return [float(group["lr"]) for group in groups]


def warn_on_lr_before_config(model: str, before: float, spec: OptimSpec | OptimizerSetSpec) -> None:
    """Warn when the ``model`` class assigned ``self.lr = before`` before ``optim_config`` with a value the optimizer
    will not use.

    A model written for Lightning's lr finder often keeps ``self.lr``; with the mixin, ``model.lr`` is the optimizer's
    lr from ``optim_config``, which wins.
    """
    section = spec.config.get("optimizer")
    if not isinstance(section, dict):  # several optimizers: model.lr does not exist
        return
    if cast("OptimSpec", spec).optimizer.lr == before:
        return
    warnings.warn(
        f"{model} set self.lr = {before!r} before self.optim_config; OptimMixin's model.lr is "
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
