"""Gradient clipping that keeps what it measured: the norm before clipping, after it, and whether it fired.

``torch.nn.utils.clip_grad_norm_`` already computes the total norm; Lightning's own clipping throws it away.
:func:`clip_gradients` computes it once, scales the gradients with it, and returns it, on the device.
:func:`clip_in_step` computes it once and leaves the scaling to a fused optimizer's step, which already reads
every gradient: clipping then costs one read of the gradients instead of three passes. :func:`clip_for_step` picks
between them (and FSDP's own clipping, AMP's still-scaled gradients, the skip of a non-finite step) for one
optimizer step; a model that clips with it keeps the result in a :class:`ClipState`, which the monitors find
through the :class:`ReportsClipping` protocol.

A threshold is a number (the Trainer's ``gradient_clip_val``) or an adaptive one (:data:`ThresholdOfNorm`: this
step's total norm in, a device tensor out, see :mod:`lightning_optim.clipping.adaptive`); either way nothing is
synced to the host.

Examples:
    >>> import torch
    >>> p = torch.nn.Parameter(torch.zeros(2)); p.grad = torch.tensor([3.0, 4.0])
    >>> result = clip_gradients([("p", p)], max_norm=1.0, algorithm="norm")
    >>> float(result.total), round(float(result.clipped_norm), 4), bool(result.clipped)
    (5.0, 1.0, True)
    >>> [round(g, 4) for g in p.grad.tolist()]
    [0.6, 0.8]
"""

from __future__ import annotations

import functools
import inspect
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch.distributed.fsdp import FullyShardedDataParallel

from lightning_optim.internals import scale_tensor, torch_optimizer, unscales_in_step
from lightning_optim.stats import GradientNorms, GroupOf, RunningStatsSnapshot, gradient_norms
from lightning_optim.stats.distributed import local_tensor

__all__ = [
    "ClipResult",
    "ClipState",
    "ReportsClipping",
    "ThresholdOfNorm",
    "algorithm_name",
    "check_clip_threshold",
    "check_threshold",
    "clip_for_step",
    "clip_gradients",
    "clip_in_step",
    "expected_after_clipping",
    "folds_into_step",
    "forget_step_attributes",
    "fsdp_model",
    "skip_in_step",
]

_EPS = 1e-6
"""The epsilon torch's ``clip_grad_norm_`` adds to the norm in the clip coefficient."""

ThresholdOfNorm = Callable[[torch.Tensor], torch.Tensor]
"""An adaptive threshold: called once per optimizer step with the total norm before clipping (a device tensor), it
returns that step's threshold as a device tensor (and updates its own history)."""


def clip_coefficient(total: torch.Tensor, max_norm: float | torch.Tensor) -> torch.Tensor:
    """``min(1, max_norm / (total + 1e-6))``: what ``clip_grad_norm_`` multiplies the gradients by (``max_norm`` a
    number or a device tensor).

    Examples:
        >>> round(float(clip_coefficient(torch.tensor(4.0), 2.0)), 6), float(clip_coefficient(torch.tensor(1.0), 2.0))
        (0.5, 1.0)
    """
    return torch.clamp(max_norm / (total + _EPS), max=1.0)


@dataclass
class ClipResult:
    """What one clipping call measured, as tensors on the gradients' device.

    ``total`` and ``groups`` are norms before clipping, ``clipped_norm`` the total norm after it; for value
    clipping (which computes no norm) they are None. ``folded`` is True when the optimizer's fused step does the
    scaling, see :func:`clip_in_step`; ``found_inf`` is then the device flag with which that step skips a
    non-finite step, when asked to (None: a skip, if any, is decided on the host from ``total``).
    """

    algorithm: str
    threshold: float | torch.Tensor
    """The threshold clipped at: a number, or the device tensor an adaptive threshold gave for this step."""
    total: torch.Tensor | None = None
    clipped_norm: torch.Tensor | None = None
    clipped: torch.Tensor | None = None
    groups: dict[str, torch.Tensor] = field(default_factory=dict)
    folded: bool = False
    found_inf: torch.Tensor | None = None


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


def clip_gradients(
    named_parameters: Sequence[tuple[str, torch.Tensor]],
    max_norm: float | ThresholdOfNorm,
    algorithm: str = "norm",
    norm_type: float = 2.0,
    group_of: GroupOf | None = None,
) -> ClipResult:
    """Clip gradients by total norm (or by value) and return what was measured, without any host sync.

    With ``group_of``, the per-group norms come out of the same single pass as the total. An adaptive ``max_norm``
    is given the total norm and clips at the tensor it returns.
    """
    parameters = [parameter for _, parameter in named_parameters if parameter.grad is not None]
    if algorithm == "value":
        assert not callable(max_norm)  # clip_for_step refuses an adaptive threshold for value clipping
        torch.nn.utils.clip_grad_value_(parameters, max_norm)
        return ClipResult(algorithm, max_norm)
    norms = gradient_norms(named_parameters, group_of, norm_type)
    return scale_to_norm(parameters, threshold_for(max_norm, norms.total), norms)


