"""Gradient norms of ``DTensor`` parameters (FSDP2's ``fully_shard``, tensor parallelism): global, in one reduction.

A sharded gradient's local tensor holds one part of the gradient, so its norm is a shard's norm: reported as the
global one it is low by about the square root of the number of shards. :func:`reduce_norms` turns per-tensor local
norms into global group norms with a single ``all_reduce`` of one vector (every group and the total together), and
the result is the same on every rank, so that every rank clips, skips and adapts its threshold alike.

Each rank adds ``weight * local_norm**p`` per group, where a tensor's ``weight`` (:func:`replica_weight`) is the
share of the world that holds one copy of it: a ``Shard`` mesh dimension splits the tensor (every rank's part
counts), a ``Replicate`` dimension, a mesh smaller than the world, and a plain tensor in a sharded model repeat it
(each copy counts once in total). The infinity norm reduces with ``MAX`` and needs no weights. The reduction runs
over the default process group; pipeline parallelism (stages holding different parameters) is not covered.

Examples:
    >>> import torch
    >>> is_distributed(torch.ones(2)), local_tensor(torch.ones(2)).shape
    (False, torch.Size([2]))
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Replicate

__all__ = [
    "full_tensor",
    "group_norms",
    "group_power_sums",
    "is_distributed",
    "local_tensor",
    "reduce_norms",
    "replica_weight",
    "sum_over_ranks",
    "unplaced_mesh_dims",
]


def is_distributed(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a ``DTensor`` (its data spread over a device mesh).

    Examples:
        >>> is_distributed(torch.zeros(1))
        False
    """
    return isinstance(tensor, DTensor)


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The part of ``tensor`` this rank holds, as a plain tensor sharing its storage (``tensor`` itself if plain).

    A ``Partial`` placement (unreduced values, never a gradient FSDP2 or tensor parallelism leaves) is reduced
    first, as every later step assumes local parts that add up to the tensor.

    Examples:
        >>> local_tensor(torch.ones(3)).tolist()
        [1.0, 1.0, 1.0]
    """
    if not isinstance(tensor, DTensor):
        return tensor
    if any(placement.is_partial() for placement in tensor.placements):
        placements = [Replicate() if placement.is_partial() else placement for placement in tensor.placements]
        tensor = tensor.redistribute(tensor.device_mesh, placements)
    return tensor.to_local()


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole of ``tensor`` on every rank (one all-gather for a sharded ``DTensor``; ``tensor`` itself if plain).

    Examples:
        >>> full_tensor(torch.arange(3.0)).tolist()
        [0.0, 1.0, 2.0]
    """
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def unplaced_mesh_dims(parameters: Iterable[torch.Tensor], sizes: dict[str, int]) -> list[str]:
    """The named mesh dimensions of more than one rank on which no parameter is a ``DTensor``.

    Such a dimension's ranks each hold a whole copy of every parameter: nothing is sharded over it, and when it is a
    data-parallel dimension, nothing averages the gradients of its ranks (``ModelParallelStrategy`` leaves both to
    ``configure_model``).

    Args:
        parameters: the model's parameters.
        sizes: each mesh dimension's name and size, e.g. ``{"data_parallel": 1, "tensor_parallel": 2}``.

    Examples:
        >>> unplaced_mesh_dims([torch.zeros(2)], {"data_parallel": 1, "tensor_parallel": 2})
        ['tensor_parallel']
    """
    placed = {
        name
        for parameter in parameters
        if isinstance(parameter, DTensor)
        for name in parameter.device_mesh.mesh_dim_names or ()
    }
    return [name for name, size in sizes.items() if size > 1 and name not in placed]


def replica_weight(tensor: torch.Tensor, world_size: int) -> float:
    """The share of the world's ranks that hold one whole copy of ``tensor``: ``shards / world_size``.

    Summing ``weight * local**p`` over all ranks counts every part of the tensor exactly once: the sharding mesh
    dimensions give ``shards`` distinct parts, and every other rank holds a copy of one of them. A plain tensor is one
    part held by every rank. A mesh dimension shards unless it replicates (or holds partial sums, which
    :func:`local_tensor` reduces first): FSDP2 over tensor parallelism places the data-parallel dimension as
    ``_StridedShard``, which is no ``Shard`` and answers False to ``is_shard()``.

    Examples:
        >>> replica_weight(torch.zeros(4), world_size=2)
        0.5
    """
    if not isinstance(tensor, DTensor):
        return 1.0 / world_size
    mesh = tensor.device_mesh
    shards = math.prod(
        mesh.size(dim)
        for dim, placement in enumerate(tensor.placements)
        if not (placement.is_replicate() or placement.is_partial())
    )
    return shards / world_size


