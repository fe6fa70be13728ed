"""Pure statistics of one optimizer step: how far it moved the parameters, relative to their size and to the
gradient, and the norms of the optimizer's per-parameter state.

Everything stays on the device as float32 tensors (fused ``torch._foreach_*`` kernels, no ``.item()``); the
callbacks turn them into Python numbers on logging steps only. The update is ``after - before`` of a copy taken
just before the step (:func:`copy_parameters`), so it is exact for any optimizer, whatever its step does.

Per-tensor values are the columns of one table, and a :class:`Selections` sums them over every layer and group in
three kernels, whatever their number; per tensor there remain the fused passes' own work and one sum (the inner
product of update and gradient).

Of ``DTensor`` parameters (FSDP2, tensor parallelism) each rank measures its local parts, and :func:`combine_ranks`
makes every tensor's values whole, for all the steps of a logging step in one ``all_reduce``
(:mod:`lightning_optim.stats.distributed`).

Examples:
    >>> import torch
    >>> weight = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    >>> weight.grad = torch.tensor([1.0, 0.0])
    >>> before = copy_parameters([weight])
    >>> torch.optim.SGD([weight], lr=0.5).step()
    >>> total = measure_updates(before, [weight], [weight.grad]).total()
    >>> [round(float(value), 4) for value in (total.norm, total.param_norm, total.ratio, total.cos_grad)]
    [0.5, 5.0, 0.1, 1.0]
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from lightning_optim.stats.distributed import is_distributed, local_tensor, replica_weight, sum_over_ranks

__all__ = [
    "QUANTITIES",
    "Selections",
    "TensorNorms",
    "TensorUpdates",
    "UpdateSummary",
    "combine_ranks",
    "copy_parameters",
    "measure_updates",
    "members",
    "state_norms",
]

QUANTITIES = ("norm", "param_norm", "ratio", "cos_grad")
"""The columns of :meth:`TensorUpdates.table`, the fields of :class:`UpdateSummary`."""


def copy_parameters(parameters: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """A copy of every parameter's values, in one fused copy (``torch._foreach_copy_``); of a ``DTensor``, of the
    part this rank holds (a plain tensor).

    Examples:
        >>> weight = torch.nn.Parameter(torch.ones(2))
        >>> copied = copy_parameters([weight])
        >>> with torch.no_grad():
        ...     _ = weight.add_(1.0)
        >>> copied
        [tensor([1., 1.])]
    """
    with torch.no_grad():
        parts = [local_tensor(parameter.detach()) for parameter in parameters]
        copies = [torch.empty_like(part, requires_grad=False) for part in parts]
        if copies:
            torch._foreach_copy_(copies, parts)
    return copies


def _norms(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The 2-norm of each tensor (one fused pass)."""
    return list(torch._foreach_norm(list(tensors))) if tensors else []


def _table(rows: Sequence[Sequence[torch.Tensor]], device: torch.device) -> torch.Tensor:
    """Rows of 0-dim tensors (all rows of one length) as one float32 table on ``device``, in one ``stack``."""
    flat = [value for row in rows for value in row]
    if any(value.device != device for value in flat):
        flat = [value.to(device) for value in flat]
    return torch.stack(flat).float().view(len(rows), -1)


