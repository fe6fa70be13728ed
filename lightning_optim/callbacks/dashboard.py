"""``TensorBoardDashboard``: one TensorBoard page (Custom Scalars) with every chart the monitors log.

Examples:
    >>> import lightning as L
    >>> from lightning.pytorch.loggers import TensorBoardLogger
    >>> from lightning_optim.callbacks import LRMonitor
    >>> callbacks = [LRMonitor(log_momentum=True), TensorBoardDashboard()]
    >>> trainer = L.Trainer(callbacks=callbacks, logger=TensorBoardLogger("tb_logs"), max_steps=10)
    >>> list(dashboard_layout(callbacks))
    ['Learning rate', 'Gradient norm']
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.tensorboard import SummaryWriter
from typing_extensions import override

from lightning_optim.callbacks.collector import MetricCollector
from lightning_optim.callbacks.grad_norm_monitor import GradNormMonitor
from lightning_optim.callbacks.lr_monitor import LRMonitor
from lightning_optim.callbacks.scalar_writer import add_scalars, histogram_bins
from lightning_optim.internals import logging_step
from lightning_optim.names import named_parameters
from lightning_optim.stats import dense_gradient

__all__ = ["TensorBoardDashboard", "dashboard_layout"]

Charts = dict[str, list[str]]
"""Chart title -> regexes of the tags the chart draws (Python ``re``, matched from the tag's start)."""

HISTOGRAM_PREFIX = "grad_hist/"

CLIP_SERIES_RUNS = {"total": "norm_before_clipping", "clipped": "norm_after_clipping", "threshold": "clip_threshold"}
"""``grad_norm/<series>`` -> the run (a directory inside the logger's) that carries it on the clipping chart."""

SERIES_WRITE_SECONDS = 2.0
"""How long the clipping chart's series wait in memory before they are written: each write to one of their three runs
wakes that run's writer thread, and they duplicate ``grad_norm/*`` of the logger's own run, so they go out in bursts
(and at each epoch's end, at an exception and at teardown); the writers themselves reach the disk every two minutes."""

_CLIP_SERIES_KEY = re.compile(r"grad_norm/(?:(?P<optimizer>[^/]+)/)?(?P<series>total|clipped|threshold)$")


def clip_series(metrics: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """The clipping chart's series in one step's metrics: run -> {tag: value}.

    TensorBoard colours a chart's lines by run, so the norm before clipping, after it and the threshold, logged in one
    run, would be drawn in one colour. Each goes to a run of its own (:data:`CLIP_SERIES_RUNS`) under one tag,
    ``clipping/norm`` (``clipping/<optimizer>/norm`` with several optimizers), which the chart draws.

    Examples:
        >>> clip_series({"grad_norm/total": 3.0, "grad_norm/clipped": 1.0, "grad_norm/fc": 2.0})
        {'norm_before_clipping': {'clipping/norm': 3.0}, 'norm_after_clipping': {'clipping/norm': 1.0}}
        >>> clip_series({"grad_norm/generator/threshold": 0.5})
        {'clip_threshold': {'clipping/generator/norm': 0.5}}
    """
    series: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        place = _clip_series_place(key)
        if place is not None:
            run, tag = place
            series.setdefault(run, {})[tag] = value
    return series


@functools.lru_cache(maxsize=4096)
def _clip_series_place(key: str) -> tuple[str, str] | None:
    """The run and tag of a metric key on the clipping chart, or None (remembered: every logging step has the same
    keys)."""
    match = _CLIP_SERIES_KEY.match(key)
    if match is None:
        return None
    optimizer = f"{match['optimizer']}/" if match["optimizer"] else ""
    return CLIP_SERIES_RUNS[match["series"]], f"clipping/{optimizer}norm"


def dashboard_layout(callbacks: Iterable[Any]) -> dict[str, dict[str, list[Any]]]:
    """The custom-scalars layout for ``callbacks``, as ``SummaryWriter.add_custom_scalars`` takes it.

    One category per monitor: each callback with a ``dashboard_charts()`` method (returning ``{chart title: [tag
    regexes]}``) gets the category named by its ``dashboard_category`` attribute (default: its class name); two
    callbacks naming the same category share it. Lightning's own ``LearningRateMonitor`` gets the charts of
    :class:`~lightning_optim.callbacks.LRMonitor`. "Learning rate" and "Gradient norm" come first and are always
    there, with built-in charts where no callback provides them.

    Examples:
        >>> dashboard_layout([])["Gradient norm"]["Clip fraction"]
        ['Multiline', ['grad_norm/(?:[^/]+/)?clip_fraction$']]
    """
    builtin: dict[str, Charts] = {
        LRMonitor.dashboard_category: LRMonitor().dashboard_charts(),
        GradNormMonitor.dashboard_category: GradNormMonitor.dashboard_charts(),
    }
    provided: dict[str, Charts] = {}
    for callback in callbacks:
        if isinstance(callback, LearningRateMonitor) and not isinstance(callback, LRMonitor):
            callback = LRMonitor(log_momentum=callback.log_momentum, log_weight_decay=callback.log_weight_decay)
        if not callable(getattr(callback, "dashboard_charts", None)):
            continue
        charts = callback.dashboard_charts()
        if not charts:
            continue  # a callback with nothing to draw in this run (the driver without a spike guard)
        category = getattr(callback, "dashboard_category", type(callback).__name__)
        provided.setdefault(category, {}).update(charts)
    categories = {**builtin, **provided}
    return {
        category: {title: ["Multiline", list(regexes)] for title, regexes in charts.items()}
        for category, charts in categories.items()
    }


class TensorBoardDashboard(L.Callback):
    """Lay out the monitors' metrics on TensorBoard's Custom Scalars page, optionally with gradient histograms.

    At fit start it writes a custom-scalars layout (``add_custom_scalars``) to every ``TensorBoardLogger``: a
    "Learning rate" category (lr of every parameter group, momentum and weight decay when logged), "Gradient
    norm" (``grad_norm/total``, ``grad_norm/clipped`` and ``grad_norm/threshold`` on one chart, the clip fraction,
    non-finite steps, per-layer norms), and one category per other callback that has ``dashboard_charts()`` (e.g.
    "BatchNorm", "Updates"); see :func:`dashboard_layout`. The charts are regexes, so they fill as the metrics are
    logged. Open it with ``tensorboard --logdir <dir>`` at ``http://localhost:6006/#custom_scalars``.

    The clipping chart's three series are also written to runs of their own inside each logger's directory
    (``norm_before_clipping``, ``norm_after_clipping``, ``clip_threshold``; :func:`clip_series`), because TensorBoard
    draws a chart's lines in the colour of their run: so each series gets its own colour, and the legend names it.
    They are written in bursts (:data:`SERIES_WRITE_SECONDS`), and at each epoch's end, an exception and teardown.
    Each fit's writers there start with TensorBoard's restart marker at the step the fit starts from
    (``SummaryWriter(purge_step=...)``): a fit that goes on from an earlier checkpoint in the same directory (the
    app's rollback) replaces the steps after it instead of drawing them twice.

    Without a ``TensorBoardLogger`` it warns once and does nothing.

    Args:
        histogram_every_n_steps: every this many optimizer steps, add a histogram of each parameter's gradient
            (``grad_hist/<parameter name>``, before clipping; sparse gradients by their values, non-finite values
            left out). None (default): no histograms, which cost a device-to-host copy of every gradient.

    Examples:
        >>> import lightning as L
        >>> from lightning.pytorch.loggers import TensorBoardLogger
        >>> dashboard = TensorBoardDashboard(histogram_every_n_steps=100)
        >>> trainer = L.Trainer(callbacks=[dashboard], logger=TensorBoardLogger("tb_logs"), max_steps=10)
    """

    def __init__(self, histogram_every_n_steps: int | None = None) -> None:
        if histogram_every_n_steps is not None and histogram_every_n_steps < 1:
            raise ValueError(f"histogram_every_n_steps must be a positive int or None, got {histogram_every_n_steps}")
        self.histogram_every_n_steps = histogram_every_n_steps
        self._warned = False
        self._histograms_done: set[tuple[int, int]] = set()
        self._series_writers: dict[str, SummaryWriter] = {}
        self._series: list[tuple[int, dict[str, dict[str, float]]]] = []
        self._series_written_at = time.monotonic()
        self._start_step: int | None = None

    @staticmethod
    def _tensorboards(trainer: L.Trainer) -> list[TensorBoardLogger]:
        return [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loggers = self._tensorboards(trainer)
        if not loggers:
            if not self._warned:
                self._warned = True
                rank_zero_warn(
                    "TensorBoardDashboard needs a TensorBoardLogger in the Trainer's loggers; it does nothing here.",
                    category=UserWarning,
                )
            return
        layout = dashboard_layout(trainer.callbacks)  # type: ignore[attr-defined]  # set by Lightning's connector
        for logger in loggers:
            logger.experiment.add_custom_scalars(layout)
        MetricCollector.of(trainer).listen(self._write_clip_series)

    @override
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Not at train start: a fit resumed mid-epoch counts the checkpoint's last step into the logging step only
        # when its first batch starts.
        if self._start_step is None:
            self._start_step = logging_step(trainer)

    def _write_clip_series(self, trainer: L.Trainer, by_step: Mapping[int, Mapping[str, float]]) -> None:
        if not trainer.is_global_zero:
            return
        self._series += [(step, series) for step, metrics in by_step.items() if (series := clip_series(metrics))]
        if time.monotonic() - self._series_written_at >= SERIES_WRITE_SECONDS:
            self._flush_series(trainer)

    def _flush_series(self, trainer: L.Trainer) -> None:
        """Write the clipping chart's series kept since the last write, one event per run and step."""
        points, self._series = self._series, []
        self._series_written_at = time.monotonic()
        if not points:
            return
        for logger in self._tensorboards(trainer):
            log_dir = logger.log_dir
            for step, series in points:
                for run, values in series.items():
                    add_scalars(self._series_writer(os.path.join(log_dir, run)).file_writer, values, step)  # type: ignore[arg-type]  # torch infers None from __init__; closed writers are dropped

    def _series_writer(self, log_dir: str) -> SummaryWriter:
        if log_dir not in self._series_writers:
            self._series_writers[log_dir] = SummaryWriter(log_dir, purge_step=self._start_step)
        return self._series_writers[log_dir]

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush_series(trainer)

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # Lightning calls no callback's teardown after an exception: write and close here, or the series stay behind.
        self._close_series(trainer)

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._close_series(trainer)
        self._start_step = None

    def _close_series(self, trainer: L.Trainer) -> None:
        self._flush_series(trainer)
        for writer in self._series_writers.values():
            writer.close()
        self._series_writers.clear()

    @override
    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self.histogram_every_n_steps is None or not trainer.is_global_zero:
            return
        step = logging_step(trainer)
        # LBFGS calls this hook once per closure evaluation: one histogram per optimizer and step.
        if step % self.histogram_every_n_steps or (step, id(optimizer)) in self._histograms_done:
            return
        loggers = self._tensorboards(trainer)
        if not loggers:
            return
        self._histograms_done = {done for done in self._histograms_done if done[0] == step} | {(step, id(optimizer))}
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        for name, parameter in named_parameters(pl_module):
            grad = dense_gradient(parameter) if id(parameter) in in_optimizer else None
            if grad is None:
                continue
            values = grad.detach().float().flatten()
            values = values[torch.isfinite(values)].cpu()
            if values.numel() == 0:
                continue
            for logger in loggers:
                writer = logger.experiment
                writer.add_histogram(
                    HISTOGRAM_PREFIX + name, values, global_step=step, bins=histogram_bins(writer, values)
                )
