"""BatchNorm statistics of every layer of a model at once, and the copies they need.

:func:`layers_values` measures all layers from one table whatever their number (:class:`LayerColumns`, one per
layer); :class:`LayerUpdates` copies every layer's running statistics and affine parameters at a logging batch's
start, for the forward hooks to compare with and to recover a batch out of reach from the update it made;
:class:`RunningStatsSnapshot` keeps the running statistics to undo a skipped step. The per-layer formulas are those of
:mod:`lightning_optim.stats.batchnorm`.

Examples:
    >>> import torch
    >>> layer = torch.nn.BatchNorm1d(2)
    >>> before = LayerUpdates({"bn": layer})
    >>> _ = layer(torch.tensor([[0.0, 1.0], [2.0, 1.0]]))
    >>> columns, forwards = before.columns()["bn"]
    >>> keys, values = layers_values({"bn": columns})
    >>> keys["bn"][:3], int(forwards)
    (['mean_drift', 'var_ratio', 'dead_fraction'], 1)
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from lightning_optim.internals import BatchNormLayer, batchnorm_saved_statistics, is_batchnorm, own_buffers
from lightning_optim.stats.batchnorm import DEAD_VARIANCE, channel_moments, moments_from_update, unrecoverable
from lightning_optim.stats.distributed import full_tensor, is_distributed

__all__ = [
    "BATCH_KEYS",
    "SUMMARIZED",
    "LayerColumns",
    "LayerUpdates",
    "RunningStatsSnapshot",
    "affine_copies",
    "forward_columns",
    "layer_columns",
    "layer_keys",
    "layer_values",
    "layers_values",
]

BATCH_KEYS = ("mean_drift", "var_ratio", "dead_fraction")
"""The keys of :func:`batch_statistics` in :func:`layer_values`, in its order."""

SUMMARIZED = ("running_mean", "running_var", "weight", "bias")
"""The per-channel tensors :func:`layers_values` summarizes (those a layer has), in its order."""


@dataclass(frozen=True)
class LayerColumns:
    """One BatchNorm layer's per-channel vectors that :func:`layers_values` reduces, by row name.

    Attributes:
        vectors: in this order, those it has of: ``batch_mean``; ``batch_var`` (the batch's unbiased variance) or
            ``batch_invstd`` (``1 / sqrt(biased variance + eps)``, as a training forward saves it for its backward);
            then those of :data:`SUMMARIZED` the layer has. Not copied: they must keep their values until
            :func:`layers_values` has read them.
        eps: the layer's ``eps``.
        values_per_channel: the number of values of each channel in the batch (for ``batch_invstd``).
    """

    vectors: dict[str, torch.Tensor]
    eps: float
    values_per_channel: int = 0

    @property
    def names(self) -> tuple[str, ...]:
        """The row names, in order: layers with the same names are reduced together."""
        return tuple(self.vectors)

    @property
    def channels(self) -> int:
        """The number of channels."""
        return next(iter(self.vectors.values())).numel() if self.vectors else 0


def layer_columns(
    layer: BatchNormLayer,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    moments: tuple[torch.Tensor, torch.Tensor] | None = None,
    affine: Mapping[str, torch.Tensor] | None = None,
) -> LayerColumns:
    """The :class:`LayerColumns` of a layer: the batch's per-channel ``(mean, unbiased var)`` (``moments``; None: no
    batch statistics), the given running statistics (None: the layer keeps none), and ``affine`` (``weight`` and
    ``bias`` as kept earlier), else a copy of the layer's affine parameters as they are now.

    Examples:
        >>> columns = layer_columns(torch.nn.BatchNorm1d(2), torch.zeros(2), torch.ones(2))
        >>> columns.names, columns.channels
        (('running_mean', 'running_var', 'weight', 'bias'), 2)
    """
    vectors: dict[str, torch.Tensor] = {}
    if moments is not None:
        vectors["batch_mean"], vectors["batch_var"] = moments
    if running_mean is not None and running_var is not None:
        vectors |= {"running_mean": running_mean, "running_var": running_var}
    return LayerColumns(vectors | (affine_copies(layer) if affine is None else dict(affine)), float(layer.eps))


def affine_copies(layer: BatchNormLayer) -> dict[str, torch.Tensor]:
    """A copy of the layer's ``weight`` and ``bias`` (those it has), whole: of a sharded parameter (FSDP2), one
    all-gather each.

    Examples:
        >>> sorted(affine_copies(torch.nn.BatchNorm1d(2))), affine_copies(torch.nn.BatchNorm1d(2, affine=False))
        (['bias', 'weight'], {})
    """
    tensors = {"weight": layer.weight, "bias": layer.bias}
    with torch.no_grad():
        return {name: full_tensor(tensor.detach()).clone() for name, tensor in tensors.items() if tensor is not None}


def forward_columns(
    layer: BatchNormLayer, inputs: torch.Tensor, output: torch.Tensor | None
) -> tuple[dict[str, torch.Tensor], int]:
    """The batch's per-channel moments for :class:`LayerColumns`, and the values per channel: ``batch_mean`` and
    ``batch_invstd`` as the layer's training forward saved them for its backward
    (:func:`~lightning_optim.internals.batchnorm_saved_statistics`: no kernel, the tensors themselves, which nothing
    changes), else ``batch_mean`` and ``batch_var`` computed from ``inputs`` (:func:`channel_moments`).

    Examples:
        >>> layer = torch.nn.BatchNorm1d(2)
        >>> inputs = torch.tensor([[0.0, 1.0], [2.0, 5.0], [4.0, 3.0]], requires_grad=True)
        >>> moments, values_per_channel = forward_columns(layer, inputs, layer(inputs))
        >>> sorted(moments), values_per_channel
        (['batch_invstd', 'batch_mean'], 3)
    """
    channels = inputs.shape[1] if inputs.dim() > 1 else 0
    values_per_channel = inputs.numel() // channels if channels else 0
    saved = batchnorm_saved_statistics(output) if output is not None else None
    if saved is None or saved[0].numel() != channels:
        mean, var = channel_moments(inputs)
        return {"batch_mean": mean, "batch_var": var}, values_per_channel
    mean, invstd = saved
    return {"batch_mean": mean.detach(), "batch_invstd": invstd.detach()}, values_per_channel


def layer_keys(names: Sequence[str]) -> list[str]:
    """The keys of :func:`layers_values` for a layer whose :class:`LayerColumns` has the rows ``names``.

    Examples:
        >>> layer_keys(("batch_mean", "batch_var", "weight"))
        ['dead_fraction', 'weight_mean', 'weight_min', 'weight_max']
    """
    keys: list[str] = []
    if "batch_var" in names or "batch_invstd" in names:
        keys += BATCH_KEYS if "running_var" in names else ["dead_fraction"]
    summarized = [name for name in SUMMARIZED if name in names]
    return keys + [f"{name}_{key}" for key in ("mean", "min", "max") for name in summarized]


def layers_values(
    columns: Mapping[str, LayerColumns], dead_threshold: float = DEAD_VARIANCE
) -> tuple[dict[str, list[str]], torch.Tensor]:
    """:func:`batch_statistics` of each layer's batch and :func:`summary` of its running statistics and affine
    parameters, for every layer at once: each layer's keys (:func:`layer_keys`), and one float32 vector of all the
    values, layer after layer, each in its keys' order.

    The same values as those functions (to float rounding) in a few kernels whatever the number of layers: the
    layers' columns side by side make one table per kind of layer (which rows it has), each per-channel term is one
    kernel over every channel of every layer, and three ``scatter_reduce`` take the mean, min and max per layer. On
    a CPU every small kernel costs a few microseconds whatever its size; on a GPU, a launch.

    Examples:
        >>> layer = torch.nn.BatchNorm1d(2)
        >>> columns = layer_columns(layer, layer.running_mean, layer.running_var, channel_moments(torch.eye(2)))
        >>> keys, values = layers_values({"bn": columns, "affine": layer_columns(layer, None, None)})
        >>> dict(zip(keys["bn"][:5], [round(value, 4) for value in values.tolist()]))
        {'mean_drift': 0.5, 'var_ratio': 0.5, 'dead_fraction': 0.0, 'running_mean_mean': 0.0, 'running_var_mean': 1.0}
        >>> keys["affine"]
        ['weight_mean', 'bias_mean', 'weight_min', 'bias_min', 'weight_max', 'bias_max']
    """
    kinds: dict[tuple[str, ...], list[str]] = {}
    for name, layer in columns.items():
        kinds.setdefault(layer.names, []).append(name)
    keys: dict[str, list[str]] = {}
    parts: list[torch.Tensor] = []
    for rows, names in kinds.items():
        kind_keys = layer_keys(rows)
        if not kind_keys:
            continue
        keys |= dict.fromkeys(names, kind_keys)
        parts.append(_kind_values(rows, [columns[name] for name in names], dead_threshold))
    ordered = [name for name in columns if name in keys]
    values = parts[0] if len(parts) == 1 else torch.cat(parts) if parts else torch.zeros(0)
    if len(parts) > 1:  # the kinds' values follow each other: put them back in the layers' order
        measured = [name for names in kinds.values() for name in names if name in keys]
        offsets = list(itertools.accumulate((len(keys[name]) for name in measured), initial=0))
        starts = dict(zip(measured, offsets[:-1], strict=True))
        index = [starts[name] + k for name in ordered for k in range(len(keys[name]))]
        values = values[torch.tensor(index, device=values.device)]
    return {name: keys[name] for name in ordered}, values


def _kind_values(names: tuple[str, ...], layers: Sequence[LayerColumns], dead_threshold: float) -> torch.Tensor:
    """:func:`layers_values` of layers with the same rows ``names``: ``(layers * keys,)``, layer after layer."""
    channels = tuple(layer.channels for layer in layers)
    with torch.no_grad():
        # Row after row, each the layers' vectors one after the other: one cat makes the (rows, channels) table.
        table = torch.cat([_float_row(layer.vectors[name]) for name in names for layer in layers]).view(len(names), -1)
        row = dict(zip(names, table, strict=True))
        eps, unbias = _channel_constants(layers, table.device)
        terms: list[torch.Tensor] = []
        if "batch_invstd" in row:
            row["batch_var"] = row["batch_invstd"].pow(-2).sub_(eps).mul_(unbias)
        if "batch_var" in row:
            batch_var = row["batch_var"]
            # var * 0 is NaN for a NaN/Inf variance: its channel is neither dead nor alive, and the fraction NaN.
            dead = (batch_var < dead_threshold).float().add_(batch_var * 0)
            if "running_var" in row:
                scale = row["running_var"] + eps
                drift = (row["batch_mean"] - row["running_mean"]).abs_().div_(scale.sqrt())
                terms += [drift, batch_var / scale]
            terms.append(dead)
        summarized = [row[name] for name in SUMMARIZED if name in row]
        rows = torch.stack(terms + summarized)
        owners = _owners(channels, table.device).expand(rows.shape[0], -1)
        reduced = [_per_layer(rows, owners, len(layers), "mean")]
        if summarized:
            summaries, summary_owners = rows[len(terms) :], owners[len(terms) :]
            reduced += [_per_layer(summaries, summary_owners, len(layers), reduce) for reduce in ("amin", "amax")]
        return torch.cat(reduced).t().reshape(-1)


def _per_layer(rows: torch.Tensor, owners: torch.Tensor, layers: int, reduce: str) -> torch.Tensor:
    """``(rows, channels)`` -> ``(rows, layers)``: each row's ``reduce`` over each layer's channels (NaN propagates)."""
    return rows.new_zeros(rows.shape[0], layers).scatter_reduce_(1, owners, rows, reduce, include_self=False)


def _channel_constants(
    layers: Sequence[LayerColumns], device: torch.device
) -> tuple[float | torch.Tensor, float | torch.Tensor]:
    """Each channel's layer ``eps``, and the factor that makes its biased batch variance unbiased (0 for one value
    per channel, whose variance is 0, as :func:`channel_moments` gives it): each one number when the layers share
    it, else a vector made once per layout (:func:`_per_channel`)."""
    eps = tuple(layer.eps for layer in layers)
    unbias = tuple(n / (n - 1) if n > 1 else 0.0 for n in (layer.values_per_channel for layer in layers))
    channels = tuple(layer.channels for layer in layers)
    return _per_channel(eps, channels, device), _per_channel(unbias, channels, device)


def _per_channel(values: tuple[float, ...], channels: tuple[int, ...], device: torch.device) -> float | torch.Tensor:
    """``values[i]`` for each of layer ``i``'s channels; one number when all are equal."""
    if len(set(values)) == 1:
        return values[0]
    return _repeated(values, channels, device)


