"""Pure BatchNorm statistics: how a training batch compares with a layer's running statistics.

Every function takes tensors (a layer's input, its ``running_mean`` / ``running_var`` buffers, its ``eps``) and
returns tensors on the same device; nothing here calls ``.item()`` or imports Lightning. Channels are on
``channel_dim`` (1 for every ``torch.nn.BatchNorm*`` layer); all other dimensions are reduced. Every layer of a model
at once, and the copies a logging batch or a skipped step needs: :mod:`lightning_optim.stats.batchnorm_layers`.

Examples:
    >>> import torch
    >>> inputs = torch.tensor([[0.0, 1.0], [2.0, 1.0]])  # two samples, two channels; channel 1 is constant
    >>> stats = batch_statistics(inputs, running_mean=torch.zeros(2), running_var=torch.ones(2), eps=0.0)
    >>> stats.mean_drift, stats.var_ratio, stats.dead_fraction
    (tensor(1.), tensor(1.), tensor(0.5000))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lightning_optim.internals import BatchNormLayer
from lightning_optim.stats.distributed import full_tensor

__all__ = [
    "DEAD_VARIANCE",
    "BatchStatistics",
    "batch_statistics",
    "channel_moments",
    "dead_fraction",
    "layer_summaries",
    "mean_drift",
    "moments_from_update",
    "rank_divergence",
    "statistics_from_update",
    "summary",
    "unrecoverable",
    "var_ratio",
]

DEAD_VARIANCE = 1e-5
"""Default threshold: a channel whose batch variance is below it counts as dead."""


def channel_moments(inputs: torch.Tensor, channel_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and variance of a batch, in float32, as BatchNorm computes them for its running statistics.

    The variance is unbiased (Bessel's correction), like the one BatchNorm puts into ``running_var``, so it
    compares like with like; with a single value per channel it is the biased one (zero) instead of NaN.

    Args:
        inputs: The layer's input, e.g. ``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)`` or ``(N, C, D, H, W)``.
        channel_dim: The channel dimension.

    Returns:
        ``(mean, var)``, each of shape ``(C,)``.

    Examples:
        >>> channel_moments(torch.tensor([[1.0, 5.0], [3.0, 5.0]]))
        (tensor([2., 5.]), tensor([2., 0.]))
    """
    channel_dim = channel_dim % inputs.dim()
    dims = [dim for dim in range(inputs.dim()) if dim != channel_dim]
    values_per_channel = inputs.numel() // max(inputs.shape[channel_dim], 1)
    correction = 1 if values_per_channel > 1 else 0
    values = inputs.detach().float()
    if values.device.type != "cpu":
        var, mean = torch.var_mean(values, dim=dims, correction=correction)
        return mean, var
    # torch's CPU var_mean over all but the channel dimension is about 4x slower than two passes (mean, then the
    # sum of squared deviations), which are as stable; on a GPU var_mean is one kernel and needs no temporary.
    mean = values.mean(dim=dims, keepdim=True)
    var = (values - mean).square_().sum(dim=dims) / max(values_per_channel - correction, 1)
    return mean.reshape(-1), var


def mean_drift(
    batch_mean: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor, eps: float
) -> torch.Tensor:
    """Mean over channels of ``|batch mean - running mean| / sqrt(running var + eps)``.

    How far, in the running standard deviations the layer divides by in eval mode, the batch's means sit from
    the running means: 0 when the running statistics describe this batch.

    Examples:
        >>> mean_drift(torch.tensor([1.0, 0.0]), torch.zeros(2), torch.tensor([4.0, 1.0]), eps=0.0)
        tensor(0.2500)
    """
    return ((batch_mean - running_mean.float()).abs() / (running_var.float() + eps).sqrt()).mean()


def var_ratio(batch_var: torch.Tensor, running_var: torch.Tensor, eps: float) -> torch.Tensor:
    """Mean over channels of ``batch var / (running var + eps)``.

    ``eps`` is added because that is the variance the layer divides by in eval mode (it also keeps a channel
    whose running variance reached zero finite): the ratio is then the variance this batch would have after
    eval-mode normalization, 1 when the running variance fits.

    Examples:
        >>> var_ratio(torch.tensor([2.0, 1.0]), torch.tensor([1.0, 1.0]), eps=0.0)
        tensor(1.5000)
    """
    return (batch_var / (running_var.float() + eps)).mean()


