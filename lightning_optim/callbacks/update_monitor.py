"""``UpdateMonitor``: what each optimizer step does to the weights: update norm, update-to-parameter ratio, alignment
with the gradient, and the norms of the optimizer's state.

Examples:
    >>> import lightning as L
    >>> monitor = UpdateMonitor(per_layer_depth=1)
    >>> trainer = L.Trainer(callbacks=[monitor], max_steps=10, logger=False)
    >>> sorted(monitor.dashboard_charts())[:2]
    ['Cosine of update and negative gradient', 'Optimizer state norms']
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from lightning_optim.callbacks.collector import MetricCollector
from lightning_optim.errors import argument_error, positive_int_argument
from lightning_optim.internals import logging_step, measures, torch_optimizer
from lightning_optim.names import named_parameters, optimizer_labels
from lightning_optim.stats import (
    TensorNorms,
    TensorUpdates,
    combine_ranks,
    copy_parameters,
    measure_updates,
    members,
    module_path,
    state_norms,
)
from lightning_optim.stats.updates import QUANTITIES, Selections

__all__ = ["REFERENCE_RATIO", "UpdateMonitor"]

UPDATE = "update/"
STATE = "optimizer_state/"
REFERENCE_RATIO = 1e-3
"""The update-to-parameter ratio of a healthy run (CS231n; Karpathy), drawn on the ratio chart."""
REFERENCE_KEY = "update/ratio_reference"


@dataclass
class _Layout:
    """One optimizer's parameters as the monitor summarizes them, made once for as long as they stay the same: the
    selections (the total ``""``, ``/<layer>``, ``/group/<group>``) and their index tensors, the suffixes the health
    check reads, and each state key's selections (those of its tensors)."""

    key: tuple[torch.device, tuple[int, ...], tuple[str, ...]]
    selections: dict[str, list[int]]
    updates: Selections
    health: list[str]
    states: dict[tuple[str, tuple[int, ...]], Selections] = field(default_factory=dict)
    keys: dict[tuple[str, int], list[str]] = field(default_factory=dict)


@dataclass
class _Step:
    """One optimizer's step measured on a logging step: its layout and the per-tensor device tensors."""

    optimizer: torch.optim.Optimizer
    layout: _Layout
    updates: TensorUpdates
    states: dict[str, TensorNorms]