def threshold_for(max_norm: float | ThresholdOfNorm, total: torch.Tensor) -> float | torch.Tensor:
    """This step's threshold: ``max_norm`` itself, or what the adaptive one gives for ``total``.

    Examples:
        >>> threshold_for(1.0, torch.tensor(5.0)), threshold_for(lambda total: total / 2, torch.tensor(5.0))
        (1.0, tensor(2.5000))
    """
    return max_norm(total) if callable(max_norm) else max_norm


def scale_to_norm(
    parameters: Sequence[torch.Tensor], max_norm: float | torch.Tensor, norms: GradientNorms
) -> ClipResult:
    """Scale the gradients by ``min(1, max_norm / (total + 1e-6))`` exactly as ``clip_grad_norm_`` does.

    A ``DTensor`` gradient is scaled through its local part: every rank has the same global total, so the same
    coefficient, and a foreach kernel may then take sharded and plain gradients together.
    """
    coefficient = clip_coefficient(norms.total, max_norm)
    by_device: dict[torch.device, list[torch.Tensor]] = defaultdict(list)
    for parameter in parameters:
        grad = parameter.grad
        assert grad is not None  # the callers pass the parameters that have gradients
        grad = local_tensor(grad)
        by_device[grad.device].append(grad)
    for device, grads in by_device.items():
        factor = coefficient.to(device)
        if any(grad.is_sparse for grad in grads):
            for grad in grads:
                grad.mul_(factor)
        else:
            torch._foreach_mul_(grads, factor)
    return ClipResult("norm", max_norm, norms.total, norms.total * coefficient, coefficient < 1.0, norms.groups)


def expected_after_clipping(total: torch.Tensor, max_norm: float | None, algorithm: str | None) -> ClipResult | None:
    """What norm clipping at ``max_norm`` made of a gradient whose norm was ``total`` (None if no norm clipping).

    Used when something else (Lightning's own clipping) clipped and only the norm before it is known.
    """
    if not max_norm or algorithm != "norm":
        return None
    coefficient = clip_coefficient(total, max_norm)
    return ClipResult("norm", max_norm, total, total * coefficient, coefficient < 1.0)


def check_clip_threshold(trainer: Any) -> None:
    """Refuse a Trainer's negative or non-finite ``gradient_clip_val`` before the first training step.

    ``clip_grad_norm_`` at a negative threshold multiplies the gradients by a negative coefficient, so every
    clipped step climbs the loss; Lightning's own clipping skips such a threshold silently. 0 and None mean no
    clipping.

    Examples:
        >>> from types import SimpleNamespace
        >>> check_clip_threshold(SimpleNamespace(gradient_clip_val=0.5))
        >>> check_clip_threshold(SimpleNamespace(gradient_clip_val=-1))
        Traceback (most recent call last):
        ...
        ValueError: Trainer(gradient_clip_val=-1) is not valid. Expected a finite threshold > 0, e.g. 1.0, or 0 / \
None for no clipping (a negative threshold flips the sign of the clipped gradients: gradient ascent).
    """
    check_threshold(getattr(trainer, "gradient_clip_val", None), "Trainer")


def check_threshold(threshold: float | None, where: str) -> None:
    """Refuse a negative or non-finite clipping threshold given to ``where`` (``Trainer``, ``clip_gradients``).

    Raises:
        ValueError: naming ``where``, the value and what would work.

    Examples:
        >>> check_threshold(float("nan"), "clip_gradients")
        Traceback (most recent call last):
        ...
        ValueError: clip_gradients(gradient_clip_val=nan) is not valid. Expected a finite threshold > 0, e.g. 1.0, \
or 0 / None for no clipping (a negative threshold flips the sign of the clipped gradients: gradient ascent).
    """
    if threshold is None or (math.isfinite(threshold) and threshold >= 0):
        return
    raise ValueError(
        f"{where}(gradient_clip_val={threshold!r}) is not valid. Expected a finite threshold > 0, e.g. 1.0, or 0 / "
        "None for no clipping (a negative threshold flips the sign of the clipped gradients: gradient ascent)."
    )


