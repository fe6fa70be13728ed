"""Gradient clipping that keeps what it measured: the norm before clipping, after it, and whether it fired.

``torch.nn.utils.clip_grad_norm_`` already computes the total norm; Lightning's own clipping throws it away.
:func:`clip_gradients` computes it once, scales the gradients with it, and returns it, on the device.
:func:`clip_in_step` computes it once and leaves the scaling to a fused optimizer's step, which already reads
every gradient: clipping then costs one read of the gradients instead of three passes.

Example:
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lightning_optim.stats import GradientNorms, gradient_norms

_EPS = 1e-6
"""The epsilon torch's ``clip_grad_norm_`` adds to the norm in the clip coefficient."""


def clip_coefficient(total: torch.Tensor, max_norm: float) -> torch.Tensor:
    """``min(1, max_norm / (total + 1e-6))``: what ``clip_grad_norm_`` multiplies the gradients by.

    Example:
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
    threshold: float
    total: torch.Tensor | None = None
    clipped_norm: torch.Tensor | None = None
    clipped: torch.Tensor | None = None
    groups: dict[str, torch.Tensor] = field(default_factory=dict)
    folded: bool = False
    found_inf: torch.Tensor | None = None


def clip_gradients(
    named_parameters: Sequence[tuple[str, torch.Tensor]],
    max_norm: float,
    algorithm: str = "norm",
    norm_type: float = 2.0,
    group_of: Callable[[str], str] | None = None,
) -> ClipResult:
    """Clip gradients by total norm (or by value) and return what was measured, without any host sync.

    With ``group_of``, the per-group norms come out of the same single pass as the total.
    """
    parameters = [parameter for _, parameter in named_parameters if parameter.grad is not None]
    if algorithm == "value":
        torch.nn.utils.clip_grad_value_(parameters, max_norm)
        return ClipResult(algorithm, max_norm)
    norms = gradient_norms(named_parameters, group_of, norm_type)
    return scale_to_norm(parameters, max_norm, norms)


def scale_to_norm(parameters: Sequence[torch.Tensor], max_norm: float, norms: GradientNorms) -> ClipResult:
    """Scale the gradients by ``min(1, max_norm / (total + 1e-6))`` exactly as ``clip_grad_norm_`` does."""
    coefficient = clip_coefficient(norms.total, max_norm)
    by_device: dict[torch.device, list[torch.Tensor]] = defaultdict(list)
    for parameter in parameters:
        by_device[parameter.grad.device].append(parameter.grad)
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

    Example:
        >>> from types import SimpleNamespace
        >>> check_clip_threshold(SimpleNamespace(gradient_clip_val=0.5))
        >>> check_clip_threshold(SimpleNamespace(gradient_clip_val=-1))
        Traceback (most recent call last):
        ...
        ValueError: Trainer(gradient_clip_val=-1) is not valid. Expected a finite threshold > 0, e.g. 1.0, or 0 / \
None for no clipping (a negative threshold flips the sign of the clipped gradients: gradient ascent).
    """
    threshold = getattr(trainer, "gradient_clip_val", None)
    if threshold is None or (math.isfinite(threshold) and threshold >= 0):
        return
    raise ValueError(
        f"Trainer(gradient_clip_val={threshold!r}) is not valid. Expected a finite threshold > 0, e.g. 1.0, or 0 / "
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

    Example:
        >>> p = torch.nn.Parameter(torch.zeros(2))
        >>> folds_into_step(torch.optim.AdamW([p], fused=True)), folds_into_step(torch.optim.AdamW([p]))
        (True, False)
    """
    optimizer = getattr(optimizer, "_optimizer", optimizer)  # a LightningOptimizer wraps the torch one
    if not getattr(optimizer, "_step_supports_amp_scaling", False):
        return False
    if _step_takes_grad_scaler(type(optimizer)):
        return False  # the deprecated contract: GradScaler passes itself instead of setting the attributes
    return all(group.get("fused") for group in optimizer.param_groups)


@functools.cache
def _step_takes_grad_scaler(cls: type[torch.optim.Optimizer]) -> bool:
    # Once per class: this is asked at every optimizer step, and inspect.signature is slow.
    return "grad_scaler" in inspect.signature(cls.step).parameters


def clip_in_step(
    named_parameters: Sequence[tuple[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    max_norm: float,
    norm_type: float = 2.0,
    group_of: Callable[[str], str] | None = None,
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
        max_norm: the clipping threshold.
        norm_type: the p of the p-norm.
        group_of: maps a parameter name to its group, for per-group norms from the same pass.
        skip_nonfinite: skip the step when the total norm is NaN/Inf (see above for the one exception).
        scaled_by: the factor the gradients still carry (AMP's ``GradScaler`` scale when the optimizer unscales in
            its step): the norms are reported without it; ``GradScaler.step`` multiplies it into the divisor.

    Example:
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
    coefficient = clip_coefficient(norms.total, max_norm)
    divisor = coefficient.reciprocal().to(torch.float32)
    found_inf = None
    # torch's fused SGD allocates its momentum buffers with empty_like before a skipped first step and treats them
    # as initialized afterwards: that one step is left to the caller's ordinary skip (found_inf stays None).
    if skip_nonfinite and not _skip_corrupts_state(optimizer, parameters):
        found_inf = (~torch.isfinite(norms.total)).to(torch.float32)
    _set_step_attributes(optimizer, divisor, found_inf)
    return ClipResult(
        "norm",
        max_norm,
        norms.total,
        norms.total * coefficient,
        coefficient < 1.0,
        norms.groups,
        folded=True,
        found_inf=found_inf,
    )


def _skip_corrupts_state(optimizer: torch.optim.Optimizer, parameters: Sequence[torch.Tensor]) -> bool:
    optimizer = getattr(optimizer, "_optimizer", optimizer)
    stepping = {id(parameter) for parameter in parameters}
    return isinstance(optimizer, torch.optim.SGD) and any(
        group["momentum"] != 0 and optimizer.state.get(p, {}).get("momentum_buffer") is None
        for group in optimizer.param_groups
        for p in group["params"]
        if id(p) in stepping
    )


def _set_step_attributes(
    optimizer: torch.optim.Optimizer, grad_scale: torch.Tensor, found_inf: torch.Tensor | None
) -> None:
    optimizer = getattr(optimizer, "_optimizer", optimizer)
    if _HOOK not in optimizer.__dict__:
        optimizer.__dict__[_HOOK] = optimizer.register_step_post_hook(_forget_step_attributes)
    optimizer.grad_scale = grad_scale
    optimizer.found_inf = found_inf
    optimizer.__dict__[_FOLDED] = (grad_scale, found_inf)


def forget_step_attributes(optimizer: torch.optim.Optimizer) -> None:
    """Remove the ``grad_scale``/``found_inf`` that :func:`clip_in_step` set, if a step has not consumed them.

    Attributes that someone else set (``GradScaler`` sets its own, and deletes them after its step) are left alone.
    """
    optimizer = getattr(optimizer, "_optimizer", optimizer)
    folded = optimizer.__dict__.pop(_FOLDED, None)
    if folded is None:
        return
    for name, value in zip(("grad_scale", "found_inf"), folded, strict=True):
        if name in optimizer.__dict__ and optimizer.__dict__[name] is value:
            del optimizer.__dict__[name]


def _forget_step_attributes(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
    forget_step_attributes(optimizer)