class UpdateMonitor(L.Callback):
    """Log what the optimizer step did to the parameters, on Lightning's logging steps only.

    Keys (``<layer>`` a module path cut at ``per_layer_depth``, ``<group>`` a parameter group's name):

    * ``update/norm``: the norm of the update, parameters after the step minus before;
    * ``update/param_norm``: the norm of the parameters before the step;
    * ``update/ratio``: ``norm / param_norm``, about 1e-3 in a healthy run;
    * ``update/cos_grad``: the cosine between the update and the negative gradient the step used (after clipping):
      1 for plain SGD, lower where momentum, Adam's scaling or weight decay turn the step away from the gradient;
    * each of them per layer, ``update/<quantity>/<layer>``, and per parameter group,
      ``update/<quantity>/group/<group>``;
    * ``optimizer_state/<state key>_norm`` for every per-parameter state tensor of the optimizer (Adam's ``exp_avg``
      and ``exp_avg_sq``, SGD's ``momentum_buffer``, a schedule-free optimizer's ``z``...), after the step, in total,
      per layer and per group likewise;
    * ``update/ratio_reference``: the constant :data:`REFERENCE_RATIO`, so that the dashboard's ratio chart draws the
      reference line (TensorBoard's custom-scalars layout cannot draw one, nor set a log axis: the chart's own
      "Toggle y-axis log scale" button does that).

    With several optimizers every ``update/`` and ``optimizer_state/`` key gains the optimizer's name after its
    prefix (``update/generator/ratio``), as :class:`~lightning_optim.callbacks.GradNormMonitor` names them.

    Works with any ``torch.optim.Optimizer`` (torch's, pytorch-optimizer's, schedule-free ones, fused steps with the
    clipping folded in, LBFGS, manual optimization): on a logging step it registers a step pre-hook and post-hook on
    each optimizer, removed after that step. The pre-hook copies the optimizer's parameters just before they change:
    when the step gets a closure (Lightning's automatic optimization, LBFGS), right after the closure's first call,
    that is after the backward pass and clipping; otherwise at once. The post-hook measures the update against that
    copy, with the gradients the step left (clipped, also when the clipping rode in a fused step). Non-logging steps
    cost nothing: no hook, no copy, no kernel. All values reach the host in the one sync that
    :class:`~lightning_optim.callbacks.collector.MetricCollector` makes for every monitor, and are also put into
    ``trainer.callback_metrics``, so ``EarlyStopping``/``ModelCheckpoint`` can monitor them.

    ``DTensor`` parameters (FSDP2, tensor parallelism under ``ModelParallelStrategy``): each rank measures its local
    parts, and every value is made whole, the same on every rank, in one ``all_reduce`` per logging step (every
    optimizer's update and state norms together). It cannot ride in the gradient norms' reduction: that one runs
    before the step, for clipping, and the update exists only after it.

    At the end of each training epoch, the median of every ratio logged in it (per layer, else per group, else the
    total) is checked against ``ratio_range``: the first epoch where one falls outside it is named once in a warning,
    with the layers (too small: lr too low, or a dead or frozen layer; too large: divergence ahead).

    Args:
        per_layer_depth: also log each module path cut at this depth (``1``: ``features``, ``head``); None: totals only.
        per_param_group: also log each optimizer parameter group.
        optimizer_state: log ``optimizer_state/*``.
        ratio_range: the range of healthy median ratios, ``(low, high)``.
        every_n_logging_steps: measure on the first of Lightning's logging steps and every this many after it (the
            others cost nothing): the loss can be logged every step while the updates, which cost a copy of the
            parameters and a few kernels per parameter tensor, are measured every tenth.

    Examples:
        >>> import lightning as L
        >>> trainer = L.Trainer(callbacks=[UpdateMonitor(per_param_group=True)], max_steps=10, logger=False)
    """

    dashboard_category = "Updates"

    def __init__(
        self,
        per_layer_depth: int | None = 1,
        per_param_group: bool = False,
        optimizer_state: bool = True,
        ratio_range: tuple[float, float] = (1e-4, 1e-2),
        every_n_logging_steps: int = 1,
    ) -> None:
        if per_layer_depth is not None and per_layer_depth < 1:
            raise argument_error("UpdateMonitor", "per_layer_depth", per_layer_depth, ">= 1 or None")
        low, high = ratio_range
        if not 0 <= low < high:
            raise argument_error("UpdateMonitor", "ratio_range", ratio_range, "(low, high) with 0 <= low < high")
        self.per_layer_depth = per_layer_depth
        self.per_param_group = per_param_group
        self.optimizer_state = optimizer_state
        self.ratio_range = (float(low), float(high))
        self.every_n_logging_steps = positive_int_argument(
            "UpdateMonitor", "every_n_logging_steps", every_n_logging_steps
        )
        self._trainer: L.Trainer | None = None
        self._handles: list[RemovableHandle] = []
        self._copies: dict[int, list[torch.Tensor]] = {}
        self._layouts: dict[int, _Layout] = {}
        self._measured: list[_Step] = []
        self._epoch_ratios: dict[str, list[float]] = {}
        self._warned = False

    @staticmethod
    def dashboard_charts() -> dict[str, list[str]]:
        """The TensorBoard charts of this monitor: chart title → tag regexes."""
        optimizer = "(?:[^/]+/)?"
        return {
            "Update / parameter ratio (1e-3 reference; use the chart's log-scale button)": [
                f"update/{optimizer}ratio(?:/.*)?$",
                f"{REFERENCE_KEY}$",
            ],
            "Update norm": [f"update/{optimizer}norm(?:/.*)?$"],
            "Parameter norm": [f"update/{optimizer}param_norm(?:/.*)?$"],
            "Cosine of update and negative gradient": [f"update/{optimizer}cos_grad(?:/.*)?$"],
            "Optimizer state norms": ["optimizer_state/.*"],
        }

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer
        MetricCollector.of(trainer).join(self)

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_ratios = {}
        self._warned = False
        self._layouts = {}

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        # A copy left from a step that never ran (GradScaler skipped it) must not stand for a later step's start.
        self._copies.clear()
        if not measures(trainer, self.every_n_logging_steps):
            self._remove_hooks()
            return
        if self._handles:
            return  # registered at an earlier batch: the step's first under accumulation, or the previous step
        for optimizer in trainer.optimizers:
            inner = torch_optimizer(optimizer)
            self._handles.append(inner.register_step_pre_hook(self._before_step))
            self._handles.append(inner.register_step_post_hook(self._after_step))

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._copies.clear()

    @staticmethod
    def _parameters(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
        return [parameter for group in optimizer.param_groups for parameter in group["params"]]

    def _copy(self, optimizer: torch.optim.Optimizer) -> None:
        if id(optimizer) not in self._copies:
            self._copies[id(optimizer)] = copy_parameters(self._parameters(optimizer))

    def _before_step(
        self, optimizer: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        # torch runs step pre-hooks before the step calls its closure, and Lightning's closure holds the forward,
        # backward and clipping: copying at its first return takes the parameters the step starts from without
        # keeping a copy alive through the forward pass.
        if "closure" in kwargs and callable(kwargs["closure"]):
            return args, {**kwargs, "closure": self._copying_closure(optimizer, kwargs["closure"])}
        if args and callable(args[0]):
            return (self._copying_closure(optimizer, args[0]), *args[1:]), kwargs
        self._copy(optimizer)
        return None

    def _copying_closure(self, optimizer: torch.optim.Optimizer, closure: Callable[[], Any]) -> Callable[[], Any]:
        def closure_then_copy() -> Any:
            loss = closure()
            self._copy(optimizer)
            return loss

        return closure_then_copy

    def _after_step(self, optimizer: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        before = self._copies.pop(id(optimizer), None)
        if before is None:
            return
        parameters = self._parameters(optimizer)
        updates = measure_updates(before, parameters, [parameter.grad for parameter in parameters])
        states = state_norms(optimizer.state, parameters) if self.optimizer_state else {}
        self._measured.append(_Step(optimizer, self._layout(optimizer, parameters), updates, states))

    def _layout(self, optimizer: torch.optim.Optimizer, parameters: Sequence[torch.Tensor]) -> _Layout:
        """The optimizer's layout, made again when its parameters, their device or its groups changed."""
        groups = [str(group.get("name", index)) for index, group in enumerate(optimizer.param_groups)]
        device = parameters[0].device if parameters else torch.device("cpu")
        key = (device, tuple(map(id, parameters)), tuple(groups))
        layout = self._layouts.get(id(optimizer))
        if layout is not None and layout.key == key:
            return layout
        module = self._trainer.lightning_module if self._trainer is not None else None
        names = {id(parameter): name for name, parameter in named_parameters(module)} if module is not None else {}
        layer_of = module_path(self.per_layer_depth) if self.per_layer_depth is not None else None
        layers = [layer_of(names[id(p)]) if layer_of is not None and id(p) in names else "" for p in parameters]
        by_layer = {f"/{layer}": indices for layer, indices in members(layers).items() if layer}
        labels = [label for label, group in zip(groups, optimizer.param_groups, strict=True) for _ in group["params"]]
        by_group = {f"/group/{label}": indices for label, indices in members(labels).items()}
        selections = {"": list(range(len(parameters))), **by_layer, **(by_group if self.per_param_group else {})}
        health = by_layer or (by_group if self.per_param_group else {})
        layout = _Layout(key, selections, Selections(selections, device), list(health) or [""])
        self._layouts[id(optimizer)] = layout
        return layout

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self._measured:
            measured, self._measured = self._measured, []
            self._log(trainer, pl_module, measured)
        MetricCollector.of(trainer).batch_end(trainer, self)

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, measured: Sequence[_Step]) -> None:
        """Hand the steps' values to the collector, as device tensors (no host sync here)."""
        optimizers = [torch_optimizer(optimizer) for optimizer in trainer.optimizers]
        labels = optimizer_labels(pl_module, len(optimizers))
        whole = combine_ranks([(step.updates, step.states) for step in measured])
        stacked = []
        checked: list[str] = []
        for step, (updates, states) in zip(measured, whole, strict=True):
            index = next((i for i, known in enumerate(optimizers) if known is step.optimizer), 0)
            name = f"{labels[index]}/" if len(optimizers) > 1 else ""
            layout = step.layout
            table = updates.table(layout.updates).reshape(-1)
            stacked.append((self._keys(layout, f"{UPDATE}{name}", layout.updates, QUANTITIES), table))
            for key, norms in states.items():
                chosen = layout.states.get((key, tuple(norms.indices)))
                if chosen is None:
                    chosen = Selections(norms.restrict(layout.selections), norms.squares.device)
                    layout.states[key, tuple(norms.indices)] = chosen
                stacked.append((self._keys(layout, f"{STATE}{name}{key}_norm", chosen), norms.table(chosen)))
            checked += [f"{UPDATE}{name}ratio{suffix}" for suffix in layout.health]
        finish = partial(self._finish, checked)
        values = {REFERENCE_KEY: REFERENCE_RATIO}
        MetricCollector.of(trainer).add(logging_step(trainer), values, finish, callback_metrics=True, stacked=stacked)

    @staticmethod
    def _keys(layout: _Layout, prefix: str, selections: Selections, quantities: Sequence[str] = ("",)) -> list[str]:
        """``<prefix><quantity><suffix>`` for each of ``selections`` and each quantity, made once per layout."""
        keys = layout.keys.get((prefix, id(selections)))
        if keys is None:
            keys = [f"{prefix}{quantity}{suffix}" for suffix in selections.labels for quantity in quantities]
            layout.keys[prefix, id(selections)] = keys
        return keys

    def _finish(self, checked: Sequence[str], numbers: dict[str, float]) -> Mapping[str, float]:
        """Keep the ratios that the epoch's health check reads (the metrics are the numbers as they are)."""
        for key in checked:
            self._epoch_ratios.setdefault(key, []).append(numbers[key])
        return numbers

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # What a batch that ended early (on_train_batch_start returned -1) handed over counts for this epoch.
        MetricCollector.of(trainer).flush(trainer)
        ratios, self._epoch_ratios = self._epoch_ratios, {}
        if self._warned or not ratios:
            return
        low, high = self.ratio_range
        medians = {key: statistics.median(values) for key, values in ratios.items()}
        small = {key: median for key, median in medians.items() if median < low}
        large = {key: median for key, median in medians.items() if median > high}
        if not (small or large):
            return
        self._warned = True
        parts = []
        if small:
            parts.append(f"too small (lr too low, or a dead or frozen layer): {_listing(small)}")
        if large:
            parts.append(f"too large (divergence ahead: lower the lr or clip): {_listing(large)}")
        rank_zero_warn(
            f"UpdateMonitor: in epoch {trainer.current_epoch} the median update/parameter ratio stayed outside "
            f"[{low:g}, {high:g}] (healthy runs sit near {REFERENCE_RATIO:g}): {'; '.join(parts)}. Named once per fit."
        )

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._remove_hooks()
        self._measured.clear()

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._remove_hooks()
        self._measured.clear()


def _listing(medians: Mapping[str, float]) -> str:
    """``update/ratio/head (2.1e-06), ...``."""
    return ", ".join(f"{key} ({value:.2g})" for key, value in medians.items())