def dead_fraction(batch_var: torch.Tensor, threshold: float = DEAD_VARIANCE) -> torch.Tensor:
    """Share of channels whose batch variance is below ``threshold`` (channels that carry no signal).

    NaN when a channel's variance is NaN or Inf: such a channel can be called neither dead nor alive.

    Examples:
        >>> dead_fraction(torch.tensor([0.0, 1.0, 2.0, 0.0])), dead_fraction(torch.tensor([0.0, float("nan")]))
        (tensor(0.5000), tensor(nan))
    """
    dead = (batch_var < threshold).float()
    return torch.where(torch.isfinite(batch_var), dead, torch.nan).mean()


def summary(values: torch.Tensor) -> dict[str, torch.Tensor]:
    """``mean``, ``min`` and ``max`` over the channels of a per-channel tensor (a buffer or an affine parameter).

    Examples:
        >>> {key: float(value) for key, value in summary(torch.tensor([1.0, 2.0, 6.0])).items()}
        {'mean': 3.0, 'min': 1.0, 'max': 6.0}
    """
    values = values.detach().float()
    return {"mean": values.mean(), "min": values.min(), "max": values.max()}


@dataclass
class BatchStatistics:
    """How one training batch compares with a BatchNorm layer's running statistics; 0-dim float32 tensors.

    ``mean_drift`` and ``var_ratio`` are None for a layer without running statistics
    (``track_running_stats=False``).
    """

    mean_drift: torch.Tensor | None
    var_ratio: torch.Tensor | None
    dead_fraction: torch.Tensor


def batch_statistics(
    inputs: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    eps: float,
    channel_dim: int = 1,
    dead_threshold: float = DEAD_VARIANCE,
) -> BatchStatistics:
    """:func:`mean_drift`, :func:`var_ratio` and :func:`dead_fraction` of one batch, from one pass over it.

    Args:
        inputs: The layer's input, taken before the layer updates its running statistics.
        running_mean: The layer's ``running_mean`` (None when it keeps none).
        running_var: The layer's ``running_var`` (None when it keeps none).
        eps: The layer's ``eps``.
        channel_dim: The channel dimension of ``inputs``.
        dead_threshold: Batch variance below which a channel counts as dead.

    Examples:
        >>> stats = batch_statistics(torch.ones(8, 3), torch.ones(3), torch.ones(3), eps=0.0)
        >>> stats.mean_drift, stats.var_ratio, stats.dead_fraction
        (tensor(0.), tensor(0.), tensor(1.))
    """
    batch_mean, batch_var = channel_moments(inputs, channel_dim)
    if running_mean is None or running_var is None:
        return BatchStatistics(None, None, dead_fraction(batch_var, dead_threshold))
    return BatchStatistics(
        mean_drift(batch_mean, running_mean, running_var, eps),
        var_ratio(batch_var, running_var, eps),
        dead_fraction(batch_var, dead_threshold),
    )


