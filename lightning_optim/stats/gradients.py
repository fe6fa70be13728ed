"""Pure gradient statistics: fused (foreach) norms that stay on the device.

Nothing here calls ``.item()``: the results are tensors, turned into Python numbers by the callbacks only on
logging steps. Sparse gradients (``Embedding(sparse=True)``) are measured through their coalesced values, since
torch's norm kernels have no sparse implementation.

Examples:
    >>> import torch
    >>> layer = torch.nn.Linear(3, 1)
    >>> layer(torch.ones(2, 3)).sum().backward()
    >>> norms = gradient_norms(layer.named_parameters(), group_of=lambda name: name)
    >>> round(float(norms.total), 4), sorted(norms.groups)
    (4.0, ['bias', 'weight'])
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

__all__ = ["GradientNorms", "GroupOf", "dense_gradient", "gradient_norms", "module_path", "total_norm"]

GroupOf = Callable[[str], str | tuple[str, ...]]
"""Maps a parameter's qualified name to the group its norm counts in, or to several (a layer and a parameter group)."""


def dense_gradient(parameter: torch.Tensor) -> torch.Tensor | None:
    """The gradient's values as a dense tensor (a sparse gradient's coalesced values), or None."""
    grad = parameter.grad
    if grad is None:
        return None
    return grad.coalesce().values() if grad.is_sparse else grad


def total_norm(parameters: Iterable[torch.Tensor], norm_type: float = 2.0) -> torch.Tensor:
    """The norm of all gradients together, in one fused pass (``torch.nn.utils.get_total_norm``).

    Examples:
        >>> p = torch.nn.Parameter(torch.zeros(2)); p.grad = torch.tensor([3.0, 4.0])
        >>> total_norm([p])
        tensor(5.)
    """
    grads = [grad for grad in map(dense_gradient, parameters) if grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm(grads, norm_type=norm_type, foreach=True)


@dataclass
class GradientNorms:
    """The total gradient norm and the norm of each group of parameters, all 0-dim tensors on the device."""

    total: torch.Tensor
    groups: dict[str, torch.Tensor] = field(default_factory=dict)


def gradient_norms(
    named_parameters: Iterable[tuple[str, torch.Tensor]],
    group_of: GroupOf | None,
    norm_type: float = 2.0,
) -> GradientNorms:
    """Per-group and total gradient norms from a single fused pass over the gradients.

    ``group_of`` maps a parameter's qualified name to its group (a module path at some depth, or a
    parameter-group name), or to a tuple of groups it counts in (both). Each gradient's norm is taken once
    (``torch._foreach_norm``); the group and total norms are norms of those norms. Without ``group_of`` only the
    total is taken (:func:`total_norm`).

    Example:
        >>> layer = torch.nn.Linear(3, 1)
        >>> layer(torch.ones(2, 3)).sum().backward()
        >>> norms = gradient_norms(layer.named_parameters(), lambda name: (name, "all"))
        >>> {group: round(float(norm), 4) for group, norm in sorted(norms.groups.items())}
        {'all': 4.0, 'bias': 2.0, 'weight': 3.4641}
    """
    if group_of is None:
        return GradientNorms(total_norm([parameter for _, parameter in named_parameters], norm_type))
    names, grads = [], []
    for name, parameter in named_parameters:
        grad = dense_gradient(parameter)
        if grad is not None:
            names.append(name)
            grads.append(grad)
    if not grads:
        return GradientNorms(torch.zeros(()))
    by_device_dtype: dict[tuple[torch.device, torch.dtype], list[int]] = defaultdict(list)
    for index, grad in enumerate(grads):
        by_device_dtype[(grad.device, grad.dtype)].append(index)
    device = grads[0].device
    per_tensor: list[torch.Tensor] = [torch.zeros(())] * len(grads)
    for indices in by_device_dtype.values():
        norms = torch._foreach_norm([grads[i] for i in indices], norm_type)
        for index, norm in zip(indices, norms, strict=True):
            per_tensor[index] = norm.to(device=device, dtype=torch.float32)
    members: dict[str, list[torch.Tensor]] = defaultdict(list)
    for name, norm in zip(names, per_tensor, strict=True):
        named_groups = group_of(name)
        for group in (named_groups,) if isinstance(named_groups, str) else named_groups:
            members[group].append(norm)
    groups = {group: torch.linalg.vector_norm(torch.stack(norms), norm_type) for group, norms in members.items()}
    return GradientNorms(torch.linalg.vector_norm(torch.stack(per_tensor), norm_type), groups)


def module_path(depth: int) -> Callable[[str], str]:
    """Group parameter names by their module path cut at ``depth`` (``encoder.layers.0.weight`` → ``encoder.layers``).

    Examples:
        >>> module_path(2)("encoder.layers.0.attn.weight"), module_path(2)("head.weight")
        ('encoder.layers', 'head')
    """

    def group(name: str) -> str:
        parts = name.split(".")[:-1] or name.split(".")
        return ".".join(parts[:depth])

    return group