_FOLDED = "_lightning_optim_folded"
"""Optimizer attribute holding the ``(grad_scale, found_inf)`` tensors this module set, until the step ran."""
_HOOK = "_lightning_optim_fold_hook"


def folds_into_step(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step`` divides the gradients by ``optimizer.grad_scale`` and skips the update when
    ``optimizer.found_inf`` is nonzero, in its own kernel.

    That is ``GradScaler``'s contract with optimizers that set ``_step_supports_amp_scaling`` (torch's Adam, AdamW,
    SGD and Adagrad with ``fused=True``); every parameter group must be fused.

    Examples:
        >>> p = torch.nn.Parameter(torch.zeros(2))
        >>> folds_into_step(torch.optim.AdamW([p], fused=True)), folds_into_step(torch.optim.AdamW([p]))
        (True, False)
    """
    optimizer = torch_optimizer(optimizer)
    if not unscales_in_step(optimizer):
        return False
    if _step_takes_grad_scaler(type(optimizer)):  # type: ignore[arg-type]  # classes hash; typeshed disagrees
        return False  # the deprecated contract: GradScaler passes itself instead of setting the attributes
    return all(group.get("fused") for group in optimizer.param_groups)


@functools.cache
def _step_takes_grad_scaler(cls: type[torch.optim.Optimizer]) -> bool:
    # Once per class: this is asked at every optimizer step, and inspect.signature is slow.
    return "grad_scaler" in inspect.signature(cls.step).parameters


def clip_in_step(
    named_parameters: Sequence[tuple[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    max_norm: float | ThresholdOfNorm,
    norm_type: float = 2.0,
    group_of: GroupOf | None = None,
    skip_nonfinite: bool = False,
    scaled_by: torch.Tensor | None = None,
) -> ClipResult:
    """Clip by total norm inside the next ``optimizer.step``: measure the norm once, and set the optimizer's
    gradient divisor (``grad_scale``) to ``max(1, (total + 1e-6) / max_norm)``, the inverse of
    ``clip_grad_norm_``'s coefficient. Nothing is synced to the host and no gradient is written here.

    The fused kernel writes the divided gradients back, so after the step they are the clipped gradients, as with
    :func:`clip_gradients`. With ``skip_nonfinite``, ``found_inf`` is set where the total is not finite, and the
    kernel leaves the parameters and the optimizer state (step counts included) as they were; the flag is also
    returned (``ClipResult.found_inf``) so that the caller can undo what else the step changed, on the device. One
    exception: a fused SGD with momentum before its first step gets no ``found_inf`` (torch would corrupt its
    momentum buffers), and the caller skips the ordinary way. The attributes are removed after the step by a step
    post-hook registered once per optimizer.

    Args:
        named_parameters: the optimizer's parameters with their names.
        optimizer: an optimizer for which :func:`folds_into_step` holds.
        max_norm: the clipping threshold, or an adaptive one (given the total norm without AMP's scale).
        norm_type: the p of the p-norm.
        group_of: maps a parameter name to its group, for per-group norms from the same pass.
        skip_nonfinite: skip the step when the total norm is NaN/Inf (see above for the one exception).
        scaled_by: the factor the gradients still carry (AMP's ``GradScaler`` scale when the optimizer unscales in
            its step): the norms are reported without it; ``GradScaler.step`` multiplies it into the divisor.

    Examples:
        >>> p = torch.nn.Parameter(torch.zeros(2)); p.grad = torch.tensor([3.0, 4.0])
        >>> sgd = torch.optim.SGD([p], lr=1.0, fused=True)
        >>> result = clip_in_step([("p", p)], sgd, max_norm=1.0)
        >>> sgd.step()
        >>> float(result.total), bool(result.clipped), [round(x, 4) for x in p.tolist()]
        (5.0, True, [-0.6, -0.8])
    """
    parameters = [parameter for _, parameter in named_parameters if parameter.grad is not None]
    norms = gradient_norms(named_parameters, group_of, norm_type)
    if scaled_by is not None:
        norms = GradientNorms(norms.total / scaled_by, {name: n / scaled_by for name, n in norms.groups.items()})
    threshold = threshold_for(max_norm, norms.total)
    coefficient = clip_coefficient(norms.total, threshold)
    divisor = coefficient.reciprocal().to(torch.float32)
    found_inf = None
    # torch's fused SGD allocates its momentum buffers with empty_like before a skipped first step and treats them
    # as initialized afterwards: that one step is left to the caller's ordinary skip (found_inf stays None).
    if skip_nonfinite and not _skip_corrupts_state(optimizer, parameters):
        found_inf = (~torch.isfinite(norms.total)).to(torch.float32)
    _set_step_attributes(optimizer, divisor, found_inf)
    return ClipResult(
        "norm",
        threshold,
        norms.total,
        norms.total * coefficient,
        coefficient < 1.0,
        norms.groups,
        folded=True,
        found_inf=found_inf,
    )


def _skip_corrupts_state(optimizer: torch.optim.Optimizer, parameters: Sequence[torch.Tensor]) -> bool:
    optimizer = torch_optimizer(optimizer)
    stepping = {id(parameter) for parameter in parameters}
    return isinstance(optimizer, torch.optim.SGD) and any(
        group["momentum"] != 0 and optimizer.state.get(p, {}).get("momentum_buffer") is None
        for group in optimizer.param_groups
        for p in group["params"]
        if id(p) in stepping
    )


def skip_in_step(optimizer: torch.optim.Optimizer, parameters: Sequence[torch.Tensor], skip: torch.Tensor) -> bool:
    """Make the next fused step skip itself where the 0-d ``skip`` is nonzero, with no host sync: ``found_inf``,
    or-ed with the one :func:`clip_in_step` set (its ``grad_scale`` kept).

    Returns False, setting nothing, where the step cannot skip itself (:func:`folds_into_step` does not hold, or
    the one exception of :func:`clip_in_step`: fused SGD with momentum before its first step); the caller skips then.

    Examples:
        >>> p = torch.nn.Parameter(torch.zeros(2)); p.grad = torch.tensor([3.0, 4.0])
        >>> sgd = torch.optim.SGD([p], lr=1.0, fused=True)
        >>> skip_in_step(sgd, [p], torch.tensor(True)), skip_in_step(torch.optim.SGD([p]), [p], torch.tensor(True))
        (True, False)
        >>> sgd.step(); p.tolist(), hasattr(sgd, "found_inf")
        ([0.0, 0.0], False)
    """
    if not folds_into_step(optimizer) or _skip_corrupts_state(optimizer, parameters):
        return False
    grad_scale, found_inf = torch_optimizer(optimizer).__dict__.get(_FOLDED, (None, None))
    flag = skip.to(torch.float32)
    _set_step_attributes(optimizer, grad_scale, flag if found_inf is None else torch.maximum(found_inf, flag))
    return True


def _set_step_attributes(
    optimizer: torch.optim.Optimizer, grad_scale: torch.Tensor | None, found_inf: torch.Tensor | None
) -> None:
    optimizer = torch_optimizer(optimizer)
    if _HOOK not in optimizer.__dict__:
        optimizer.__dict__[_HOOK] = optimizer.register_step_post_hook(_forget_step_attributes)
    # The attributes of GradScaler's contract with fused optimizers, which torch does not declare on Optimizer.
    optimizer.grad_scale = grad_scale  # type: ignore[attr-defined]
    optimizer.found_inf = found_inf  # type: ignore[attr-defined]
    optimizer.__dict__[_FOLDED] = (grad_scale, found_inf)


def forget_step_attributes(optimizer: torch.optim.Optimizer) -> None:
    """Remove the ``grad_scale``/``found_inf`` that :func:`clip_in_step` set, if a step has not consumed them.

    Attributes that someone else set (``GradScaler`` sets its own, and deletes them after its step) are left alone.
    """
    optimizer = torch_optimizer(optimizer)
    folded = optimizer.__dict__.pop(_FOLDED, None)
    if folded is None:
        return
    for name, value in zip(("grad_scale", "found_inf"), folded, strict=True):
        if name in optimizer.__dict__ and optimizer.__dict__[name] is value:
            del optimizer.__dict__[name]


def _forget_step_attributes(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
    forget_step_attributes(optimizer)


def algorithm_name(algorithm: Any) -> str:
    """``"norm"`` or ``"value"`` from Lightning's ``gradient_clip_algorithm`` (a string, its enum, or None: norm).

    Examples:
        >>> algorithm_name(None), algorithm_name("value")
        ('norm', 'value')
    """
    return str(getattr(algorithm, "value", algorithm) or "norm")


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
        _skip_if_nonfinite(result, named, skip_nonfinite)
    return result


def _skip_if_nonfinite(
    result: ClipResult, named: list[tuple[str, torch.Tensor]], snapshot: RunningStatsSnapshot
) -> None:
    if result.found_inf is not None:
        # The fused step skips itself on found_inf; what this batch's forward did to BatchNorm is undone alike.
        snapshot.restore_where(result.found_inf)
    elif result.total is not None and not torch.isfinite(result.total):
        for _, parameter in named:
            parameter.grad = None
        snapshot.restore()
