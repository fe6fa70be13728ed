"""The fused-step contract: torch's fused Adam, AdamW, SGD and Adagrad divide the gradients by
``optimizer.grad_scale`` and skip the update where ``optimizer.found_inf`` is nonzero, in their one kernel (AMP's
``GradScaler`` contract). :func:`clip_in_step` folds norm clipping into that step (one read of the gradients instead
of three passes) and :func:`skip_in_step` makes the step skip itself, both without a host sync.

Examples:
    >>> import torch
    >>> p = torch.nn.Parameter(torch.zeros(2)); p.grad = torch.tensor([3.0, 4.0])
    >>> sgd = torch.optim.SGD([p], lr=1.0, fused=True)
    >>> result = clip_in_step([("p", p)], sgd, max_norm=1.0)
    >>> sgd.step()
    >>> float(result.total), [round(x, 4) for x in p.tolist()]
    (5.0, [-0.6, -0.8])
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence

import torch

from lightning_optim.clipping.arithmetic import ClipResult, ThresholdOfNorm, clip_coefficient, threshold_for
from lightning_optim.internals import torch_optimizer, unscales_in_step
from lightning_optim.stats import GradientNorms, GroupOf, gradient_norms

__all__ = ["clip_in_step", "folds_into_step", "forget_step_attributes", "skip_in_step"]

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