def _dense(gradient: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``gradient`` as a dense tensor of ``like``'s dtype (sparse gradients of embeddings are scattered)."""
    dense = gradient.to_dense() if gradient.is_sparse else gradient
    return dense if dense.dtype == like.dtype else dense.to(like.dtype)


class Selections:
    """Named selections of a list's tensors (by their indices), whose values are summed in three kernels, whatever
    the number of selections: a gather of every selection's columns, one after the other, and an ``index_add_``.

    The two index tensors are made once, on ``device`` (a host-to-device copy): keep the object for the steps that
    select the same tensors.

    Examples:
        >>> selections = Selections({"all": [0, 1, 2], "head": [2]}, torch.device("cpu"))
        >>> selections.sums(torch.tensor([[1.0, 2.0, 4.0]]))
        tensor([[7., 4.]])
    """

    def __init__(self, selections: Mapping[str, Sequence[int]], device: torch.device) -> None:
        self.labels = list(selections)
        columns = [index for indices in selections.values() for index in indices]
        self._columns = torch.tensor(columns, dtype=torch.long, device=device)
        owners = [position for position, indices in enumerate(selections.values()) for _ in indices]
        self._owners = torch.tensor(owners, dtype=torch.long, device=device)

    def sums(self, values: torch.Tensor) -> torch.Tensor:
        """``(rows, tensors)`` values -> ``(rows, selections)``: each row's sum over each selection's tensors."""
        gathered = values.index_select(1, self._columns)
        return values.new_zeros(values.shape[0], len(self.labels)).index_add_(1, self._owners, gathered)


@dataclass(frozen=True)
class UpdateSummary:
    """One step's update over a set of parameters, each a 0-dim float32 tensor on the device.

    Attributes:
        norm: the 2-norm of the update (parameters after the step minus before).
        param_norm: the 2-norm of the parameters before the step.
        ratio: ``norm / param_norm`` (inf when the parameters were all zero).
        cos_grad: the cosine between the update and the negative gradient the step used (0 when either is zero).
    """

    norm: torch.Tensor
    param_norm: torch.Tensor
    ratio: torch.Tensor
    cos_grad: torch.Tensor


@dataclass(frozen=True)
class TensorUpdates:
    """Per parameter tensor of one step, in the order the parameters came: a ``(4, tensors)`` float32 table on the
    device.

    Attributes:
        values: the rows are each tensor's squared 2-norm of its update, its squared 2-norm before the step, its
            gradient's squared 2-norm (0 without one), and the inner product of its update with the negative
            gradient (0 without a gradient): what sums over several tensors.
        weights: None for whole tensors; of ``DTensor`` parameters, the values are of this rank's parts, and these
            are each tensor's :func:`~lightning_optim.stats.distributed.replica_weight`, which :func:`combine_ranks`
            needs to make them whole.
    """

    values: torch.Tensor
    weights: list[float] | None = None

    def total(self) -> UpdateSummary:
        """The summary over every tensor."""
        return self.summaries({"": range(self.values.shape[1])})[""]

    def by_label(self, labels: Sequence[str]) -> dict[str, UpdateSummary]:
        """The summary of each label's tensors (``labels[i]`` names tensor ``i``: a layer, a parameter group).

        Examples:
            >>> updates = TensorUpdates(torch.tensor([[1.0, 4.0], [100.0, 100.0], [1.0, 1.0], [1.0, 1.0]]))
            >>> {label: round(float(s.ratio), 2) for label, s in updates.by_label(["a", "b"]).items()}
            {'a': 0.1, 'b': 0.2}
        """
        return self.summaries(members(labels))

    def summaries(self, selections: Mapping[str, Sequence[int]]) -> dict[str, UpdateSummary]:
        """The summary of each selection of tensors (by their indices)."""
        if not selections or not self.values.shape[1]:
            return {}
        table = self.table(Selections(selections, self.values.device))
        return {label: UpdateSummary(*row.unbind()) for label, row in zip(selections, table.unbind(), strict=True)}

    def table(self, selections: Selections) -> torch.Tensor:
        """``(selections, 4)``: each selection's :data:`QUANTITIES`, in a few kernels for all of them."""
        sums = selections.sums(self.values)
        norm, param_norm, gradient = sums[:3].sqrt().unbind()
        scale = norm * gradient
        cos_grad = torch.where(scale > 0, sums[3] / scale, torch.zeros_like(scale))
        return torch.stack([norm, param_norm, norm / param_norm, cos_grad], dim=1)


def members(labels: Sequence[str]) -> dict[str, list[int]]:
    """The indices of each label in ``labels``, in order of first appearance.

    Examples:
        >>> members(["head", "body", "head"])
        {'head': [0, 2], 'body': [1]}
    """
    found: dict[str, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        found[label].append(index)
    return dict(found)


def measure_updates(
    before: list[torch.Tensor], parameters: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor | None]
) -> TensorUpdates:
    """Per-tensor squared norms of the update ``parameters - before``, of ``before``, of ``gradients``, and the
    update's inner product with the negative gradient.

    ``before`` is :func:`copy_parameters` of ``parameters`` taken before the step; it is overwritten (it becomes
    ``-update``, then ``-update * gradient``), so no other full-size tensor is allocated. Fused kernels for the norms,
    the difference and the products, and one sum per tensor with a gradient (no fused kernel sums signed values).
    Of ``DTensor`` parameters the values are of this rank's parts, with their weights (:func:`combine_ranks`).
    """
    if not parameters:
        return TensorUpdates(torch.zeros(4, 0))
    weights = _replica_weights(parameters)
    device = parameters[0].device
    with torch.no_grad():
        parameters = [local_tensor(parameter.detach()) for parameter in parameters]
        gradients = [None if gradient is None else local_tensor(gradient) for gradient in gradients]
        parameter = _norms(before)
        torch._foreach_sub_(before, parameters)
        update = _norms(before)
        with_gradient = [i for i, gradient in enumerate(gradients) if gradient is not None]
        dense = [_dense(gradients[i], before[i]) for i in with_gradient]  # type: ignore[arg-type]  # not None above
        # A tensor without a gradient keeps zeros; every other slot is overwritten below.
        filler = torch.zeros((), device=device) if len(with_gradient) < len(parameters) else update[0]
        gradient, alignment = [filler] * len(parameters), [filler] * len(parameters)
        if with_gradient:
            products = [before[i] for i in with_gradient]
            # before holds -update now: sum(-update * gradient) is the update's inner product with -gradient.
            torch._foreach_mul_(products, dense)
            sums = [product.sum(dtype=torch.float32) for product in products]
            for index, norm, total in zip(with_gradient, _norms(dense), sums, strict=True):
                gradient[index], alignment[index] = norm, total
        table = _table([update, parameter, gradient, alignment], device)
    return TensorUpdates(torch.cat([table[:3].square(), table[3:]]), weights)


def _replica_weights(tensors: Sequence[torch.Tensor]) -> list[float] | None:
    """Each tensor's :func:`~lightning_optim.stats.distributed.replica_weight` when some are ``DTensor``s, else None."""
    if not any(map(is_distributed, tensors)):
        return None
    return [replica_weight(tensor, dist.get_world_size()) for tensor in tensors]


@dataclass(frozen=True)
class TensorNorms:
    """The 2-norms of some tensors of a list: ``squares[k]`` is the squared norm of tensor ``indices[k]``, float32 on
    the device; of ``DTensor``s, of this rank's parts, with their weights, as in :class:`TensorUpdates`."""

    indices: list[int]
    squares: torch.Tensor
    weights: list[float] | None = None

    def total(self) -> torch.Tensor:
        """The norm of all those tensors together."""
        return self.summaries({"": self.indices})[""]

    def by_label(self, labels: Sequence[str]) -> dict[str, torch.Tensor]:
        """The norm of each label's tensors (``labels[i]`` names tensor ``i`` of the whole list)."""
        return self.summaries(members(labels))

    def restrict(self, selections: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
        """``selections`` (indices into the whole list) as positions among these tensors; a selection with none of
        them is left out."""
        position = {index: k for k, index in enumerate(self.indices)}
        chosen = {label: [position[i] for i in indices if i in position] for label, indices in selections.items()}
        return {label: ks for label, ks in chosen.items() if ks}

    def summaries(self, selections: Mapping[str, Sequence[int]]) -> dict[str, torch.Tensor]:
        """The norm of each selection's tensors (indices into the whole list; those without a norm here are left
        out, and a selection with none is not in the result)."""
        chosen = self.restrict(selections)
        if not chosen:
            return {}
        return dict(zip(chosen, self.table(Selections(chosen, self.squares.device)).unbind(), strict=True))

    def table(self, selections: Selections) -> torch.Tensor:
        """The norm of each of ``selections`` (made from :meth:`restrict`), as one vector."""
        return selections.sums(self.squares[None])[0].sqrt()


def state_norms(state: Mapping[Any, Mapping[str, Any]], parameters: Sequence[torch.Tensor]) -> dict[str, TensorNorms]:
    """The norms of the optimizer's per-parameter state tensors, by state key (``exp_avg``, ``momentum_buffer``, ...).

    ``state`` is ``optimizer.state``; a key counts where its value is a floating-point tensor with at least one
    dimension (a step count, a scalar tensor, is not per-parameter state). Entries are read with ``get``, so a
    ``defaultdict`` gains none. The state of a ``DTensor`` parameter is measured as the parameter is
    (:func:`measure_updates`).

    Examples:
        >>> weight = torch.nn.Parameter(torch.zeros(2))
        >>> weight.grad = torch.tensor([3.0, 4.0])
        >>> optimizer = torch.optim.SGD([weight], lr=0.1, momentum=0.9)
        >>> optimizer.step()
        >>> {key: float(norms.total()) for key, norms in state_norms(optimizer.state, [weight]).items()}
        {'momentum_buffer': 5.0}
    """
    by_key: dict[str, tuple[list[int], list[torch.Tensor]]] = {}
    for index, parameter in enumerate(parameters):
        for key, value in state.get(parameter, {}).items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.is_floating_point():
                indices, tensors = by_key.setdefault(str(key), ([], []))
                indices.append(index)
                # A sparse state (SGD's momentum of a sparse gradient) is measured by its values, duplicates summed.
                tensors.append(value.coalesce().values() if value.is_sparse else value)
    if not parameters:
        return {}
    device = parameters[0].device
    with torch.no_grad():
        return {
            key: TensorNorms(
                indices,
                _table([_norms([local_tensor(tensor) for tensor in tensors])], device)[0].square(),
                _replica_weights(tensors),
            )
            for key, (indices, tensors) in by_key.items()
        }


def combine_ranks(
    steps: Sequence[tuple[TensorUpdates, Mapping[str, TensorNorms]]],
) -> list[tuple[TensorUpdates, dict[str, TensorNorms]]]:
    """Each step's updates and state norms with every tensor's values whole and the same on every rank: the
    weighted squares of the local norms and the weighted inner products, of all the steps together, summed over the
    ranks in one ``all_reduce``. Without ``DTensor``s (no ``weights``) the steps come back as they are, and nothing
    is communicated.
    """
    parts: list[torch.Tensor] = []
    for updates, states in steps:
        if updates.weights is not None:
            parts.append(updates.values * torch.tensor(updates.weights, device=updates.values.device))
        for norms in states.values():
            if norms.weights is not None:
                parts.append(norms.squares * torch.tensor(norms.weights, device=norms.squares.device))
    if not parts:
        return [(updates, dict(states)) for updates, states in steps]
    summed = iter(sum_over_ranks(parts))
    combined = []
    for updates, states in steps:
        if updates.weights is not None:
            updates = TensorUpdates(next(summed))
        states = {
            key: norms if norms.weights is None else TensorNorms(norms.indices, next(summed))
            for key, norms in states.items()
        }
        combined.append((updates, states))
    return combined
