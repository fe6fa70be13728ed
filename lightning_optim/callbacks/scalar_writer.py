"""``write_scalars``: a step's scalars to a logger in one write; one TensorBoard event for a ``TensorBoardLogger``.

``TensorBoardLogger.log_metrics`` writes one event per scalar, and each event is a hand-off to TensorBoard's writer
thread (a locked queue ``put`` that wakes it): about 40 scalars per logging step cost more than the monitors'
arithmetic. One ``Summary`` holding every value, in one event, is one hand-off, and TensorBoard reads it back as
the same scalars (tag, step, value).

Examples:
    >>> import tempfile
    >>> from lightning.pytorch.loggers import TensorBoardLogger
    >>> logger = TensorBoardLogger(tempfile.mkdtemp(), name="run")
    >>> write_scalars(logger, {"lr-SGD": 0.1, "grad_norm/total": 2.5}, step=7)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from tensorboard.compat.proto.summary_pb2 import Summary  # type: ignore[import-untyped]  # no stubs

from lightning_optim.callbacks.event_checksums import use_native_checksums
from lightning_optim.internals import logger_prefix

if TYPE_CHECKING:
    from torch.utils.tensorboard.writer import FileWriter

__all__ = ["HUGE_VALUES_BINS", "add_scalars", "histogram_bins", "write_scalars"]

HUGE_VALUES_BINS = 64
"""Equal-width bins of a histogram whose values reach beyond TensorBoard's default bins (|x| > 1e20)."""


@rank_zero_only
def write_scalars(logger: Logger, metrics: Mapping[str, float], step: int) -> None:
    """Write ``metrics`` at ``step``: one event for a ``TensorBoardLogger`` (with torch's ``SummaryWriter``, and
    its ``log_metrics`` not overridden), ``logger.log_metrics`` for any other logger. Rank zero only, as Lightning's
    loggers.

    The event holds what ``log_metrics`` would write: the logger's ``prefix`` joined to each key, each value as a
    ``simple_value`` (``SummaryWriter.add_scalar``'s default form). TensorBoard's checksums of the event are
    computed in C where ``google-crc32c`` can (:mod:`~lightning_optim.callbacks.event_checksums`).
    """
    writer = _summary_writer(logger)
    if writer is None:
        logger.log_metrics(dict(metrics), step=step)
        return
    assert isinstance(logger, TensorBoardLogger)  # _summary_writer says so
    prefix = logger_prefix(logger)
    join = logger.LOGGER_JOIN_CHAR
    add_scalars(writer, {f"{prefix}{join}{key}" if prefix else key: value for key, value in metrics.items()}, step)


def add_scalars(writer: FileWriter, scalars: Mapping[str, float], step: int) -> None:
    """Write ``scalars`` (tag → value) at ``step`` as one event of a TensorBoard ``FileWriter``, each value a
    ``simple_value`` (what ``SummaryWriter.add_scalar`` writes, without its conversions per value)."""
    summary = Summary()
    add = summary.value.add  # about half the time of building Summary.Value(...) objects to hand over
    for tag, value in scalars.items():
        add(tag=tag, simple_value=float(value))
    writer.add_summary(summary, step)


def _summary_writer(logger: Logger) -> FileWriter | None:
    """The open ``FileWriter`` of a plain ``TensorBoardLogger``'s torch ``SummaryWriter``, else None."""
    if not isinstance(logger, TensorBoardLogger) or type(logger).log_metrics is not TensorBoardLogger.log_metrics:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # Lightning then writes with tensorboardX, whose events are its own protobuf classes
        return None
    experiment = logger.experiment
    if not isinstance(experiment, SummaryWriter) or experiment.file_writer is None:
        return None  # closed: log_metrics opens it again
    use_native_checksums()
    return experiment.file_writer


def histogram_bins(writer: Any, finite: torch.Tensor) -> str | int:
    """The ``bins`` for ``writer.add_histogram`` of the finite values ``finite``: TensorBoard's own when they fit.

    TensorBoard's default bins end at 1e20 either way, and values beyond them are dropped (all of them: "The histogram
    is empty"). Beyond, :data:`HUGE_VALUES_BINS` equal-width bins over the values' own range: ``np.histogram`` takes it
    in float64, which holds every finite float32.

    Examples:
        >>> from torch.utils.tensorboard import SummaryWriter
        >>> import tempfile
        >>> writer = SummaryWriter(tempfile.mkdtemp())
        >>> histogram_bins(writer, torch.tensor([1.0, -2.0])), histogram_bins(writer, torch.tensor([1e21]))
        ('tensorflow', 64)
    """
    default_bins = getattr(writer, "default_bins", None)
    if default_bins is None or float(finite.abs().max()) <= default_bins[-1]:
        return "tensorflow"
    return HUGE_VALUES_BINS
