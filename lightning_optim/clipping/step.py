"""One optimizer step's clipping decision: :func:`clip_for_step` picks between clipping here
(:mod:`~lightning_optim.clipping.arithmetic`), folded into a fused step (:mod:`~lightning_optim.clipping.fused_step`),
FSDP's own clipping, AMP's still-scaled gradients, and the skip of a non-finite step
(:mod:`~lightning_optim.clipping.skip`). A model that clips with it keeps the result in a :class:`ClipState`, which
the monitors find through the :class:`ReportsClipping` protocol.

Examples:
    >>> import torch
    >>> p = torch.nn.Parameter(torch.zeros(2)); p.grad = torch.tensor([3.0, 4.0])
    >>> sgd = torch.optim.SGD([p], lr=1.0, fused=True)
    >>> result = clip_for_step(sgd, [("p", p)], 1.0)
    >>> result.folded, float(result.total)
    (True, 5.0)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch.distributed.fsdp import FullyShardedDataParallel

from lightning_optim.clipping.arithmetic import (
    ClipResult,
    ThresholdOfNorm,
    algorithm_name,
    clip_gradients,
    expected_after_clipping,
    scale_to_norm,
)
from lightning_optim.clipping.fused_step import clip_in_step, folds_into_step, forget_step_attributes
from lightning_optim.clipping.skip import skip_if_nonfinite
from lightning_optim.internals import scale_tensor, unscales_in_step
from lightning_optim.stats import GradientNorms, GroupOf, RunningStatsSnapshot

__all__ = ["ClipState", "ClipsShardedGradients", "ReportsClipping", "clip_for_step", "clip_state_of", "fsdp_model"]


@dataclass
class ClipState:
    """What a model's clipping measured at the last optimizer step, and what the monitors ask of the next one.

    :class:`~lightning_optim.OptimMixin` owns one (``clip_state``) and fills ``last`` in
    ``configure_gradient_clipping``; :class:`~lightning_optim.callbacks.GradNormMonitor` reads ``last``, sets
    ``group_of`` on its logging steps (per-layer norms from clipping's own pass) and ``skip_nonfinite`` for
    ``nonfinite="skip"``.

    Examples:
        >>> state = ClipState()
        >>> state.last is None and state.group_of is None and state.skip_nonfinite is None and not state.unstepped
        True
        >>> state.adaptive
        False
    """

    last: ClipResult | None = None
    """The last clipping call's result (None: the last step was not clipped)."""
    group_of: GroupOf | None = None
    """Maps a parameter name to its group: per-group norms are wanted from this step's clipping."""
    skip_nonfinite: RunningStatsSnapshot | None = None
    """Skip steps whose total norm is NaN/Inf, and put back these BatchNorm running statistics (taken at the
    step's first batch)."""
    unstepped: dict[int, ClipResult] = field(default_factory=dict)
    """Manual optimization: the results of ``clip_gradients`` calls whose optimizer has not stepped yet, by the torch
    optimizer's ``id`` (the monitor takes each at that optimizer's step)."""
    adaptive: bool = False
    """The model clips by norm at adaptive thresholds of its own (``optim_config.clipping``), with no
    ``gradient_clip_val``."""


@runtime_checkable
class ReportsClipping(Protocol):
    """A LightningModule that clips in ``configure_gradient_clipping`` and keeps what it measured in ``clip_state``.

    The monitors check ``isinstance(pl_module, ReportsClipping)`` instead of importing the class that clips.

    Examples:
        >>> class Model:
        ...     clip_state = ClipState()
        >>> isinstance(Model(), ReportsClipping), isinstance(object(), ReportsClipping)
        (True, False)
    """

    clip_state: ClipState


def clip_state_of(module: Any) -> ClipState | None:
    """The ``clip_state`` of a module that is :class:`ReportsClipping`, else None.

    What the monitors ask at every step: ``isinstance`` against a runtime-checkable protocol costs about 10 us.

    Examples:
        >>> class Model:
        ...     clip_state = ClipState()
        >>> clip_state_of(Model()) is Model.clip_state, clip_state_of(object())
        (True, None)
    """
    state = getattr(module, "clip_state", None)
    return state if isinstance(state, ClipState) else None


def fsdp_model(trainer: Any) -> FullyShardedDataParallel | None:
    """The Trainer's model when FSDP wraps it, else None (also without a Trainer).

    Examples:
        >>> from types import SimpleNamespace
        >>> fsdp_model(SimpleNamespace(model=torch.nn.Linear(1, 1))) is None, fsdp_model(None) is None
        (True, True)
    """
    model = getattr(trainer, "model", None)
    return model if isinstance(model, FullyShardedDataParallel) else None


class ClipsShardedGradients(Protocol):
    """What :func:`clip_for_step` uses of an FSDP-wrapped model: its ``clip_grad_norm_``, which all-reduces the
    shard norms and returns the global total."""

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor: ...


# As torch's clip_grad_norm_: gradients kept for second-order optimizers (create_graph=True) get no graph edge here.
@torch.no_grad()
def clip_for_step(
    optimizer: torch.optim.Optimizer,
    named_parameters: Iterable[tuple[str, torch.Tensor]],
    threshold: float | ThresholdOfNorm | None,
    algorithm: Any = "norm",
    *,
    sharded: ClipsShardedGradients | None = None,
    scaler: torch.amp.GradScaler | None = None,
    fold: bool = True,
    group_of: GroupOf | None = None,
    skip_nonfinite: RunningStatsSnapshot | None = None,
) -> ClipResult | None:
    """Clip one optimizer step's gradients the way that fits the optimizer, keeping what was measured.

    First removes the ``grad_scale``/``found_inf`` that an earlier call left on the optimizer if no step consumed
    them. Then, with a threshold (0 or None: no clipping, None is returned):

    * ``sharded`` (the FSDP-wrapped model) and norm clipping: its ``clip_grad_norm_`` clips the sharded gradients
      and returns the global norm, from which the post-clip norm is derived. With an adaptive threshold it is asked
      for the global norm only (``max_norm=inf``), and the local shards are scaled with the coefficient, which every
      rank computes alike from the same global norm.
    * Norm clipping, ``fold`` and an optimizer whose fused step divides by ``grad_scale``
      (:func:`folds_into_step`): :func:`clip_in_step`, the scaling happens inside the step.
    * Otherwise :func:`clip_gradients` scales the gradients here (by norm or by value).

    An enabled ``scaler`` (AMP's ``GradScaler``) with an optimizer that unscales in its step
    (:func:`~lightning_optim.internals.unscales_in_step`) means the gradients are still scaled: folded, the norms
    are divided by the scale for reporting (``GradScaler.step`` multiplies its scale into the divisor); otherwise
    ``scaler.unscale_`` runs first. With ``skip_nonfinite``, a step whose total norm is NaN/Inf is skipped and the
    BatchNorm running statistics put back: folded, through ``found_inf`` and ``torch.where`` (no host sync);
    otherwise the gradients are dropped after one host check of the norm.

    Args:
        optimizer: the optimizer about to step.
        named_parameters: the model's parameters with their names; iterated only when names are needed (under FSDP,
            or for per-group norms), so a generator such as ``module.named_parameters()`` costs nothing otherwise.
        threshold: Lightning's ``gradient_clip_val``, or an adaptive threshold (:data:`ThresholdOfNorm`, norm
            clipping only).
        algorithm: Lightning's ``gradient_clip_algorithm`` (see :func:`algorithm_name`).
        sharded: the FSDP-wrapped model (see :func:`fsdp_model`), or None.
        scaler: the AMP ``GradScaler`` (see :func:`~lightning_optim.internals.grad_scaler`), or None.
        fold: let a fused optimizer's step do norm clipping.
        group_of: maps a parameter name to its group, for per-group norms from the same pass.
        skip_nonfinite: skip non-finite steps, restoring this snapshot's running statistics.

    Examples:
        >>> p = torch.nn.Parameter(torch.zeros(2)); p.grad = torch.tensor([3.0, 4.0])
        >>> sgd = torch.optim.SGD([p], lr=1.0, fused=True)
        >>> result = clip_for_step(sgd, [("p", p)], 1.0)
        >>> result.folded, float(result.total), p.grad.tolist()
        (True, 5.0, [3.0, 4.0])
        >>> clip_for_step(sgd, [("p", p)], None) is None, hasattr(sgd, "grad_scale")
        (True, False)
    """
    forget_step_attributes(optimizer)
    if not threshold:
        return None
    algorithm = algorithm_name(algorithm)
    if callable(threshold) and algorithm != "norm":
        raise ValueError(f"An adaptive threshold clips by norm; gradient_clip_algorithm={algorithm!r} cannot use it.")
    # Lightning leaves the unscaling to the step of an optimizer that does it (its own clipping then raises).
    still_scaled = scaler if scaler is not None and scaler.is_enabled() and unscales_in_step(optimizer) else None
    result: ClipResult | None
    if algorithm == "norm" and sharded is not None:
        named = [(name, p) for name, p in named_parameters if p.grad is not None]
        if callable(threshold):
            total = sharded.clip_grad_norm_(math.inf)
            result = scale_to_norm([p for _, p in named], threshold(total), GradientNorms(total, {}))
        else:
            total = sharded.clip_grad_norm_(threshold)
            result = expected_after_clipping(total, threshold, algorithm)
    else:
        # Names are only needed for per-group norms, which the monitor asks for on logging steps.
        names = {id(parameter): name for name, parameter in named_parameters} if group_of else {}
        named = [(names.get(id(p), ""), p) for group in optimizer.param_groups for p in group["params"]]
        if algorithm == "norm" and fold and folds_into_step(optimizer):
            result = clip_in_step(
                named,
                optimizer,
                threshold,
                group_of=group_of,
                skip_nonfinite=skip_nonfinite is not None,
                scaled_by=scale_tensor(still_scaled) if still_scaled is not None else None,
            )
        else:
            if still_scaled is not None:
                still_scaled.unscale_(optimizer)
            result = clip_gradients(named, threshold, algorithm, group_of=group_of)
    if skip_nonfinite is not None and result is not None:
        skip_if_nonfinite(result, [p for _, p in named], skip_nonfinite)
    return result
