"""``GradNormMonitor``: the gradient norm before and after clipping, how often clipping fires, non-finite steps.

Examples:
    >>> import lightning as L
    >>> monitor = GradNormMonitor(per_layer_depth=1)
    >>> trainer = L.Trainer(callbacks=[monitor], gradient_clip_val=1.0, logger=False)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_optim.callbacks.collector import MetricCollector, to_numbers
from lightning_optim.clipping.arithmetic import (
    ClipResult,
    algorithm_name,
    check_clip_threshold,
    expected_after_clipping,
)
from lightning_optim.clipping.step import ClipState, clip_state_of
from lightning_optim.errors import argument_error
from lightning_optim.internals import logging_step, should_log
from lightning_optim.names import named_parameters, optimizer_labels
from lightning_optim.stats import (
    GradientNorms,
    GroupOf,
    RunningStatsSnapshot,
    dense_gradient,
    gradient_norms,
    module_path,
    total_norm,
)

__all__ = ["GradNormMonitor", "NonfinitePolicy"]

NonfinitePolicy = Literal["warn", "skip", "raise"]

PREFIX = "grad_norm/"
_OWN_KEYS = ("total", "clipped", "threshold", "clip_fraction", "nonfinite")
_COUNTS = ("steps/nonfinite", "steps/clipped")
"""Keys of a window's counts among the values handed to the collector (no metric key: those have a prefix)."""
_GROUP = "group:"
"""Marks a per-layer or per-group norm among the values handed to the collector."""


FOLD_STEPS = 64
"""Steps a window keeps as they came before it sums their counts on the device (two small kernels, no host sync):
under a long logging interval it holds at most this many norms, not every step's."""


@dataclass
class _Window:
    """One optimizer's steps measured since the last log, and its counts (kept in the callback's state)."""

    totals: list[torch.Tensor] = field(default_factory=list)
    clipped: list[torch.Tensor] = field(default_factory=list)
    folded: dict[str, torch.Tensor] = field(default_factory=dict)
    clipped_steps: float = 0.0
    window_steps: int = 0
    nonfinite_steps: int = 0

    def add(self, result: ClipResult) -> None:
        """Count a measured step (no kernel until :data:`FOLD_STEPS` of them wait)."""
        assert result.total is not None  # the callers count measured steps only
        self.totals.append(result.total)
        if result.clipped is not None:
            self.clipped.append(result.clipped)
        if len(self.totals) >= FOLD_STEPS:
            self._fold()

    def take(self) -> dict[str, torch.Tensor]:
        """The counts of the steps measured since the last reduction, as device tensors (no host sync), keyed by
        :data:`_COUNTS`; those steps are forgotten, and :meth:`count` folds the counts in."""
        self._fold()
        counts, self.folded = self.folded, {}
        return counts

    def _fold(self) -> None:
        """Sum the kept steps' counts into :attr:`folded`, on the device."""
        if not self.totals:
            return
        totals, clipped = self.totals, self.clipped
        if len(totals) == 1 and not self.folded:
            # One step (log_every_n_steps=1) needs no stack and sum: each kernel costs microseconds on a CPU.
            self.folded = {
                "steps/nonfinite": ~torch.isfinite(totals[0]),
                **({"steps/clipped": clipped[0]} if clipped else {}),
            }
        else:
            counts = {"steps/nonfinite": (~torch.isfinite(torch.stack(totals))).sum()}
            if clipped:
                counts["steps/clipped"] = torch.stack(clipped).sum()
            for key, count in counts.items():
                self.folded[key] = count if key not in self.folded else self.folded[key] + count
        self.window_steps += len(totals)
        self.totals, self.clipped = [], []

    def count(self, numbers: Mapping[str, float]) -> None:
        """Fold in the counts :meth:`take` gave, made Python numbers."""
        self.nonfinite_steps += int(numbers.get("steps/nonfinite", 0))
        self.clipped_steps += float(numbers.get("steps/clipped", 0.0))

    def reduce(self) -> None:
        """Fold the steps measured since the last reduction into the host-side counts (a host sync)."""
        counts = self.take()
        self.count(dict(zip(counts, to_numbers(list(counts.values())), strict=True)))

    def state(self) -> dict[str, Any]:
        self.reduce()
        return {
            "clipped_steps": self.clipped_steps,
            "window_steps": self.window_steps,
            "nonfinite_steps": self.nonfinite_steps,
        }

    def load(self, state: dict[str, Any]) -> None:
        self.clipped_steps = state.get("clipped_steps", 0.0)
        self.window_steps = state.get("window_steps", 0)
        self.nonfinite_steps = state.get("nonfinite_steps", 0)
        self.totals, self.clipped, self.folded = [], [], {}