def group_norms(norms: Sequence[torch.Tensor], groups: Sequence[int], count: int, norm_type: float) -> torch.Tensor:
    """The p-norm of each of ``count`` groups of tensors from each tensor's norm, in a few kernels whatever the
    number of groups.

    Args:
        norms: each tensor's norm (0-d float32 tensors on one device).
        groups: each tensor's group index in ``range(count)``.
        count: the number of groups.
        norm_type: the p of the p-norm (``inf``: the largest).

    Returns:
        A float32 vector of ``count`` norms.

    Examples:
        >>> group_norms([torch.tensor(3.0), torch.tensor(4.0), torch.tensor(2.0)], [0, 0, 1], 2, 2.0)
        tensor([5., 2.])
    """
    if math.isinf(norm_type):
        stacked = torch.stack(list(norms))
        index = torch.tensor(list(groups), device=stacked.device)
        return torch.zeros(count, device=stacked.device).index_reduce_(0, index, stacked, "amax", include_self=False)
    return group_power_sums(norms, None, groups, count, norm_type).pow(1.0 / norm_type).float()


def group_power_sums(
    norms: Sequence[torch.Tensor],
    weights: Sequence[float] | None,
    groups: Sequence[int],
    count: int,
    norm_type: float,
) -> torch.Tensor:
    """Each group's sum of the tensors' norms to the power ``norm_type`` (finite), each weighted by ``weights`` (None:
    all 1), in float64: it keeps the root of large sums of p-th powers as exact as one norm of them all.
    :func:`reduce_norms` adds them up over the ranks before the root.

    Examples:
        >>> group_power_sums([torch.tensor(3.0), torch.tensor(4.0)], [1.0, 0.5], [0, 0], 1, 2.0)
        tensor([17.], dtype=torch.float64)
    """
    stacked = torch.stack(list(norms))
    index = torch.tensor(list(groups), device=stacked.device)
    powers = stacked.double().pow(norm_type)
    if weights is not None:
        powers *= torch.tensor(list(weights), device=stacked.device, dtype=torch.float64)
    return torch.zeros(count, device=stacked.device, dtype=torch.float64).index_add_(0, index, powers)


def reduce_norms(
    local_norms: Sequence[torch.Tensor], weights: Sequence[float], groups: Sequence[int], count: int, norm_type: float
) -> torch.Tensor:
    """Global p-norms of ``count`` groups of tensors from each tensor's local norm, in one ``all_reduce``.

    Args:
        local_norms: each tensor's local norm (0-d float32 tensors on one device).
        weights: each tensor's :func:`replica_weight`.
        groups: each tensor's group index in ``range(count)``.
        count: the number of groups.
        norm_type: the p of the p-norm (``inf`` reduces with ``MAX``).

    Returns:
        A float32 vector of ``count`` global norms, equal on every rank (a process group must be initialised).

    Examples:
        >>> import torch.distributed as dist, tempfile
        >>> dist.init_process_group("gloo", init_method=f"file://{tempfile.mktemp()}", rank=0, world_size=1)
        >>> reduce_norms([torch.tensor(3.0), torch.tensor(4.0)], [1.0, 1.0], [0, 0], 1, 2.0)
        tensor([5.])
        >>> dist.destroy_process_group()
    """
    if math.isinf(norm_type):
        reduced = group_norms(local_norms, groups, count, norm_type)
        dist.all_reduce(reduced, op=dist.ReduceOp.MAX)
        return reduced
    summed = group_power_sums(local_norms, weights, groups, count, norm_type)
    return sum_over_ranks([summed])[0].pow(1.0 / norm_type).float()


def sum_over_ranks(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor summed over all ranks, every one of them in one ``all_reduce`` of one float64 vector (float64: the
    sums of squares stay as exact as one process's), given back in its own shape and dtype.

    Examples:
        >>> import torch.distributed as dist, tempfile
        >>> dist.init_process_group("gloo", init_method=f"file://{tempfile.mktemp()}", rank=0, world_size=1)
        >>> sum_over_ranks([torch.tensor([1.0, 2.0]), torch.tensor(3.0)])
        [tensor([1., 2.]), tensor(3.)]
        >>> dist.destroy_process_group()
    """
    flat = torch.cat([tensor.reshape(-1).double() for tensor in tensors])
    dist.all_reduce(flat)
    parts = flat.split([tensor.numel() for tensor in tensors])
    return [part.view(tensor.shape).to(tensor.dtype) for part, tensor in zip(parts, tensors, strict=True)]
