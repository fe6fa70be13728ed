"""``LRMonitor``: Lightning's ``LearningRateMonitor`` for every torch optimizer, one point per logged step.

Examples:
    >>> import lightning as L
    >>> monitor = LRMonitor(log_momentum=True, log_weight_decay=True)
    >>> trainer = L.Trainer(callbacks=[monitor], max_steps=10, logger=False)
    >>> monitor.dashboard_charts()["Learning rate"]
    ['lr-.*(?<!-momentum)(?<!-weight_decay)$']
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_optim.callbacks.collector import MetricCollector, to_device
from lightning_optim.internals import callback_metrics_store, logging_step, should_log
from lightning_optim.names import NamesOptimizers

__all__ = ["LRMonitor"]

MOMENTUM_SUFFIX = "-momentum"
WEIGHT_DECAY_SUFFIX = "-weight_decay"
_NOT_MOMENTUM_OR_DECAY = f"(?<!{MOMENTUM_SUFFIX})(?<!{WEIGHT_DECAY_SUFFIX})$"


class LRMonitor(LearningRateMonitor):
    """Log the lr (and optionally momentum and weight decay) of every parameter group of every optimizer.

    Unlike Lightning's ``LearningRateMonitor`` (``logging_interval=None``), the default ``logging_interval`` is
    ``"step"``: values are logged on Lightning's logging steps only, so a run shorter than ``log_every_n_steps``
    logs none (a warning says so); pass ``logging_interval=None`` for Lightning's behaviour.

    Keys are Lightning's: ``lr-<Optimizer>/<group name>`` (``lr-SGD/default``, ``lr-AdamW/no_decay``; a group
    without a name is ``pg<i>``, a lone unnamed group just ``lr-<Optimizer>``; a second optimizer of the same class
    is ``lr-<Optimizer>-1``; a scheduler's ``name``, i.e. ``log_name`` in ``optim_config``, replaces the
    ``lr-<Optimizer>`` prefix; an optimizer named under ``optim_config.optimizers`` is ``lr-<its name>``, with or
    without a scheduler, so two optimizers of one class say which is which), plus ``<that key>-momentum`` and
    ``<that key>-weight_decay`` when asked. Values are read at the start of a step (the lr that step uses) on
    Lightning's logging steps (``log_every_n_steps``) and sent to every logger at Lightning's logging step
    (:func:`~lightning_optim.internals.logging_step`), like the metrics the model logs.

    The logged values are also put into ``trainer.callback_metrics``, as ``LearningRateMonitor`` does. Without a
    logger (``Trainer(logger=False)``, where ``LearningRateMonitor`` raises) nothing is logged, a warning says so
    once, and every key is put into ``trainer.callback_metrics`` at every training batch instead, so
    ``EarlyStopping`` and ``ModelCheckpoint`` can monitor an lr key (``monitor="lr-SGD"``).

    Extends :class:`~lightning.pytorch.callbacks.LearningRateMonitor` (same keys, options and ``lrs`` history),
    fixing what it gets wrong in lightning 2.6:

    * ``log_weight_decay=True`` raises ``KeyError: 'weight_decay'`` for Rprop, LBFGS and SparseAdam: here a group
      without ``weight_decay`` simply has no ``-weight_decay`` key.
    * ``log_momentum=True`` logs (and warns about) a made-up momentum of 0 for optimizers without one (Adagrad,
      Adadelta, ASGD, Rprop, LBFGS, Adafactor): here such a group has no ``-momentum`` key. Adam-like optimizers
      log ``betas[0]``.
    * A key is never logged twice for the same step: with ``logging_interval=None`` Lightning logs an optimizer
      without a scheduler both at epoch start and at the first batch, and under ``accumulate_grad_batches`` it logs
      every batch of a logging step again.

    Args:
        logging_interval: ``"step"`` (default here; Lightning's default is None) logs every optimizer on logging
            steps; ``"epoch"`` once at each epoch's start; None each scheduler at its own ``interval`` (and
            optimizers without a scheduler on both).
        log_momentum: also log ``momentum``, or ``betas[0]`` for Adam-like optimizers.
        log_weight_decay: also log ``weight_decay``.

    Examples:
        >>> import lightning as L
        >>> trainer = L.Trainer(callbacks=[LRMonitor(log_momentum=True)], max_steps=10, logger=False)
    """

    dashboard_category = "Learning rate"
    """The category of :class:`~lightning_optim.callbacks.TensorBoardDashboard` that holds :meth:`dashboard_charts`."""

    def __init__(
        self,
        logging_interval: Literal["step", "epoch"] | None = "step",
        log_momentum: bool = False,
        log_weight_decay: bool = False,
    ) -> None:
        super().__init__(logging_interval, log_momentum, log_weight_decay)
        self._logged_at: dict[str, int] = {}
        self._trainer: L.Trainer | None = None
        self._optimizer_names: dict[int, str] = {}

    def dashboard_charts(self) -> dict[str, list[str]]:
        """The TensorBoard charts of this monitor's keys: chart title -> tag regexes (matched from the tag's start).

        A scheduler's ``name`` (``log_name``) is on the charts too when the optimizers exist already (from
        ``on_fit_start`` on), which is when the dashboard asks.
        """
        prefixes = ["lr-"]
        if self._trainer is not None:
            prefixes += [re.escape(config.name) for config in self._trainer.lr_scheduler_configs if config.name]
        charts = {"Learning rate": [f"{prefix}.*{_NOT_MOMENTUM_OR_DECAY}" for prefix in prefixes]}
        if self.log_momentum:
            charts["Momentum"] = [f"{prefix}.*{MOMENTUM_SUFFIX}$" for prefix in prefixes]
        if self.log_weight_decay:
            charts["Weight decay"] = [f"{prefix}.*{WEIGHT_DECAY_SUFFIX}$" for prefix in prefixes]
        return charts

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer
        MetricCollector.of(trainer).join(self)

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = None

    @override
    def on_train_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        # Lightning's on_train_start refuses a Trainer without a logger and warns that it logs a momentum of 0 (this
        # monitor logs no key instead); only its naming of the keys is kept.
        self._logged_at = {}
        module = trainer.lightning_module
        names = module.optimizer_names if isinstance(module, NamesOptimizers) else ()
        optimizers = trainer.optimizers
        self._optimizer_names = (
            {id(optimizer): name for optimizer, name in zip(optimizers, names, strict=True)}
            if len(names) == len(optimizers)
            else {}
        )
        self._name_keys(trainer)
        if not trainer.loggers:
            rank_zero_warn(
                "LRMonitor: the Trainer has no logger (logger=False), so no learning rate is logged; the lr keys are"
                " only put into trainer.callback_metrics (for EarlyStopping or ModelCheckpoint)."
            )
        elif self.logging_interval == "step":
            _warn_if_shorter_than_a_logging_step(trainer)

    def _name_keys(self, trainer: L.Trainer) -> None:
        """Name every key as ``LearningRateMonitor.on_train_start`` does, and start the ``lrs`` history."""
        names, scheduled, scheduled_types = self._find_names_from_schedulers(trainer.lr_scheduler_configs)
        unscheduled, _ = self._find_names_from_optimizers(
            trainer.optimizers, seen_optimizers=scheduled, seen_optimizer_types=scheduled_types
        )
        keys = list(itertools.chain.from_iterable(names + unscheduled))
        self.lrs = {key: [] for key in keys}
        self.last_momentum_values = {key + MOMENTUM_SUFFIX: None for key in keys}
        self.last_weight_decay_values = {key + WEIGHT_DECAY_SUFFIX: None for key in keys}

    @override
    def _find_names_from_optimizers(
        self,
        optimizers: list[Any],
        seen_optimizers: list[torch.optim.Optimizer],
        seen_optimizer_types: defaultdict[type[torch.optim.Optimizer], int],
    ) -> tuple[list[list[str]], list[torch.optim.Optimizer]]:
        # An optimizer without a scheduler is lr-<Class>(-<n>) in Lightning, numbered by the order of the optimizers
        # that have none; one the model names (optim_config.optimizers) is lr-<name>, as its scheduler would name it.
        names: list[list[str]] = []
        unscheduled: list[torch.optim.Optimizer] = []
        for optimizer in optimizers:
            name = self._optimizer_names.get(id(optimizer))
            if name is None or optimizer in seen_optimizers:
                more_names, more = super()._find_names_from_optimizers(
                    [optimizer], seen_optimizers, seen_optimizer_types
                )
                names += more_names
                unscheduled += more
                continue
            seen_optimizers.append(optimizer)
            groups = optimizer.param_groups
            names.append([self._add_suffix(f"lr-{name}", groups, index) for index in range(len(groups))])
            unscheduled.append(optimizer)
        return names, unscheduled

    @override
    def on_train_batch_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if not trainer.loggers:
            self._feed_callback_metrics(trainer)
        if self.logging_interval != "epoch" and should_log(trainer):
            self._log(trainer, "step" if self.logging_interval is None else "any")

    @override
    def on_train_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        MetricCollector.of(trainer).batch_end(trainer, self)

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if self.logging_interval != "step":
            self._log(trainer, "epoch" if self.logging_interval is None else "any")

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        # What a batch that ended early (on_train_batch_start returned -1) handed over.
        MetricCollector.of(trainer).flush(trainer)

    def _feed_callback_metrics(self, trainer: L.Trainer) -> None:
        # LightningModule.log from a callback hook is Lightning's public way into trainer.callback_metrics; every
        # batch, as for the model's own self.log, so EarlyStopping reads the lr this epoch used.
        for key, value in self._extract_stats(trainer, "any").items():
            trainer.lightning_module.log(key, value, logger=False, on_step=True, on_epoch=False)

    def _log(self, trainer: L.Trainer, interval: str) -> None:
        step = logging_step(trainer)
        stats = self._extract_stats(trainer, interval)
        fresh = {key: value for key, value in stats.items() if self._logged_at.get(key) != step}
        if not fresh:
            return
        for key, value in fresh.items():
            self._logged_at[key] = step
            if key in self.lrs:
                self.lrs[key].append(value)
        # Written with the other monitors' metrics of the step, at the batch's end.
        MetricCollector.of(trainer).add(step, fresh)

    @override
    def _extract_stats(self, trainer: L.Trainer, interval: str) -> dict[str, float]:
        # LearningRateMonitor._extract_stats, but for how the values reach trainer.callback_metrics: Lightning's goes
        # through the property, which first converts every progress-bar metric of the model with .item() (a host
        # sync per logging step), and copies each value to the device on its own; here all values go to the device
        # in one non-blocking copy, into the dict the property returns.
        names, scheduled, scheduled_types = self._find_names_from_schedulers(trainer.lr_scheduler_configs)
        self._remap_keys(names)
        stats: dict[str, float] = {}
        for keys, config in zip(names, trainer.lr_scheduler_configs, strict=True):
            if interval in (config.interval, "any"):
                stats.update(self._get_optimizer_stats(config.scheduler.optimizer, keys))
        unscheduled_names, unscheduled = self._find_names_from_optimizers(
            trainer.optimizers, seen_optimizers=scheduled, seen_optimizer_types=scheduled_types
        )
        self._remap_keys(unscheduled_names)
        for optimizer, keys in zip(unscheduled, unscheduled_names, strict=True):
            stats.update(self._get_optimizer_stats(optimizer, keys))
        if stats:
            on_device = to_device(list(stats.values()), trainer.strategy.root_device)
            callback_metrics_store(trainer).update(zip(stats, on_device, strict=True))
        return stats

    @override
    def _extract_lr(self, param_group: dict[str, Any], name: str) -> dict[str, Any]:
        # The history in self.lrs is appended in _log, for the points actually logged.
        return {name: _number(param_group["lr"])}

    @override
    def _extract_momentum(self, param_group: dict[str, Any], name: str, use_betas: bool) -> dict[str, float]:
        if not self.log_momentum:
            return {}
        if "betas" in param_group:
            momentum = param_group["betas"][0]
        elif "momentum" in param_group:
            momentum = param_group["momentum"]
        else:
            return {}
        self.last_momentum_values[name] = _number(momentum)  # type: ignore[assignment]  # Lightning annotates lists, stores floats
        return {name: _number(momentum)}

    @override
    def _extract_weight_decay(self, param_group: dict[str, Any], name: str) -> dict[str, Any]:
        if not self.log_weight_decay or "weight_decay" not in param_group:
            return {}
        self.last_weight_decay_values[name] = _number(param_group["weight_decay"])  # type: ignore[assignment]  # Lightning annotates lists, stores floats
        return {name: _number(param_group["weight_decay"])}


def _warn_if_shorter_than_a_logging_step(trainer: L.Trainer) -> None:
    """Warn when the run ends before Lightning's first logging step: ``logging_interval="step"`` then logs nothing."""
    every = trainer.log_every_n_steps  # type: ignore[attr-defined]  # set by the Trainer, not annotated on it
    steps = trainer.estimated_stepping_batches
    if 0 < steps < every:
        rank_zero_warn(
            f"LRMonitor(logging_interval='step') logs on Lightning's logging steps only, and this run of {steps:g}"
            f" optimizer steps is shorter than log_every_n_steps={every}: no learning rate is logged. Lower"
            " Trainer(log_every_n_steps=...), or pass logging_interval=None (LearningRateMonitor's default)."
        )


def _number(value: Any) -> float:
    """A Python float from a float or a 0-dim tensor (``lr`` and ``betas`` may be tensors, e.g. for capturable Adam)."""
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)
