"""LightningCLI and the mixin: the optimizer comes from ``optim_config``, never from ``--optimizer``.

Annotate the model's argument ``optim_config: OptimConfig``: jsonargparse then reads the ``optim_config`` of a YAML
file and dotted overrides such as ``--model.optim_config.optimizer.lr 0.01`` into it (an unannotated argument gets
the override alone, as a ``NestedArg``). LightningCLI's own ``--optimizer``/``--lr_scheduler`` arguments
(``auto_configure_optimizers``) replace ``configure_optimizers`` on the model instance; with the mixin that would
train with another optimizer than the ``optim_config`` every checkpoint records, so the mixin refuses it when the
fit starts (:func:`refuse_replaced_configure_optimizers`). ``--lr_scheduler`` without ``--optimizer`` replaces nothing:
LightningCLI drops it without a word, so the fit refuses that too, reading the parsed command line from LightningCLI's
``SaveConfigCallback`` (:func:`refuse_dropped_lr_scheduler`; with ``save_config_callback=None`` there is nothing to
read). ``LightningCLI(..., auto_configure_optimizers=False)``
removes those arguments altogether.

Examples:
    >>> import lightning as L
    >>> from lightning_optim import OptimMixin
    >>> class Model(OptimMixin, L.LightningModule):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.layer = torch.nn.Linear(2, 1)
    ...         self.optim_config = {"optimizer": {"name": "adamw", "lr": 1e-3}}
    >>> model = Model()
    >>> refuse_replaced_configure_optimizers(model, model.optim_config)
    >>> model.configure_optimizers = lambda: torch.optim.SGD(model.parameters(), lr=0.1)
    >>> refuse_replaced_configure_optimizers(model, model.optim_config)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lightning_optim.errors.OptimConfigError: Model.configure_optimizers was replaced on the model instance, e.g. by...
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import torch

from lightning_optim.errors import OptimConfigError

__all__ = ["refuse_dropped_lr_scheduler", "refuse_replaced_configure_optimizers"]


def refuse_replaced_configure_optimizers(model: torch.nn.Module, config: Mapping[str, Any]) -> None:
    """Refuse a ``configure_optimizers`` assigned on the ``model`` instance, over the one building ``config`` (the
    plain ``optim_config``).

    LightningCLI's ``--optimizer``/``--lr_scheduler`` do that: its ``_add_configure_optimizers_method_to_model``
    assigns a bound ``partial(cli.configure_optimizers, optimizer=..., lr_scheduler=...)``, and the run would train
    with that optimizer while ``hparams`` and checkpoints record ``optim_config``.

    Raises:
        OptimConfigError: naming the optimizer (and scheduler) that replaced the mixin's, and ``optim_config``'s.
    """
    replaced = vars(model).get("configure_optimizers")
    if replaced is None:
        return
    keywords: dict[str, Any] = getattr(getattr(replaced, "__func__", None), "keywords", None) or {}
    built = [_describe(keywords[key]) for key in ("optimizer", "lr_scheduler") if keywords.get(key) is not None]
    instead = f" (it builds {' and '.join(built)})" if built else ""
    optimizer = config.get("optimizer") or {}
    configured = optimizer.get("_target_") or optimizer.get("name") or ", ".join(config.get("optimizers") or {})
    raise OptimConfigError(
        f"{type(model).__name__}.configure_optimizers was replaced on the model instance{instead}, e.g. by "
        f"LightningCLI's --optimizer/--lr_scheduler: the run would not use optim_config (optimizer {configured!r}, "
        "what hparams and checkpoints record). Set the optimizer and schedule with --model.optim_config.optimizer.* "
        "and --model.optim_config.scheduler.* instead, and leave out --optimizer/--lr_scheduler (or pass "
        "LightningCLI(..., auto_configure_optimizers=False), which removes them)."
    )


def refuse_dropped_lr_scheduler(trainer: Any, model: torch.nn.Module, config: Mapping[str, Any]) -> None:
    """Refuse LightningCLI's ``--lr_scheduler`` given without ``--optimizer``, which LightningCLI drops silently.

    Its ``_add_configure_optimizers_method_to_model`` returns early when no optimizer was given, so the scheduler
    named on the command line never runs; ``config``'s (the plain ``optim_config``) does. The parsed command line is
    the ``config`` of LightningCLI's ``SaveConfigCallback`` among the ``trainer``'s callbacks.

    Raises:
        OptimConfigError: naming the dropped scheduler and the ``optim_config`` keys to use instead.
    """
    cli = sys.modules.get("lightning.pytorch.cli")  # imported wherever LightningCLI runs
    if cli is None:
        return
    for callback in trainer.callbacks:
        if not isinstance(callback, cli.SaveConfigCallback):
            continue
        parsed = callback.config
        scheduler = parsed.get("lr_scheduler") if hasattr(parsed, "get") else None
        if scheduler is None or parsed.get("optimizer") is not None:
            continue
        name = str(getattr(scheduler, "class_path", scheduler)).rsplit(".", 1)[-1]
        raise OptimConfigError(
            f"LightningCLI's --lr_scheduler {name} without --optimizer: LightningCLI drops it without a word, and "
            f"{type(model).__name__} would train with optim_config's scheduler ({_scheduler_names(config)}). Set the "
            "schedule with --model.optim_config.scheduler.* instead and leave out --lr_scheduler (or pass "
            "LightningCLI(..., auto_configure_optimizers=False), which removes it)."
        )


def _scheduler_names(config: Mapping[str, Any]) -> str:
    schedulers = [config.get("scheduler")] if "optimizers" not in config else []
    schedulers += [section.get("scheduler") for section in (config.get("optimizers") or {}).values()]
    named = [scheduler.get("name") or scheduler.get("_target_") for scheduler in schedulers if scheduler]
    return ", ".join(map(repr, named)) or "none: a constant lr"


def _describe(built: Any) -> str:
    if isinstance(built, torch.optim.Optimizer):
        return f"{type(built).__name__}(lr={built.defaults.get('lr')!r})"
    return type(built).__name__
