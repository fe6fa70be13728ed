"""``GradNormMonitor``: the gradient norm before and after clipping, how often clipping fires, non-finite steps.

Example:
    >>> import lightning as L
    >>> monitor = GradNormMonitor(per_layer_depth=1)
    >>> trainer = L.Trainer(callbacks=[monitor], gradient_clip_val=1.0, logger=False)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_optim.clipping import (
    ClipResult,
    ClipState,
    ReportsClipping,
    algorithm_name,
    check_clip_threshold,
    expected_after_clipping,
)
from lightning_optim.errors import argument_error
from lightning_optim.internals import logging_step, should_log
from lightning_optim.names import named_parameters
from lightning_optim.stats import (
    GradientNorms,
    RunningStatsSnapshot,
    dense_gradient,
    gradient_norms,
    module_path,
    total_norm,
)

__all__ = ["GradNormMonitor", "NonfinitePolicy"]

NonfinitePolicy = Literal["warn", "skip", "raise"]


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
      :class:`~lightning_optim.clipping.ReportsClipping`) and norm clipping, the norms are the ones clipping computed
      (``pl_module.clip_state.last``): no extra pass. Without the mixin, the monitor takes the norm itself in one fused
      pass before clipping and derives the post-clip norm from the Trainer's threshold; with value clipping it
      measures again after clipping.
    * Python numbers are made on Lightning's logging steps only. The clip fraction counts every optimizer step
      when clipping is by norm (with the mixin at no cost; without it, one fused norm pass per step); otherwise,
      and for the non-finite count without norm clipping, only logging steps are measured.
    * A negative or non-finite ``gradient_clip_val`` is refused in ``setup``, before the first step: torch's norm
      clipping would flip the gradients' sign (Lightning's own clipping ignores it silently).
    * LBFGS evaluates its closure, and so clipping, several times per optimizer step: the monitor logs once per
      optimizer step, the last evaluation's norms.

    Args:
        per_layer_depth: also log the norm of each module path cut at this depth (``1``: ``encoder``, ``head``).
        per_param_group: also log the norm of each optimizer parameter group, ``grad_norm/group/<name>``.
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
        self._clipped_steps = 0.0
        self._window_steps = 0
        self._nonfinite_steps = 0
        # Steps measured since the last log, kept as device tensors: counting them costs no kernel until the log.
        self._pending: list[ClipResult] = []
        self._logging = False
        self._stepped_at = 0
        self._before: GradientNorms | None = None
        self._snapshot: RunningStatsSnapshot | None = None
        self._snapshot_at: int | None = None

    @staticmethod
    def dashboard_charts() -> dict[str, list[str]]:
        """The TensorBoard charts of this monitor: chart title → tag regexes."""
        return {
            "Norm before vs after clipping, and threshold": [
                "grad_norm/total$",
                "grad_norm/clipped$",
                "grad_norm/threshold$",
            ],
            "Clip fraction": ["grad_norm/clip_fraction$"],
            "Non-finite steps": ["grad_norm/nonfinite$"],
            "Per layer": ["grad_norm/(?!total$|clipped$|threshold$|clip_fraction$|nonfinite$).*"],
        }

    def _group_of(self, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer) -> Callable[[str], str] | None:
        if self.per_param_group:
            names = {id(parameter): name for name, parameter in named_parameters(pl_module)}
            group_names = {
                names[id(parameter)]: f"group/{group.get('name', index)}"
                for index, group in enumerate(optimizer.param_groups)
                for parameter in group["params"]
            }
            return group_names.__getitem__
        if self.per_layer_depth is not None:
            return module_path(self.per_layer_depth)
        return None

    def _clip_state(self, trainer: L.Trainer, pl_module: L.LightningModule) -> ClipState | None:
        """The model's clip state when it clips by norm and keeps what it measured (``OptimMixin``), else None."""
        if isinstance(pl_module, ReportsClipping) and clip_algorithm(trainer) == "norm":
            return pl_module.clip_state
        return None

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        check_clip_threshold(trainer)

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stepped_at = trainer.global_step
        if self.nonfinite != "skip":
            return
        self._snapshot, self._snapshot_at = RunningStatsSnapshot(pl_module), None
        if isinstance(pl_module, ReportsClipping):
            pl_module.clip_state.skip_nonfinite = self._snapshot

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if isinstance(pl_module, ReportsClipping):
            pl_module.clip_state.skip_nonfinite = None
        self._snapshot = None

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        # Under gradient accumulation the step's first batch: every forward until the step updates BatchNorm.
        if self._snapshot is not None and self._snapshot_at != trainer.global_step:
            self._snapshot.take()
            self._snapshot_at = trainer.global_step
        self._logging = should_log(trainer)
        if self._logging and (state := self._clip_state(trainer, pl_module)) is not None:
            state.group_of = self._group_of(pl_module, trainer.optimizers[0])

    @override
    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        by_norm = clip_algorithm(trainer) == "norm"
        mixin_measures = self._clip_state(trainer, pl_module) is not None
        # With the mixin clipping by norm, "skip" is done by the mixin from clipping's own norm (clip_state).
        if (mixin_measures and self.nonfinite != "raise") or (
            self.nonfinite == "warn" and not (self._logging or by_norm)
        ):
            self._before = None
            return
        named = [(name, p) for name, p in named_parameters(pl_module) if dense_gradient(p) is not None]
        group_of = self._group_of(pl_module, optimizer) if self._logging else None
        self._before = before = gradient_norms(named, group_of, self.norm_type)
        if self.nonfinite != "warn" and not torch.isfinite(before.total):
            self._handle_nonfinite(trainer, named, before)

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
        if isinstance(pl_module, ReportsClipping):
            pl_module.clip_state.group_of = None
        if trainer.global_step == self._stepped_at:
            return
        self._stepped_at = trainer.global_step
        result = self._result(trainer, pl_module)
        if result is not None and result.total is not None:
            self._pending.append(result)
        if self._logging:
            self._log(trainer, result)

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

    def _reduce(self) -> None:
        """Fold the steps measured since the last reduction into the host-side counts (a host sync)."""
        if not self._pending:
            return
        totals = torch.stack([result.total for result in self._pending if result.total is not None])
        self._nonfinite_steps += int((~torch.isfinite(totals)).sum())
        clipped = [result.clipped for result in self._pending if result.clipped is not None]
        if clipped:
            self._clipped_steps += float(torch.stack(clipped).sum())
        self._window_steps += len(self._pending)
        self._pending.clear()

    def _log(self, trainer: L.Trainer, result: ClipResult | None) -> None:
        if result is None or result.total is None or result.clipped_norm is None:
            return
        before = self._nonfinite_steps
        self._reduce()
        metrics = {
            "grad_norm/total": float(result.total),
            "grad_norm/clipped": float(result.clipped_norm),
            "grad_norm/clip_fraction": self._clipped_steps / self._window_steps,
            "grad_norm/nonfinite": float(self._nonfinite_steps),
        }
        if result.threshold:
            metrics["grad_norm/threshold"] = result.threshold
        metrics.update({f"grad_norm/{group}": float(norm) for group, norm in result.groups.items()})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=logging_step(trainer))
        if self._nonfinite_steps > before and self.nonfinite == "warn":
            rank_zero_warn(
                f"{self._nonfinite_steps - before} optimizer step(s) before step {trainer.global_step} had a NaN/Inf "
                "gradient norm. Lower the lr, clip gradients, or use GradNormMonitor(nonfinite='skip'/'raise')."
            )
        self._clipped_steps, self._window_steps = 0.0, 0

    @override
    def state_dict(self) -> dict[str, Any]:
        self._reduce()
        return {
            "clipped_steps": self._clipped_steps,
            "window_steps": self._window_steps,
            "nonfinite_steps": self._nonfinite_steps,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._clipped_steps = state_dict.get("clipped_steps", 0.0)
        self._window_steps = state_dict.get("window_steps", 0)
        self._nonfinite_steps = state_dict.get("nonfinite_steps", 0)
        self._pending.clear()
