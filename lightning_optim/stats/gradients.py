"""Pure gradient statistics: fused (foreach) norms that stay on the device.

Nothing here calls ``.item()``: the results are tensors, turned into Python numbers by the callbacks only on
logging steps. Sparse gradients (``Embedding(sparse=True)``) are measured through their coalesced values, since
torch's norm kernels have no sparse implementation. ``DTensor`` gradients (FSDP2, tensor parallelism) are measured
through their local parts and reduced across the ranks in one collective (:mod:`lightning_optim.stats.distributed`).

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
import torch.distributed as dist

from lightning_optim.stats.distributed import group_norms, is_distributed, local_tensor, reduce_norms, replica_weight

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
    """The norm of all gradients together, in one fused pass (``torch.nn.utils.get_total_norm``); of ``DTensor``
    gradients, the global norm, the same on every rank (one ``all_reduce``).

    Examples:
        >>> p = torch.nn.Parameter(torch.zeros(2)); p.grad = torch.tensor([3.0, 4.0])
        >>> total_norm([p])
        tensor(5.)
    """
    grads = [grad for grad in map(dense_gradient, parameters) if grad is not None]
    if not grads:
        return torch.zeros(())
    if any(map(is_distributed, grads)):
        return _sharded_norms([""] * len(grads), grads, None, norm_type).total
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
    (``torch._foreach_norm``); the group and total norms are norms of those norms, the groups' all at once
    (:func:`~lightning_optim.stats.distributed.group_norms`: a few kernels whatever their number). Without
    ``group_of`` only the total is taken (:func:`total_norm`).

    Examples:
        >>> layer = torch.nn.Linear(3, 1)
        >>> layer(torch.ones(2, 3)).sum().backward()
        >>> norms = gradient_norms(layer.named_parameters(), lambda name: (name, "all"))
        >>> {group: round(float(norm), 4) for group, norm in sorted(norms.groups.items())}
        {'all': 4.0, 'bias': 2.0, 'weight': 3.4641}

    When a gradient is a ``DTensor``, each local part's norm is taken, and the total and all the group norms are
    reduced across the ranks in one ``all_reduce`` (:func:`~lightning_optim.stats.distributed.reduce_norms`): the
    global norms, equal on every rank.
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
    if any(map(is_distributed, grads)):
        return _sharded_norms(names, grads, group_of, norm_type)
    per_tensor = _local_norms(grads, norm_type)
    slots: dict[str, int] = {}
    entries = [
        (index, slots.setdefault(group, len(slots)))
        for index, name in enumerate(names)
        for group in _groups(group_of, name)
    ]
    norms = group_norms(
        [per_tensor[index] for index, _ in entries], [slot for _, slot in entries], len(slots), norm_type
    )
    total = torch.linalg.vector_norm(torch.stack(per_tensor), norm_type)
    return GradientNorms(total, dict(zip(slots, norms.unbind(), strict=True)))


def _groups(group_of: GroupOf, name: str) -> tuple[str, ...]:
    groups = group_of(name)
    return (groups,) if isinstance(groups, str) else groups


def _local_norms(grads: list[torch.Tensor], norm_type: float) -> list[torch.Tensor]:
    """Each tensor's norm (float32, on the first tensor's device), one ``torch._foreach_norm`` per device and dtype."""
    by_device_dtype: dict[tuple[torch.device, torch.dtype], list[int]] = defaultdict(list)
    for index, grad in enumerate(grads):
        by_device_dtype[(grad.device, grad.dtype)].append(index)
    device = grads[0].device
    per_tensor: list[torch.Tensor] = [torch.zeros(())] * len(grads)
    for indices in by_device_dtype.values():
        norms = torch._foreach_norm([grads[i] for i in indices], norm_type)
        for index, norm in zip(indices, norms, strict=True):
            per_tensor[index] = norm.to(device=device, dtype=torch.float32)
    return per_tensor


def _sharded_norms(
    names: list[str], grads: list[torch.Tensor], group_of: GroupOf | None, norm_type: float
) -> GradientNorms:
    """Global group and total norms of gradients some of which are ``DTensor``s: the total and every group in one
    vector, one ``all_reduce``."""
    world_size = dist.get_world_size()
    weights = [replica_weight(grad, world_size) for grad in grads]
    local = _local_norms([local_tensor(grad) for grad in grads], norm_type)
    # Slot 0 is the total; every rank lists the same names in the same order, so the slots agree across ranks.
    slots: dict[str, int] = {}
    entries = [(index, 0) for index in range(len(grads))]
    if group_of is not None:
        for index, name in enumerate(names):
            entries.extend((index, slots.setdefault(group, len(slots) + 1)) for group in _groups(group_of, name))
    reduced = reduce_norms(
        [local[index] for index, _ in entries],
        [weights[index] for index, _ in entries],
        [slot for _, slot in entries],
        1 + len(slots),
        norm_type,
    )
    return GradientNorms(reduced[0], {group: reduced[slot] for group, slot in slots.items()})


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
