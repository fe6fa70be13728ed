"""Skipping an optimizer step, undoing everything its batch changed: the parameters and the optimizer's state stay
as they were, and the BatchNorm running statistics the batch's forward updated are put back from a
:class:`~lightning_optim.stats.RunningStatsSnapshot` taken at the step's first batch. The non-finite policy
(``GradNormMonitor(nonfinite="skip")``) and the spike guard (:mod:`lightning_optim.clipping.spike_guard`) skip this way.

A fused optimizer skips itself where ``found_inf`` is set (:func:`~lightning_optim.clipping.fused_step.skip_in_step`),
with no host sync; otherwise the step's gradients are dropped (:func:`drop_step`): every torch optimizer leaves a
parameter without a gradient, and its state, as they were.

Examples:
    >>> import torch
    >>> p = torch.nn.Parameter(torch.ones(2)); p.grad = torch.ones(2)
    >>> drop_step([p], RunningStatsSnapshot(torch.nn.Linear(1, 1)))
    >>> p.grad is None
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lightning_optim.clipping.arithmetic import ClipResult
from lightning_optim.clipping.fused_step import skip_in_step
from lightning_optim.stats import RunningStatsSnapshot

__all__ = ["drop_step", "skip_if_nonfinite", "skip_step"]


def drop_step(parameters: Sequence[torch.Tensor], snapshot: RunningStatsSnapshot) -> None:
    """Skip the coming step the ordinary way, decided on the host: drop the gradients, put the statistics back."""
    for parameter in parameters:
        parameter.grad = None
    snapshot.restore()


def skip_if_nonfinite(result: ClipResult, parameters: Sequence[torch.Tensor], snapshot: RunningStatsSnapshot) -> None:
    """Skip the coming step if clipping measured a NaN/Inf total norm: folded (``result.found_inf``), the step skips
    itself and the statistics are put back on the device; otherwise after one host check of the norm."""
    if result.found_inf is not None:
        snapshot.restore_where(result.found_inf)
    elif result.total is not None and not torch.isfinite(result.total):
        drop_step(parameters, snapshot)


def skip_step(
    optimizer: torch.optim.Optimizer,
    parameters: Sequence[torch.Tensor],
    spike: torch.Tensor,
    snapshot: RunningStatsSnapshot,
) -> bool:
    """Skip the coming ``optimizer.step`` where the 0-d bool ``spike`` holds, undoing what the batch did to the
    BatchNorm running statistics (``snapshot``, taken at the step's first batch).

    A fused optimizer skips itself (``found_inf``) and the statistics are put back with ``torch.where``: no host
    sync, returns True. Otherwise the decision is read on the host (one sync), a spike's gradients are dropped (every
    torch optimizer leaves a parameter without gradient, and its state, as it was) and the statistics put back;
    returns False.

    Examples:
        >>> p = torch.nn.Parameter(torch.ones(2)); p.grad = torch.ones(2)
        >>> adam = torch.optim.Adam([p], lr=0.1)
        >>> skip_step(adam, [p], torch.tensor(True), RunningStatsSnapshot(torch.nn.Linear(1, 1)))
        False
        >>> adam.step(); p.tolist(), adam.state
        ([1.0, 1.0], defaultdict(<class 'dict'>, {}))
    """
    if skip_in_step(optimizer, parameters, spike):
        snapshot.restore_where(spike)
        return True
    if bool(spike):
        drop_step(parameters, snapshot)
    return False