def moments_from_update(
    old_mean: torch.Tensor, old_var: torch.Tensor, new_mean: torch.Tensor, new_var: torch.Tensor, momentum: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel mean and unbiased variance of the batch that moved a BatchNorm layer's running statistics
    from ``old`` to ``new``, in float32.

    A training forward sets ``new = (1 - momentum) * old + momentum * batch`` for both buffers (the variance
    unbiased), so ``batch = (new - (1 - momentum) * old) / momentum``. The running statistics' rounding is divided by
    ``momentum`` too: the result is exact to about ``1e-6 * |old| / (10 * momentum)`` in float32. It is undefined
    for ``momentum`` 0 or None (a cumulative average, whose batch share ``1 / num_batches_tracked`` shrinks).

    Examples:
        >>> moments_from_update(torch.zeros(2), torch.ones(2), torch.tensor([0.5, 0.0]), torch.tensor([1.0, 0.5]), 0.5)
        (tensor([1., 0.]), tensor([1., 0.]))
    """
    keep = 1.0 - momentum
    mean = (new_mean.float() - keep * old_mean.float()) / momentum
    var = (new_var.float() - keep * old_var.float()) / momentum
    return mean, var


def statistics_from_update(
    old_mean: torch.Tensor,
    old_var: torch.Tensor,
    new_mean: torch.Tensor,
    new_var: torch.Tensor,
    momentum: float,
    eps: float,
    dead_threshold: float = DEAD_VARIANCE,
) -> BatchStatistics:
    """:func:`batch_statistics` of a batch that is not at hand, from the update it made to the running statistics.

    For a layer inside a ``torch.compile``d graph, whose input no hook can see: the batch's moments come from
    :func:`moments_from_update`, the comparison is with the running statistics before the update (``old_*``), as
    :func:`batch_statistics` makes it from a forward pre-hook.

    Examples:
        >>> inputs = torch.tensor([[0.0, 1.0], [2.0, 1.0]])
        >>> old_mean, old_var = torch.zeros(2), torch.ones(2)
        >>> layer = torch.nn.BatchNorm1d(2, momentum=0.1)
        >>> _ = layer(inputs)  # moves running_mean/running_var from (0, 1) towards the batch's moments
        >>> stats = statistics_from_update(old_mean, old_var, layer.running_mean, layer.running_var, 0.1, eps=0.0)
        >>> [round(float(value), 6) for value in (stats.mean_drift, stats.var_ratio, stats.dead_fraction)]
        [1.0, 1.0, 0.5]
    """
    batch_mean, batch_var = moments_from_update(old_mean, old_var, new_mean, new_var, momentum)
    return BatchStatistics(
        mean_drift(batch_mean, old_mean, old_var, eps),
        var_ratio(batch_var, old_var, eps),
        dead_fraction(batch_var, dead_threshold),
    )


def layer_summaries(
    layer: BatchNormLayer, running_mean: torch.Tensor | None, running_var: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """:func:`summary` of the given running statistics and of the layer's affine parameters (those it has), keyed
    ``running_mean_mean``, ..., ``bias_max``.

    Examples:
        >>> layer = torch.nn.BatchNorm1d(2, affine=False)
        >>> sorted(layer_summaries(layer, layer.running_mean, layer.running_var))[:3]
        ['running_mean_max', 'running_mean_mean', 'running_mean_min']
    """
    tensors = {"running_mean": running_mean, "running_var": running_var, "weight": layer.weight, "bias": layer.bias}
    # A sharded affine parameter (FSDP2) is summarised whole: one all-gather each, on logging steps only.
    tensors = {name: full_tensor(tensor.detach()) if tensor is not None else None for name, tensor in tensors.items()}
    return {
        f"{name}_{key}": value
        for name, tensor in tensors.items()
        if tensor is not None
        for key, value in summary(tensor).items()
    }


def unrecoverable(layer: BatchNormLayer) -> str | None:
    """Why a batch's statistics cannot be recovered from this layer's running statistics
    (:func:`moments_from_update`), or None when they can.

    Examples:
        >>> unrecoverable(torch.nn.BatchNorm1d(2)), unrecoverable(torch.nn.BatchNorm1d(2, momentum=None))[:14]
        (None, 'momentum=None:')
    """
    if layer.running_mean is None or layer.running_var is None:
        return "track_running_stats=False: it keeps no running statistics"
    if not layer.momentum:
        return (
            f"momentum={layer.momentum}: the running statistics are a cumulative average, the batch's share "
            "1/num_batches_tracked shrinks every step, and recovering the batch divides the rounding by it"
        )
    if layer.running_var.dtype not in (torch.float32, torch.float64):
        return (
            f"{layer.running_var.dtype} running statistics: their rounding, divided by the momentum, would swamp "
            "the batch's statistics"
        )
    return None


def rank_divergence(running_means: torch.Tensor, running_vars: torch.Tensor, eps: float) -> torch.Tensor:
    """How far the ranks' running statistics of one layer are apart, given ``(world_size, C)`` gathered buffers.

    ``max over ranks r of mean over channels |mean_r - mean_avg| / sqrt(var_avg + eps)``, with ``mean_avg`` and
    ``var_avg`` the averages over ranks: how many (average) standard deviations the rank furthest from the
    average shifts its validation activations by. 0 when all ranks hold the same statistics.

    Examples:
        >>> rank_divergence(torch.tensor([[0.0, 0.0], [2.0, 1.0]]), torch.ones(2, 2), eps=0.0)
        tensor(0.7500)
    """
    running_means, running_vars = running_means.float(), running_vars.float()
    average_std = (running_vars.mean(dim=0) + eps).sqrt()
    per_rank = ((running_means - running_means.mean(dim=0)).abs() / average_std).mean(dim=1)
    return per_rank.max()
