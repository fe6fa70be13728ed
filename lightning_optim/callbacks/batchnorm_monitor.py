"""``BatchNormMonitor``: the health of every BatchNorm layer, measured on Lightning's logging steps only.

Examples:
    >>> import lightning as L
    >>> from lightning_optim.demos import DigitsCNN, DigitsDataModule
    >>> monitor = BatchNormMonitor(report=False)
    >>> trainer = L.Trainer(max_steps=2, log_every_n_steps=1, limit_val_batches=0, callbacks=[monitor],
    ...                     logger=False, enable_checkpointing=False, enable_progress_bar=False,
    ...                     enable_model_summary=False)
    >>> trainer.fit(DigitsCNN(width=4), DigitsDataModule(batch_size=32))
    >>> [row["layer"] for row in monitor.report_rows()], sorted(monitor.last["features.1"])[:3]
    (['features.1', 'features.4'], ['bias_max', 'bias_mean', 'bias_min'])
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.nn.parameter import is_lazy
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from lightning_optim.callbacks.batchnorm_report import HealthLimits, report_health, report_row
from lightning_optim.callbacks.collector import MetricCollector
from lightning_optim.callbacks.scalar_writer import histogram_bins
from lightning_optim.errors import argument_error, positive_int_argument
from lightning_optim.internals import (
    BatchNormLayer,
    is_batchnorm,
    is_compiled,
    is_last_batch,
    logging_step,
    measures,
)
from lightning_optim.names import named_modules
from lightning_optim.stats.batchnorm import DEAD_VARIANCE, rank_divergence, unrecoverable
from lightning_optim.stats.batchnorm_layers import (
    SUMMARIZED,
    LayerColumns,
    LayerUpdates,
    forward_columns,
    layers_values,
)

__all__ = ["BatchNormMonitor"]

SUMMARY_KEYS = tuple(f"{name}_{key}" for name in SUMMARIZED for key in ("mean", "min", "max"))


class BatchNormMonitor(L.Callback):
    """Log how every BatchNorm layer's batches compare with its running statistics; report unhealthy layers.

    Watches every ``torch.nn`` BatchNorm layer of the model (``BatchNorm1d/2d/3d``, their lazy variants,
    ``SyncBatchNorm``), found by :func:`~lightning_optim.internals.is_batchnorm` and named by its
    qualified name (``features.1``). On a logging step (Lightning's own decision, the one ``self.log`` and
    ``LearningRateMonitor`` follow) it copies the running statistics at the batch's start and attaches a forward hook
    to each layer for that batch only, which compares the training batch with the statistics before the layer
    updated them; the batch's mean and variance are those the layer's forward saved for its backward where torch's
    own kernel ran (:func:`~lightning_optim.stats.batchnorm_layers.forward_columns`), else computed from its input. The
    hooks are removed at the end of the batch, and a non-logging step costs nothing (no hook, no ``.item()``). Only
    rank zero measures; the values become Python numbers once per logging step. Logged keys, at the step
    Lightning's own metrics use (``<layer>`` is the qualified name):

    - ``batchnorm/<layer>/mean_drift``: mean over channels of ``|batch mean - running mean| / sqrt(running var
      + eps)``; ``batchnorm/<layer>/var_ratio``: mean over channels of ``batch var / (running var + eps)``
      (both absent for ``track_running_stats=False``);
    - ``batchnorm/<layer>/dead_fraction``: share of channels whose batch variance is below ``dead_threshold``;
    - ``batchnorm/<layer>/{running_mean,running_var,weight,bias}_{mean,min,max}``: the buffers and the affine
      parameters (those the layer has) summarized over channels, read before the update;
    - ``batchnorm/<layer>/rank_divergence`` (DDP without ``SyncBatchNorm``, at each validation start during
      fit): see :func:`~lightning_optim.stats.batchnorm.rank_divergence`;
    - histograms ``batchnorm/<layer>/input`` and ``batchnorm/<layer>/output`` (with ``histogram_every_n`` and a
      ``TensorBoardLogger``): the distributions before and after the layer.

    Warnings, each once per layer and naming it: a layer in eval mode in a training forward (it normalizes
    with its running statistics and stops updating them: frozen on purpose, or by mistake); a training batch
    with fewer than ``min_batch_size`` samples on the device (an epoch's last, partial batch excepted); ranks
    whose running statistics diverge by more than ``divergence_threshold`` (advice: ``sync_batchnorm=True``).

    Under ``torch.compile`` (the model compiled whole, ``torch.compile(lightning_module)`` handed to the Trainer; a
    compiled submodule; ``Module.compile()``: :func:`~lightning_optim.internals.is_compiled`) no hook is attached: the
    compiled graph ignores hooks added after compilation, and would recompile once per layer without that guard. The
    monitor copies the running statistics at the logging batch's start instead, and after its first forward
    recovers the batch's mean and unbiased variance from the update the layer made
    (:func:`~lightning_optim.stats.batchnorm.statistics_from_update`): the same keys and values as eager (to float
    rounding, divided by ``momentum``), nothing added to the graph, no recompile, no cost on other steps. Not
    measured there, said once in a warning naming each: the histograms and the ``min_batch_size`` check (they need
    the activations); ``mean_drift``/``var_ratio``/``dead_fraction`` of a layer with ``momentum=None``,
    ``track_running_stats=False`` or low-precision running statistics, in eval mode, or run more than once in the
    batch. Names drop torch.compile's ``_orig_mod`` level (:mod:`lightning_optim.names`), so tags match eager runs.
    A function compiled inside ``training_step`` is not recognized: its layers' hooks do nothing inside the graph
    and the recovered statistics take their place where a layer ran once.

    NaN/Inf (a non-finite batch, or a step that already made the model non-finite) never stops the monitor: a
    value that is not finite is not logged (and leaves ``last``; ``nonfinite`` names it until it is finite again),
    a histogram shows the finite values only (none when nothing is finite), and each of the two is warned about
    once, naming the layers or the histogram and the step. Finite values beyond TensorBoard's default bins (|x| >
    1e20) get equal-width bins over their own range.

    At the end of fit, rank zero prints a table of every layer with its last measurement and writes the same
    rows to ``<trainer.log_dir>/batchnorm_report.json`` (when the trainer has a logger). A row needs attention
    when the layer was in eval mode during training, has a dead channel, ``mean_drift > drift_threshold``,
    ``var_ratio`` outside ``var_ratio_range``, ``rank_divergence > divergence_threshold``, a batch of fewer
    than ``min_batch_size`` samples, or NaN/Inf statistics.

    Args:
        dead_threshold: Batch variance below which a channel counts as dead.
        drift_threshold: ``mean_drift`` above which the report marks a layer.
        var_ratio_range: ``(low, high)``; a ``var_ratio`` outside it marks a layer in the report.
        divergence_threshold: ``rank_divergence`` above which a layer is warned about and marked.
        min_batch_size: Per-device samples below which a training batch is too small for BatchNorm.
        histogram_every_n: Write input/output histograms every this many measured logging steps (first one
            included); None: never.
        report: Print the table and write the JSON at the end of fit.
        every_n_logging_steps: Measure on the first of Lightning's logging steps and every this many after it (the
            others cost nothing): the loss can be logged every step while the BatchNorm layers are measured every
            tenth.

    Examples:
        >>> monitor = BatchNormMonitor(histogram_every_n=10)
        >>> monitor.dashboard_category, monitor.dashboard_charts()["Mean drift"]
        ('BatchNorm', ['^batchnorm/.*/mean_drift$'])
    """

    def __init__(
        self,
        dead_threshold: float = DEAD_VARIANCE,
        drift_threshold: float = 0.5,
        var_ratio_range: tuple[float, float] = (0.5, 2.0),
        divergence_threshold: float = 0.05,
        min_batch_size: int = 8,
        histogram_every_n: int | None = None,
        report: bool = True,
        every_n_logging_steps: int = 1,
    ) -> None:
        if histogram_every_n is not None and histogram_every_n < 1:
            raise argument_error("BatchNormMonitor", "histogram_every_n", histogram_every_n, "a positive int or None")
        low, high = var_ratio_range
        self.dead_threshold = dead_threshold
        self.drift_threshold = drift_threshold
        self.var_ratio_range = (float(low), float(high))
        self.divergence_threshold = divergence_threshold
        self.min_batch_size = min_batch_size
        self.histogram_every_n = histogram_every_n
        self.report = report
        self.every_n_logging_steps = positive_int_argument(
            "BatchNormMonitor", "every_n_logging_steps", every_n_logging_steps
        )
        self.layers: dict[str, BatchNormLayer] = {}
        self.last: dict[str, dict[str, float]] = {}
        """The last logged values of each layer, by key without the ``batchnorm/<layer>/`` prefix."""
        self.nonfinite: dict[str, set[str]] = {}
        """Each layer's keys whose last measurement was NaN/Inf (not logged, and absent from ``last``)."""
        self.modes: dict[str, bool] = {}
        self.batch_sizes: dict[str, int] = {}
        self.compiled = False
        """Whether the model runs under ``torch.compile`` (:func:`~lightning_optim.internals.is_compiled`)."""
        self._handles: list[RemovableHandle] = []
        self._measuring = False
        self._pending: dict[str, LayerColumns] = {}
        self._before: LayerUpdates | None = None
        self._updates_read = False
        self._updates: dict[str, tuple[LayerColumns, torch.Tensor | None]] = {}
        self._step = -1
        self._partial_batch = False
        self._logging_steps = 0
        self._histograms: TensorBoardLogger | None = None
        self._histogram_done: set[str] = set()
        self._warned: set[tuple[str, str]] = set()
        self.warnings: list[str] = []
        """The warnings given (each also went to ``rank_zero_warn``); the JSON report lists them too."""

    dashboard_category = "BatchNorm"
    """The category of :meth:`dashboard_charts` on the TensorBoard dashboard."""

    @staticmethod
    def dashboard_charts() -> dict[str, list[str]]:
        """Chart title → regexes of the tags it plots, for the "BatchNorm" category of the TensorBoard dashboard."""
        return {
            "Mean drift": [r"^batchnorm/.*/mean_drift$"],
            "Variance ratio": [r"^batchnorm/.*/var_ratio$"],
            "Dead channel fraction": [r"^batchnorm/.*/dead_fraction$"],
            "Rank divergence": [r"^batchnorm/.*/rank_divergence$"],
            "Running mean": [r"^batchnorm/.*/running_mean_(mean|min|max)$"],
            "Running variance": [r"^batchnorm/.*/running_var_(mean|min|max)$"],
            "Weight": [r"^batchnorm/.*/weight_(mean|min|max)$"],
            "Bias": [r"^batchnorm/.*/bias_(mean|min|max)$"],
        }

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        MetricCollector.of(trainer).join(self)

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.layers = {name: module for name, module in named_modules(pl_module) if is_batchnorm(module)}
        self.compiled = is_compiled(pl_module)
        if self.compiled and self.layers and trainer.is_global_zero:
            self._warn_compiled()

    def _warn_compiled(self) -> None:
        missing = ["the per-device batch-size check (min_batch_size)"]
        if self.histogram_every_n is not None:
            missing.insert(0, "the input/output histograms")
        reasons = {name: reason for name, layer in self.layers.items() if (reason := unrecoverable(layer))}
        layers = "".join(
            f"; mean_drift, var_ratio and dead_fraction of '{name}' ({why})" for name, why in reasons.items()
        )
        self._warn_once(
            "",
            "compiled",
            "BatchNormMonitor: the model runs under torch.compile, whose graph ignores forward hooks added after "
            "compilation (and recompiles per layer if told not to), so each layer's batch mean and variance are "
            "recovered from the update they make to its running statistics, read outside the graph on logging steps. "
            f"Not measured under compile: {' and '.join(missing)}, which need the activations inside the graph"
            f"{layers}; and the batch statistics of a layer in eval mode or run more than once per training batch.",
        )

    @override
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self.layers or not trainer.is_global_zero or not measures(trainer, self.every_n_logging_steps):
            return
        step = logging_step(trainer)
        if step == self._step:  # under gradient accumulation several batches share one logging step
            return
        self._step = step
        self._partial_batch = is_last_batch(trainer)
        self._histograms = None
        if self.histogram_every_n is not None and self._logging_steps % self.histogram_every_n == 0:
            self._histograms = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        self._logging_steps += 1
        self._measuring = True
        # The running statistics as the batch starts, which each layer's first forward in it starts from: what the
        # hooks compare the batch with, and, for a layer no hook sees (inside a graph compiled out of sight), what its
        # update is measured against.
        self._before, self._updates_read = LayerUpdates(self.layers), False
        if self.compiled:
            self._histograms = None
            return
        for name, layer in self.layers.items():
            # Ahead of FSDP2's own forward hook, which reshards the layer's parameters after its forward: the
            # summaries read them whole, as every rank has them then (rank zero alone must not all-gather).
            self._handles.append(layer.register_forward_hook(partial(self._measure, name), prepend=True))
            if self._histograms is not None:
                self._handles.append(layer.register_forward_hook(partial(self._output_histogram, name)))

    def _measure(self, name: str, layer: BatchNormLayer, args: tuple[Any, ...], output: Any) -> None:
        # Traced into a graph compiled while it was attached, the hook must be a no-op: the graph keeps it for good.
        if torch.compiler.is_compiling():
            return
        # Only the first forward of the batch: a closure evaluated again (LBFGS) sees the same data.
        if name in self._pending or not args or not isinstance(args[0], torch.Tensor):
            return
        # A lazy layer materialized by this forward had nothing to copy at the batch's start: measured from the next.
        copied = self._before
        if copied is None or name not in copied.before:
            return
        inputs = args[0]
        running_mean, running_var, _ = copied.before[name]
        moments, values_per_channel = forward_columns(
            layer, inputs, output if isinstance(output, torch.Tensor) else None
        )
        running = {}
        if running_mean is not None and running_var is not None:
            running = {"running_mean": running_mean, "running_var": running_var}
        vectors = moments | running | copied.affine_of(name)
        self._pending[name] = LayerColumns(vectors, float(layer.eps), values_per_channel)
        self.modes[name] = layer.training
        self.batch_sizes[name] = inputs.shape[0]
        if self._histograms is not None:
            self._add_histogram(f"batchnorm/{name}/input", inputs)

    def _output_histogram(self, name: str, layer: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self._histograms is not None and isinstance(output, torch.Tensor) and name not in self._histogram_done:
            self._histogram_done.add(name)
            self._add_histogram(f"batchnorm/{name}/output", output)

    def _add_histogram(self, tag: str, values: torch.Tensor) -> None:
        # TensorBoard's histogram raises on any NaN/Inf ("The histogram is empty"): keep the finite values.
        values = values.detach().float().flatten()
        finite = values[torch.isfinite(values)]
        if finite.numel() < values.numel():
            self._warn_once(
                "",
                "histogram",
                f"BatchNormMonitor: histogram '{tag}' at step {self._step} has "
                f"{values.numel() - finite.numel()} NaN/Inf values out of {values.numel()}. Histograms show the "
                "finite values only, and are not written when none is finite (said once).",
            )
        if finite.numel() and self._histograms is not None:
            writer = self._histograms.experiment
            writer.add_histogram(tag, finite, self._step, bins=histogram_bins(writer, finite))

    @override
    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        self._read_updates()

    def _read_updates(self) -> None:
        """Measure the layers no hook measured from their running statistics' update, once per logging batch: after
        its first forward (before the first backward; at the batch's end if there is none)."""
        if self._before is None or self._updates_read:
            return
        self._updates_read = True
        self._updates = self._before.columns(skip=self._pending)

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self._measuring:
            self._hand_over(MetricCollector.of(trainer))
        MetricCollector.of(trainer).batch_end(trainer, self)

    def _hand_over(self, collector: MetricCollector) -> None:
        """Hand the logging batch's measurements to the collector as one tensor for every layer (no host sync
        here)."""
        self._read_updates()
        self._remove_hooks()
        self._measuring, self._before = False, None
        pending, self._pending = self._pending, {}
        updates, self._updates = self._updates, {}
        columns = pending | {name: layer for name, (layer, _) in updates.items()}
        keys, values = layers_values(columns, self.dead_threshold)
        forwards = {f"forwards:{name}": count for name, (_, count) in updates.items() if count is not None}
        stacked = [([f"{name}/{key}" for name, layer_keys in keys.items() for key in layer_keys], values)]
        if keys or forwards:
            measured_by_update = [name for name in updates if name in keys]
            finish = partial(self._metrics, keys, measured_by_update, self._step)
            collector.add(self._step, forwards, finish, stacked=stacked if keys else [])

    def _metrics(
        self, keys: dict[str, list[str]], measured_by_update: list[str], step: int, numbers: dict[str, float]
    ) -> dict[str, float]:
        """The metrics of :meth:`_hand_over`'s values made Python numbers: the hooks' measurements, and those from
        the running statistics' update that describe the batch; ``last``, ``modes`` and the warnings updated."""
        chosen: list[tuple[str, str]] = []
        for name, layer_keys in keys.items():
            if name not in measured_by_update:
                chosen += [(name, key) for key in layer_keys]
                continue
            usable = self._usable_keys(name, numbers.get(f"forwards:{name}"))
            if usable:
                self.modes[name] = self.layers[name].training
            chosen += [(name, key) for key in layer_keys if key in usable]
        metrics = self._finite_metrics(chosen, [numbers[f"{name}/{key}"] for name, key in chosen], step)
        self._check_modes_and_batches()
        return metrics

    def _usable_keys(self, name: str, forwards: float | None) -> set[str]:
        """Which of a layer's values measured from its update describe this batch, given how many training forwards
        updated it (None: a layer without running statistics, whose summaries are all there is)."""
        everything = {"mean_drift", "var_ratio", "dead_fraction", *SUMMARY_KEYS}
        if forwards == 1:
            return everything
        if not self.compiled:  # eager: the hook measured whatever ran through the module
            return set()
        if forwards is None:
            return everything
        layer = self.layers[name]
        if forwards == 0 and layer.training:  # not called in this batch
            return set()
        if forwards > 1:
            self._warn_once(
                name,
                "forwards",
                f"BatchNormMonitor: BatchNorm layer '{name}' ran {forwards:.0f} training forwards in the batch of step "
                f"{self._step}. Under torch.compile its batch statistics are recovered from the running statistics' "
                "update, which mixes those batches: mean_drift, var_ratio and dead_fraction are not logged for it "
                "while that lasts (said once).",
            )
        return set(SUMMARY_KEYS)

    def _finite_metrics(self, keys: list[tuple[str, str]], numbers: list[float], step: int) -> dict[str, float]:
        """The metrics of the finite numbers; ``last`` and ``nonfinite`` updated; the first NaN/Inf is warned about."""
        metrics: dict[str, float] = {}
        missing: dict[str, list[str]] = {}
        for (name, key), number in zip(keys, numbers, strict=True):
            last, nonfinite = self.last.setdefault(name, {}), self.nonfinite.setdefault(name, set())
            if math.isfinite(number):
                last[key] = number
                nonfinite.discard(key)
                metrics[f"batchnorm/{name}/{key}"] = number
            else:
                last.pop(key, None)
                nonfinite.add(key)
                missing.setdefault(name, []).append(key)
        if missing:
            name, first = next(iter(missing.items()))
            others = f" and {len(missing) - 1} other layer(s)" if len(missing) > 1 else ""
            self._warn_once(
                "",
                "nonfinite",
                f"BatchNormMonitor: NaN/Inf statistics at step {step} in layer '{name}' ({', '.join(first)})"
                f"{others}: its input, running statistics or affine parameters are not finite (a NaN/Inf batch, "
                "or an earlier step that made the model non-finite). They are not logged while they stay so, and "
                "the report marks the layers (said once).",
            )
        return metrics

    def _check_modes_and_batches(self) -> None:
        for name, training in self.modes.items():
            layer = self.layers[name]
            if not training and layer.track_running_stats:
                self._warn_once(
                    name,
                    "eval",
                    f"BatchNorm layer '{name}' ({type(layer).__name__}) is in eval mode while the model trains: it "
                    "normalizes with its running statistics and does not update them. If it is frozen on purpose, "
                    "ignore this; otherwise call .train() on it (Lightning keeps a submodule's eval mode).",
                )
        if self._partial_batch:
            return
        for name, samples in self.batch_sizes.items():
            if samples < self.min_batch_size:
                self._warn_once(
                    name,
                    "batch",
                    f"BatchNorm layer '{name}' gets training batches of {samples} samples per device, fewer than "
                    f"min_batch_size={self.min_batch_size}: its batch statistics are noisy and differ from the "
                    "running ones used at validation. Use larger per-device batches, sync_batchnorm=True under "
                    "DDP, or GroupNorm/LayerNorm.",
                )

    def _warn_once(self, name: str, kind: str, message: str) -> None:
        if (name, kind) not in self._warned:
            self._warned.add((name, kind))
            self.warnings.append(message)
            rank_zero_warn(message, category=UserWarning)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A batch whose on_train_batch_end never ran (the module's on_train_batch_start returned -1) must not
        # leave hooks that would measure validation batches.
        self._stop_measuring()

    @override
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_measuring()
        if trainer.world_size < 2 or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        layers = {
            name: (layer.running_mean, layer.running_var, layer.eps)
            for name, layer in self.layers.items()
            if not isinstance(layer, nn.SyncBatchNorm)
            and layer.running_mean is not None
            and layer.running_var is not None
            and not is_lazy(layer.running_mean)
        }
        if not layers:
            return
        with torch.no_grad():
            # One collective for all layers: each rank's buffers, concatenated in the same (module) order.
            flat = torch.cat([torch.cat([mean, var]).float() for mean, var, _ in layers.values()])
            gathered = trainer.strategy.all_gather(flat)
            divergences, offset = [], 0
            for mean, _, eps in layers.values():
                channels = mean.numel()
                means = gathered[:, offset : offset + channels]
                variances = gathered[:, offset + channels : offset + 2 * channels]
                divergences.append(rank_divergence(means, variances, eps))
                offset += 2 * channels
        if not trainer.is_global_zero:
            return
        numbers = torch.stack(divergences).tolist()
        step = logging_step(trainer)
        metrics = self._finite_metrics([(name, "rank_divergence") for name in layers], numbers, step)
        for name, number in zip(layers, numbers, strict=True):
            if number > self.divergence_threshold:
                self._warn_once(
                    name,
                    "divergence",
                    f"BatchNorm layer '{name}': the running statistics of the {trainer.world_size} ranks diverge "
                    f"(rank_divergence {number:.3g} > {self.divergence_threshold}), so each rank validates with "
                    "different statistics. Set Trainer(sync_batchnorm=True) to normalize with the statistics of "
                    "the whole batch across ranks (SyncBatchNorm needs GPUs).",
                )
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    def report_rows(self) -> list[dict[str, Any]]:
        """One row per layer: its last measurement, mode, divergence, and the reasons it needs attention
        (:func:`~lightning_optim.callbacks.batchnorm_report.report_row`)."""
        limits = self._limits()
        return [
            report_row(
                name,
                layer,
                self.last.get(name, {}),
                self.modes.get(name),
                self.batch_sizes.get(name),
                self.nonfinite.get(name, set()),
                limits,
            )
            for name, layer in self.layers.items()
        ]

    def _limits(self) -> HealthLimits:
        return HealthLimits(
            self.dead_threshold,
            self.drift_threshold,
            self.var_ratio_range,
            self.divergence_threshold,
            self.min_batch_size,
        )

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.report or not self.layers:
            return
        # trainer.log_dir is a collective under DDP: every rank asks, rank zero writes.
        log_dir = trainer.log_dir if trainer.loggers else None
        if trainer.is_global_zero:
            report_health(self.report_rows(), log_dir, self._step, self._limits(), self.warnings)

    def _stop_measuring(self) -> None:
        self._remove_hooks()
        self._measuring = False
        self._pending, self._updates, self._before = {}, {}, None

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._histogram_done = set()

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._stop_measuring()