@functools.lru_cache(maxsize=32)
def _repeated(values: tuple[float, ...], channels: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.tensor(
        [value for value, count in zip(values, channels, strict=True) for _ in range(count)], device=device
    )


@functools.lru_cache(maxsize=32)
def _owners(channels: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``(1, sum(channels))``: the index of the layer each channel belongs to, made once per layout and device."""
    owners = [index for index, count in enumerate(channels) for _ in range(count)]
    return torch.tensor(owners, dtype=torch.long, device=device)[None]


def layer_values(
    layer: BatchNormLayer,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    moments: tuple[torch.Tensor, torch.Tensor] | None = None,
    dead_threshold: float = DEAD_VARIANCE,
) -> tuple[list[str], torch.Tensor]:
    """:func:`layers_values` of one layer: its keys and one float32 vector of its values, in that order.

    Examples:
        >>> layer = torch.nn.BatchNorm1d(2)
        >>> keys, values = layer_values(layer, layer.running_mean, layer.running_var, channel_moments(torch.eye(2)))
        >>> dict(zip(keys[:5], [round(value, 4) for value in values.tolist()]))
        {'mean_drift': 0.5, 'var_ratio': 0.5, 'dead_fraction': 0.0, 'running_mean_mean': 0.0, 'running_var_mean': 1.0}
    """
    keys, values = layers_values({"": layer_columns(layer, running_mean, running_var, moments)}, dead_threshold)
    return keys.get("", []), values


class LayerUpdates:
    """BatchNorm layers' running statistics kept before a training forward: what a forward hook compares the batch
    with (the forward updates them before its hooks run), and, where the batch itself is out of reach (inside a
    ``torch.compile``d graph), what that forward's update is measured against.

    :meth:`columns` gives, per layer, its :class:`LayerColumns`: the statistics as they were and, for a layer
    :func:`unrecoverable` says nothing against, the batch's moments (:func:`moments_from_update`, as
    :func:`statistics_from_update` uses them); with them how many training forwards updated the layer since
    (``num_batches_tracked``, as a tensor: no host sync). The batch statistics describe the batch only when that
    count is 1. Lazy layers not yet materialized are left out. The copy is one ``cat`` per dtype and device for
    all the layers.

    Examples:
        >>> layer = torch.nn.BatchNorm1d(2)
        >>> before = LayerUpdates({"bn": layer})
        >>> _ = layer(torch.tensor([[0.0, 1.0], [2.0, 1.0]]))
        >>> keys, values, forwards = before.measure()["bn"]
        >>> measured = dict(zip(keys, values.tolist()))
        >>> round(measured["mean_drift"], 4), measured["dead_fraction"], int(forwards)
        (1.0, 0.5, 1)
    """

    def __init__(self, layers: Mapping[str, BatchNormLayer]) -> None:
        self.layers = {
            name: layer
            for name, layer in layers.items()
            if layer.running_mean is None or not is_lazy(layer.running_mean)
        }
        buffers = {name: _running_buffers(layer) for name, layer in self.layers.items()}
        # A sharded affine parameter (FSDP2) is whole only inside its layer's forward: left to be copied there.
        affine = {name: _plain_affine(layer) for name, layer in self.layers.items()}
        kept = [tensor for triple in buffers.values() for tensor in triple if tensor is not None]
        kept += [tensor for tensors in affine.values() for tensor in tensors.values()]
        copies = iter(_copy_all(kept))
        self.before = {
            name: tuple(None if buffer is None else next(copies) for buffer in triple)
            for name, triple in buffers.items()
        }
        """Per layer, the copies of its ``running_mean``, ``running_var`` and ``num_batches_tracked`` (None where
        it has none)."""
        self.affine = {name: {key: next(copies) for key in tensors} for name, tensors in affine.items()}
        """Per layer, the copies of its ``weight`` and ``bias`` that are plain tensors (a ``DTensor`` is left out)."""

    def affine_of(self, name: str) -> dict[str, torch.Tensor]:
        """Layer ``name``'s ``weight`` and ``bias`` as they were at the copy, else (a ``DTensor``) as they are now."""
        layer = self.layers[name]
        kept = self.affine[name]
        missing = [key for key in ("weight", "bias") if getattr(layer, key) is not None and key not in kept]
        return kept | {key: value for key, value in affine_copies(layer).items() if key in missing} if missing else kept

    def columns(self, skip: Collection[str] = ()) -> dict[str, tuple[LayerColumns, torch.Tensor | None]]:
        """Per layer but those in ``skip``: its :class:`LayerColumns` (the running statistics and the affine
        parameters as they were at the copy, :meth:`affine_of`, and the batch's moments where recoverable) and the
        number of training forwards since the copy (None for a layer without running statistics)."""
        measured = {}
        with torch.no_grad():
            for name, layer in self.layers.items():
                if name in skip:
                    continue
                old_mean, old_var, old_count = self.before[name]
                new_mean, new_var, new_count = _running_buffers(layer)
                forwards = None if old_count is None or new_count is None else new_count - old_count
                moments = None
                if (
                    unrecoverable(layer) is None
                    and layer.momentum
                    and old_mean is not None
                    and old_var is not None
                    and new_mean is not None
                    and new_var is not None
                ):
                    moments = moments_from_update(old_mean, old_var, new_mean, new_var, layer.momentum)
                measured[name] = (layer_columns(layer, old_mean, old_var, moments, self.affine_of(name)), forwards)
        return measured

    def measure(
        self, dead_threshold: float = DEAD_VARIANCE, skip: Collection[str] = ()
    ) -> dict[str, tuple[list[str], torch.Tensor, torch.Tensor | None]]:
        """Per layer but those in ``skip``: its keys and values (:func:`layer_values` of :meth:`columns`) and the
        number of training forwards since the copy."""
        columns = self.columns(skip)
        keys, values = layers_values({name: layer for name, (layer, _) in columns.items()}, dead_threshold)
        sizes = [len(layer_keys) for layer_keys in keys.values()]
        split = dict(zip(keys, values.split(sizes), strict=True))
        return {
            name: (keys.get(name, []), split.get(name, values[:0]), forwards) for name, (_, forwards) in columns.items()
        }


def _running_buffers(layer: BatchNormLayer) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """``running_mean``, ``running_var``, ``num_batches_tracked`` (None where the layer has none)."""
    return layer.running_mean, layer.running_var, layer.num_batches_tracked


def _plain_affine(layer: BatchNormLayer) -> dict[str, torch.Tensor]:
    """The layer's ``weight`` and ``bias`` that it has and that are plain tensors (not ``DTensor``, not lazy)."""
    tensors = {"weight": layer.weight, "bias": layer.bias}
    return {
        name: tensor
        for name, tensor in tensors.items()
        if tensor is not None and not is_distributed(tensor) and not is_lazy(tensor)
    }


def _copy_all(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """A copy of each of ``tensors``: views of one ``cat`` per device and dtype (one kernel each)."""
    kinds: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for index, tensor in enumerate(tensors):
        kinds.setdefault((tensor.device, tensor.dtype), []).append(index)
    copies: list[torch.Tensor] = [tensors[0]] * len(tensors)
    with torch.no_grad():
        for indices in kinds.values():
            flat = torch.cat([_row(tensors[index]) for index in indices])
            views = _flat_views(flat, [tensors[index].shape for index in indices])
            for index, view in zip(indices, views, strict=True):
                copies[index] = view
    return copies


def _flat_views(flat: torch.Tensor, shapes: list[torch.Size]) -> list[torch.Tensor]:
    chunks = torch.split(flat, [shape.numel() for shape in shapes])
    return [chunk if len(shape) == 1 else chunk.view(shape) for chunk, shape in zip(chunks, shapes, strict=True)]


# Per-channel vectors are 1-D float32 almost always: each dispatch skipped here is a microsecond per vector on a CPU.
def _row(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` flattened (itself when it is 1-D)."""
    return tensor if tensor.dim() == 1 else tensor.reshape(-1)


def _float_row(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` flattened, in float32."""
    return _row(tensor if tensor.dtype == torch.float32 else tensor.float())


@dataclass
class _SameKind:
    """Buffers of one device and dtype, their copy, and a scratch tensor, the latter two flat (one kernel each)."""

    live: list[torch.Tensor]
    saved: torch.Tensor
    saved_views: list[torch.Tensor]
    live_flat: list[torch.Tensor]
    scratch: torch.Tensor
    scratch_views: list[torch.Tensor]

    @classmethod
    def of(cls, live: list[torch.Tensor]) -> _SameKind:
        shapes = [buffer.shape for buffer in live]
        saved = live[0].new_empty(sum(shape.numel() for shape in shapes))
        scratch = torch.empty_like(saved)
        live_flat = [buffer.view(-1) for buffer in live]
        return cls(live, saved, _flat_views(saved, shapes), live_flat, scratch, _flat_views(scratch, shapes))


class RunningStatsSnapshot:
    """The running statistics of every BatchNorm layer of a model, kept to undo the update of a skipped step.

    A training forward updates ``running_mean``, ``running_var`` and ``num_batches_tracked`` of every BatchNorm
    layer in place, before anyone knows whether the step will be skipped. :meth:`take` copies them, at the start of
    the step's first batch, into buffers allocated once (one ``torch._foreach_copy_``); when the step is skipped,
    :meth:`restore` (the decision is a host bool) or :meth:`restore_where` (the decision is still a device tensor)
    puts them back. Lazy layers not yet materialized are left out.

    Args:
        model: The module whose BatchNorm layers (see :func:`~lightning_optim.internals.is_batchnorm`) are kept.

    Examples:
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
        >>> snapshot = RunningStatsSnapshot(model)
        >>> snapshot.take()
        >>> _ = model(torch.tensor([[float("nan"), 0.0], [1.0, 2.0]]))
        >>> model[1].running_mean.isnan().any().item(), model[1].num_batches_tracked.item()
        (True, 1)
        >>> snapshot.restore_where(torch.tensor(1.0))
        >>> model[1].running_mean.tolist(), model[1].num_batches_tracked.item()
        ([0.0, 0.0, 0.0], 0)
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = [module for module in model.modules() if is_batchnorm(module)]
        self._seen: list[torch.Tensor] = []
        """The buffers of the last allocation, in module order: a buffer that is no longer among them was replaced."""
        self._kinds: list[_SameKind] = []
        self._live: list[torch.Tensor] = []
        self._saved: list[torch.Tensor] = []

    def _buffers(self) -> list[torch.Tensor]:
        buffers = (buffer for layer in self.layers for buffer in own_buffers(layer))
        return [buffer for buffer in buffers if buffer is not None and not is_lazy(buffer)]

    def _allocate(self, live: list[torch.Tensor]) -> None:
        by_kind: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
        for buffer in live:
            by_kind.setdefault((buffer.device, buffer.dtype), []).append(buffer)
        self._seen = live
        self._kinds = [_SameKind.of(buffers) for buffers in by_kind.values()]
        # Both lists grouped by kind, in the same order, for one _foreach_copy_ over all of them.
        self._live = [buffer for kind in self._kinds for buffer in kind.live]
        self._saved = [view for kind in self._kinds for view in kind.saved_views]

    def take(self) -> None:
        """Copy the running statistics as they are now."""
        live = self._buffers()
        # Moving the model to a device (or a lazy layer's first forward) replaces its buffers: allocate again.
        if len(live) != len(self._seen) or any(now is not kept for now, kept in zip(live, self._seen, strict=True)):
            self._allocate(live)
        if live:
            torch._foreach_copy_(self._saved, self._live)

    def restore(self) -> None:
        """Put back the running statistics of the last :meth:`take`."""
        if self._live:
            torch._foreach_copy_(self._live, self._saved)

    def restore_where(self, skip: torch.Tensor) -> None:
        """Put back the running statistics of the last :meth:`take` where the 0-dim ``skip`` is nonzero, with device
        ops only (no host sync): per device and dtype, the buffers are gathered into one flat tensor, ``torch.where``
        selects (so NaN in the current values cannot leak into the result), and one ``_foreach_copy_`` writes back.
        """
        condition = skip.bool()
        for kind in self._kinds:
            torch.cat(kind.live_flat, out=kind.scratch)
            torch.where(condition.to(kind.saved.device), kind.saved, kind.scratch, out=kind.scratch)
            torch._foreach_copy_(kind.live, kind.scratch_views)
