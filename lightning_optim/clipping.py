"""Gradient clipping that keeps what it measured: the norm before clipping, after it, and whether it fired.

``torch.nn.utils.clip_grad_norm_`` already computes the total norm; Lightning's own clipping throws it away.
:func:`clip_gradients` computes it once, scales the gradients with it, and returns it, on the device.

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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from lightning_optim.stats import GradientNorms, gradient_norms, total_norm

_EPS = 1e-6
"""The epsilon torch's ``clip_grad_norm_`` adds to the norm in the clip coefficient."""


@dataclass
class ClipResult:
    """What one clipping call measured, as tensors on the gradients' device.

    ``total`` and ``groups`` are norms before clipping, ``clipped_norm`` the total norm after it; for value
    clipping (which computes no norm) they are None.
    """

    algorithm: str
    threshold: float
    total: torch.Tensor | None = None
    clipped_norm: torch.Tensor | None = None
    clipped: torch.Tensor | None = None
    groups: dict[str, torch.Tensor] = field(default_factory=dict)


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
    norms = (
        gradient_norms(named_parameters, group_of, norm_type)
        if group_of is not None
        else GradientNorms(total_norm(parameters, norm_type))
    )
    return scale_to_norm(parameters, max_norm, norms)


def scale_to_norm(parameters: Sequence[torch.Tensor], max_norm: float, norms: GradientNorms) -> ClipResult:
    """Scale the gradients by ``min(1, max_norm / (total + 1e-6))`` exactly as ``clip_grad_norm_`` does."""
    coefficient = torch.clamp(max_norm / (norms.total + _EPS), max=1.0)
    sparse = [p for p in parameters if p.grad.is_sparse]
    dense = [p for p in parameters if not p.grad.is_sparse]
    torch.nn.utils.clip_grads_with_norm_(dense, max_norm, norms.total)
    for parameter in sparse:
        parameter.grad.mul_(coefficient.to(parameter.grad.device))
    return ClipResult("norm", max_norm, norms.total, norms.total * coefficient, coefficient < 1.0, norms.groups)


def expected_after_clipping(total: torch.Tensor, max_norm: float | None, algorithm: str | None) -> ClipResult | None:
    """What norm clipping at ``max_norm`` made of a gradient whose norm was ``total`` (None if no norm clipping).

    Used when something else (Lightning's own clipping) clipped and only the norm before it is known.
    """
    if not max_norm or algorithm != "norm":
        return None
    coefficient = torch.clamp(max_norm / (total + _EPS), max=1.0)
    return ClipResult("norm", max_norm, total, total * coefficient, coefficient < 1.0)