def clip_algorithm(trainer: L.Trainer) -> str | None:
    """``"norm"`` or ``"value"`` when the Trainer clips (Lightning's default algorithm is norm), else None."""
    if not trainer.gradient_clip_val:
        return None
    return algorithm_name(trainer.gradient_clip_algorithm)


class GradNormMonitor(L.Callback):
    """Log ``grad_norm/total`` (before clipping), ``grad_norm/clipped`` (after), ``grad_norm/threshold``,
    ``grad_norm/clip_fraction`` and ``grad_norm/nonfinite``, plus optional per-layer norms ``grad_norm/<layer>``.

    Fixes Lightning's documented recipe (``grad_norm`` in ``on_before_optimizer_step``), which runs before
    clipping, syncs the host once per parameter, and so always shows pre-clip norms at a cost.

    * With :class:`~lightning_optim.OptimMixin` (any model that is
      :class:`~lightning_optim.clipping.step.ReportsClipping`) and norm clipping, the norms are the ones clipping
      computed
      (``pl_module.clip_state.last``): no extra pass. Without the mixin, the monitor takes the norm itself in one fused
      pass before clipping and derives the post-clip norm from the Trainer's threshold; with value clipping it
      measures again after clipping.
    * Python numbers are made on Lightning's logging steps only. The clip fraction counts every optimizer step
      when clipping is by norm (with the mixin at no cost; without it, one fused norm pass per step); otherwise,
      and for the non-finite count without norm clipping, only logging steps are measured.
    * With the mixin's adaptive clipping (``optim_config.clipping``), ``grad_norm/threshold`` is each logged step's
      adaptive threshold (none during ZClip's warm-up, which does not clip).
    * Every key is also put into ``trainer.callback_metrics`` on logging steps (the last logged value), so
      ``EarlyStopping(monitor="grad_norm/total")`` and ``ModelCheckpoint`` can use it; no extra host sync.
    * A negative or non-finite ``gradient_clip_val`` is refused in ``setup``, before the first step: torch's norm
      clipping would flip the gradients' sign (Lightning's own clipping ignores it silently).
    * LBFGS evaluates its closure, and so clipping, several times per optimizer step: the monitor logs once per
      optimizer step, the last evaluation's norms.
    * Manual optimization (``automatic_optimization = False``): each ``optimizer.step()`` in ``training_step`` is
      measured over that optimizer's parameters. With the mixin, a ``self.clip_gradients(opt, ...)`` before the step
      gives the norms before clipping (``OptimMixin.clip_gradients`` keeps them); a step not clipped is measured
      at the step. Without the mixin the monitor sees the gradients only at the step, after any clipping, and warns
      once that ``grad_norm/total`` is then the clipped norm. Value clipping under manual optimization is not
      measured (warned once).
    * Several optimizers: every key gains the optimizer's name, ``grad_norm/<optimizer>/total`` (and ``clipped``,
      ``threshold``, ``clip_fraction``, ``nonfinite``, per-layer and per-group keys), each counting that optimizer's
      own steps. The name is its key under ``optim_config.optimizers`` with the mixin, else ``optimizer_<i>``, its
      position in ``self.optimizers()``. One optimizer keeps the keys without a name.

    Args:
        per_layer_depth: also log the norm of each module path cut at this depth (``1``: ``encoder``, ``head``).
        per_param_group: also log the norm of each optimizer parameter group, ``grad_norm/group/<name>`` (with
            ``per_layer_depth`` too, both sets of keys).
        norm_type: the p of the p-norm.
        nonfinite: what to do when the total norm is NaN/Inf: ``"warn"`` (at the next logging step),
            ``"skip"`` (drop the gradients so the optimizer step changes nothing, and put back the BatchNorm running
            statistics the step's batches updated) or ``"raise"`` (naming the first parameter whose gradient is not
            finite, or saying that finite gradients overflowed the norm). ``skip`` and ``raise`` check every step:
            one norm pass and one host sync per step; with the mixin clipping by norm, ``skip`` uses clipping's norm
            (no extra pass), and with a fused optimizer the step's own ``found_inf`` flag (no host sync either).
            ``skip`` copies the BatchNorm running statistics at the start of each step (one ``torch._foreach_copy_``).
    """

    dashboard_category = "Gradient norm"

    def __init__(
        self,
        per_layer_depth: int | None = None,
        per_param_group: bool = False,
        norm_type: float = 2.0,
        nonfinite: NonfinitePolicy = "warn",
    ) -> None:
        if nonfinite not in ("warn", "skip", "raise"):
            raise argument_error(
                "GradNormMonitor", "nonfinite", nonfinite, "'warn', 'skip' or 'raise'", ("warn", "skip", "raise")
            )
        if per_layer_depth is not None and per_layer_depth < 1:
            raise argument_error("GradNormMonitor", "per_layer_depth", per_layer_depth, ">= 1 or None")
        self.per_layer_depth = per_layer_depth
        self.per_param_group = per_param_group
        self.norm_type = norm_type
        self.nonfinite = nonfinite
        # Per key prefix (grad_norm/ or grad_norm/<optimizer>/), the steps measured since the last log, kept as device
        # tensors (counting them costs no kernel until the log), and the counts.
        self._windows: dict[str, _Window] = {}
        # Manual optimization: each optimizer step of this batch, by optimizer index.
        self._stepped: list[tuple[int, ClipResult]] = []
        self._warned_manual = False
        self._logging = False
        self._stepped_at = 0
        self._before: GradientNorms | None = None
        self._snapshot: RunningStatsSnapshot | None = None
        self._snapshot_at: int | None = None

    @staticmethod
    def dashboard_charts() -> dict[str, list[str]]:
        """The TensorBoard charts of this monitor: chart title → tag regexes."""
        optional_optimizer = "(?:[^/]+/)?"
        own = "|".join(_OWN_KEYS)
        return {
            # TensorBoardDashboard writes these three series to runs of their own (TensorBoard colours by run).
            "Norm before vs after clipping, and threshold": [f"clipping/{optional_optimizer}norm$"],
            "Clip fraction": [f"grad_norm/{optional_optimizer}clip_fraction$"],
            "Non-finite steps": [f"grad_norm/{optional_optimizer}nonfinite$"],
            "Per layer": [f"grad_norm/(?!{optional_optimizer}(?:{own})$).*"],
        }

    def _group_of(self, pl_module: L.LightningModule, optimizers: Sequence[torch.optim.Optimizer]) -> GroupOf | None:
        layer_of = module_path(self.per_layer_depth) if self.per_layer_depth is not None else None
        if not self.per_param_group:
            return layer_of
        names = {id(parameter): name for name, parameter in named_parameters(pl_module)}
        group_names = {
            names[id(parameter)]: f"group/{group.get('name', index)}"
            for optimizer in optimizers
            for index, group in enumerate(optimizer.param_groups)
            for parameter in group["params"]
        }
        if layer_of is None:
            return group_names.__getitem__
        return lambda name: (layer_of(name), group_names[name])

    def _clip_state(self, trainer: L.Trainer, pl_module: L.LightningModule) -> ClipState | None:
        """The model's clip state when it clips by norm and keeps what it measured (``OptimMixin``), else None."""
        state = clip_state_of(pl_module)
        if state is not None and (clip_algorithm(trainer) == "norm" or state.adaptive):
            return state
        return None

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        check_clip_threshold(trainer)
        MetricCollector.of(trainer).join(self)

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stepped_at = trainer.global_step
        self._stepped.clear()
        if not pl_module.automatic_optimization and clip_state_of(pl_module) is None:
            rank_zero_warn(
                "GradNormMonitor under manual optimization sees the gradients only at optimizer.step(): if "
                "training_step calls self.clip_gradients before it, grad_norm/total is the norm after clipping and "
                "clip_fraction stays 0. Put OptimMixin first in the model's bases: its clip_gradients keeps the norm "
                "before clipping."
            )
        if self.nonfinite != "skip":
            return
        self._snapshot, self._snapshot_at = RunningStatsSnapshot(pl_module), None
        if (state := clip_state_of(pl_module)) is not None:
            state.skip_nonfinite = self._snapshot

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (state := clip_state_of(pl_module)) is not None:
            state.skip_nonfinite = None
        self._snapshot = None

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        # Under gradient accumulation the step's first batch: every forward until the step updates BatchNorm.
        if self._snapshot is not None and self._snapshot_at != trainer.global_step:
            self._snapshot.take()
            self._snapshot_at = trainer.global_step
        reported = clip_state_of(pl_module)
        if reported is not None:
            # A clip_gradients whose optimizer never stepped (a step skipped in training_step) must not stand for a
            # later step: clipping and its step happen in the same training_step.
            reported.unstepped.clear()
        self._logging = should_log(trainer)
        if not self._logging:
            return
        if (state := self._clip_state(trainer, pl_module)) is not None:
            state.group_of = self._group_of(pl_module, trainer.optimizers[:1])
        elif not pl_module.automatic_optimization and reported is not None:
            reported.group_of = self._group_of(pl_module, trainer.optimizers)

    @override
    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if not pl_module.automatic_optimization:
            self._measure_manual_step(trainer, pl_module, optimizer)
            return
        by_norm = clip_algorithm(trainer) == "norm"
        mixin_measures = self._clip_state(trainer, pl_module) is not None
        # With the mixin clipping by norm, "skip" is done by the mixin from clipping's own norm (clip_state).
        if (mixin_measures and self.nonfinite != "raise") or (
            self.nonfinite == "warn" and not (self._logging or by_norm)
        ):
            self._before = None
            return
        named = [(name, p) for name, p in named_parameters(pl_module) if dense_gradient(p) is not None]
        group_of = self._group_of(pl_module, [optimizer]) if self._logging else None
        self._before = before = gradient_norms(named, group_of, self.norm_type)
        if self.nonfinite != "warn" and not torch.isfinite(before.total):
            self._handle_nonfinite(trainer, named, before)

    def _measure_manual_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        """One ``optimizer.step()`` in ``training_step``: what the mixin's ``clip_gradients`` measured, else the
        norm of this optimizer's gradients now."""
        index = next((i for i, known in enumerate(trainer.optimizers) if known is optimizer), 0)
        reported = clip_state_of(pl_module)
        clipped = reported.unstepped.pop(id(optimizer), None) if reported is not None else None
        if clipped is not None and clipped.total is None:
            if not self._warned_manual:
                self._warned_manual = True
                rank_zero_warn(
                    "GradNormMonitor: clip_gradients(gradient_clip_algorithm='value') under manual optimization "
                    "computes no norm, and the gradients at optimizer.step() are already clipped: grad_norm/* are "
                    "not logged for those steps. Clip by norm to measure them."
                )
            return
        owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
        named = [
            (name, p) for name, p in named_parameters(pl_module) if id(p) in owned and dense_gradient(p) is not None
        ]
        if clipped is None:
            group_of = self._group_of(pl_module, trainer.optimizers) if self._logging else None
            before = gradient_norms(named, group_of, self.norm_type)
            clipped = ClipResult("none", 0.0, before.total, before.total, None, before.groups)
        assert clipped.total is not None  # value clipping returned above
        # After the mixin's clipping, "skip" is done already (clip_state.skip_nonfinite).
        checks = self.nonfinite == "raise" or (self.nonfinite == "skip" and clipped.algorithm == "none")
        if checks and not torch.isfinite(clipped.total):
            self._handle_nonfinite(trainer, named, GradientNorms(clipped.total, clipped.groups))
        self._stepped.append((index, clipped))

    def _handle_nonfinite(
        self, trainer: L.Trainer, named: Sequence[tuple[str, torch.Tensor]], before: GradientNorms
    ) -> None:
        if self.nonfinite == "raise":
            grads = [(name, dense_gradient(p)) for name, p in named]
            first = next((name for name, grad in grads if grad is not None and not torch.isfinite(grad).all()), None)
            if first is None:
                raise FloatingPointError(
                    f"Non-finite gradient norm at optimizer step {trainer.global_step}: every gradient is finite, "
                    f"but their total {self.norm_type:g}-norm overflowed ({float(before.total)}). Lower the lr "
                    "or the loss scale, or clip gradients by value."
                )
            raise FloatingPointError(
                f"Non-finite gradient at optimizer step {trainer.global_step}: the first parameter with a NaN/Inf "
                f"gradient is {first!r} (gradient norm {float(before.total)})."
            )
        for _, parameter in named:
            parameter.grad = None
        assert self._snapshot is not None  # on_train_start makes one when the policy is skip
        self._snapshot.restore()

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._end_batch(trainer, pl_module)
        MetricCollector.of(trainer).batch_end(trainer, self)

    def _end_batch(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (reported := clip_state_of(pl_module)) is not None:
            reported.group_of = None
        if trainer.global_step == self._stepped_at:
            return
        self._stepped_at = trainer.global_step
        if pl_module.automatic_optimization:
            stepped = [(PREFIX, self._result(trainer, pl_module))]
        else:
            labels = optimizer_labels(pl_module, len(trainer.optimizers))
            several = len(trainer.optimizers) > 1
            stepped = [(f"{PREFIX}{labels[index]}/" if several else PREFIX, result) for index, result in self._stepped]
            self._stepped.clear()
        for prefix, result in stepped:
            if result is not None and result.total is not None:
                self._window(prefix).add(result)
            if self._logging:
                self._log(trainer, prefix, result)

    def _window(self, prefix: str) -> _Window:
        return self._windows.setdefault(prefix, _Window())

    def _result(self, trainer: L.Trainer, pl_module: L.LightningModule) -> ClipResult | None:
        if (state := self._clip_state(trainer, pl_module)) is not None:
            return state.last
        if self._before is None:
            return None
        derived = expected_after_clipping(self._before.total, trainer.gradient_clip_val, clip_algorithm(trainer))
        if derived is not None:
            derived.groups = self._before.groups
            return derived
        threshold = float(trainer.gradient_clip_val or 0.0)
        if not threshold:
            return ClipResult("none", 0.0, self._before.total, self._before.total, None, self._before.groups)
        after = total_norm([p for p in pl_module.parameters() if dense_gradient(p) is not None], self.norm_type)
        return ClipResult(
            "value", threshold, self._before.total, after, after < self._before.total, self._before.groups
        )

    def _log(self, trainer: L.Trainer, prefix: str, result: ClipResult | None) -> None:
        """Hand this step's norms and the window's counts to the collector, as tensors (no host sync here)."""
        if result is None or result.total is None or result.clipped_norm is None:
            return
        values: dict[str, torch.Tensor | float] = {
            **self._window(prefix).take(),
            "total": result.total,
            "clipped": result.clipped_norm,
            **{f"{_GROUP}{group}": norm for group, norm in result.groups.items()},
        }
        # An adaptive threshold is a device tensor: its truth value would be a host sync; the collector converts it.
        if isinstance(result.threshold, torch.Tensor) or result.threshold:
            values["threshold"] = result.threshold
        finish = partial(self._metrics, trainer, prefix)
        MetricCollector.of(trainer).add(logging_step(trainer), values, finish, callback_metrics=True)

    def _metrics(self, trainer: L.Trainer, prefix: str, numbers: dict[str, float]) -> dict[str, float]:
        """The metrics of one logging step from :meth:`_log`'s values made Python numbers; the window's counts
        folded in (and a non-finite step warned about), then restarted."""
        window = self._window(prefix)
        before = window.nonfinite_steps
        window.count(numbers)
        metrics = {
            f"{prefix}total": numbers["total"],
            f"{prefix}clipped": numbers["clipped"],
            f"{prefix}clip_fraction": window.clipped_steps / window.window_steps,
            f"{prefix}nonfinite": float(window.nonfinite_steps),
        }
        threshold = numbers.get("threshold")  # an adaptive threshold may be +inf before it has a history
        if threshold and math.isfinite(threshold):
            metrics[f"{prefix}threshold"] = threshold
        metrics.update({f"{prefix}{key[len(_GROUP) :]}": v for key, v in numbers.items() if key.startswith(_GROUP)})
        if window.nonfinite_steps > before and self.nonfinite == "warn":
            whose = f" of {prefix[len(PREFIX) : -1]}" if prefix != PREFIX else ""
            rank_zero_warn(
                f"{window.nonfinite_steps - before} optimizer step(s){whose} before step {trainer.global_step} had a "
                "NaN/Inf gradient norm. Lower the lr, clip gradients, or use GradNormMonitor(nonfinite='skip'/'raise')."
            )
        window.clipped_steps, window.window_steps = 0.0, 0
        return metrics

    @override
    def state_dict(self) -> dict[str, Any]:
        state = self._window(PREFIX).state()
        others = {prefix: window.state() for prefix, window in self._windows.items() if prefix != PREFIX}
        return {**state, "optimizers": others} if others else state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._windows = {PREFIX: _Window()}
        self._windows[PREFIX].load(state_dict)
        for prefix, state in state_dict.get("optimizers", {}).items():
            self._window(prefix).load(state)
