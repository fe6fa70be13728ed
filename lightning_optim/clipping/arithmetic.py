"""Clipping arithmetic that keeps what it measured: the norm before clipping, after it, and whether it fired.

``torch.nn.utils.clip_grad_norm_`` already computes the total norm; Lightning's own clipping throws it away.
:func:`clip_gradients` computes it once, scales the gradients with it, and returns it, on the device, in a
:class:`ClipResult`. A threshold is a number (the Trainer's ``gradient_clip_val``) or an adaptive one
(:data:`ThresholdOfNorm`: this step's total norm in, a device tensor out, see :mod:`lightning_optim.clipping.adaptive`);
either way nothing is synced to the host.

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

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lightning_optim.stats import GradientNorms, GroupOf, gradient_norms
from lightning_optim.stats.distributed import local_tensor

__all__ = [
    "ClipResult",
    "ThresholdOfNorm",
    "algorithm_name",
    "check_clip_threshold",
    "check_threshold",
    "clip_coefficient",
    "clip_gradients",
    "expected_after_clipping",
    "scale_to_norm",
    "threshold_for",
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


def algorithm_name(algorithm: Any) -> str:
    """``"norm"`` or ``"value"`` from Lightning's ``gradient_clip_algorithm`` (a string, its enum, or None: norm).

    Examples:
        >>> algorithm_name(None), algorithm_name("value")
        ('norm', 'value')
    """
    return str(getattr(algorithm, "value", algorithm) or "norm")
