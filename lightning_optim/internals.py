"""Every private attribute of Lightning and torch the package reads, one named function each.

The public APIs do not expose these (each docstring says what is read and why); reading them here means that an
upgrade which renames one touches this file only, and fails exactly one test in ``tests/test_internals.py``, which
checks each function against the public behaviour it stands for. Nothing is imported from Lightning at runtime, so
the pure modules (``stats/``, ``clipping.py``) may use it too.

One use stays outside: :class:`~lightning_optim.callbacks.LRMonitor` subclasses Lightning's ``LearningRateMonitor``
and overrides its private ``_extract_stats``/``_extract_lr``/``_extract_momentum``/``_extract_weight_decay`` and
calls its ``_find_names_from_schedulers``, ``_find_names_from_optimizers``, ``_remap_keys`` and
``_get_optimizer_stats`` (to name its keys without a logger, and to fill ``callback_metrics`` without a host
sync); a subclass's overrides cannot live elsewhere (tests/callbacks/test_lr_monitor.py covers them).

Examples:
    >>> import torch
    >>> is_batchnorm(torch.nn.LazyBatchNorm2d()), is_batchnorm(torch.nn.InstanceNorm2d(3))
    (True, False)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypeGuard

import torch
from torch.nn.modules.batchnorm import _BatchNorm

if TYPE_CHECKING:
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

__all__ = [
    "BatchNormLayer",
    "attached_trainer",
    "batchnorm_saved_statistics",
    "callback_metrics_store",
    "ends_epoch",
    "grad_scaler",
    "is_batchnorm",
    "is_compiled",
    "is_last_batch",
    "logger_prefix",
    "logging_step",
    "own_buffers",
    "resumed_epoch",
    "scale_tensor",
    "should_log",
    "stepping_batches_done",
    "stop_as_on_sigterm",
    "swa_batchnorm_epochs",
    "torch_optimizer",
    "unscales_in_step",
]


def should_log(trainer: L.Trainer) -> bool:
    """Whether this training batch is one of Lightning's logging steps (``log_every_n_steps``).

    Reads ``trainer._logger_connector.should_update_logs``, the decision Lightning's own ``self.log`` and
    ``LearningRateMonitor`` follow: ``(logging_step(trainer) + 1) % log_every_n_steps == 0``, or the run is
    stopping. Lightning has no public accessor for it, and recomputing it would drift from Lightning's rule.
    """
    return trainer._logger_connector.should_update_logs


def logging_step(trainer: L.Trainer) -> int:
    """The step at which Lightning logs this batch's ``self.log`` metrics: optimizer steps taken so far.

    Reads ``trainer.fit_loop.epoch_loop._batches_that_stepped`` (Lightning's logger connector and
    ``LearningRateMonitor`` log at it). ``trainer.global_step`` is not it: it counts every optimizer of a
    multi-optimizer model and is not the logger's axis after a resume from a mid-epoch checkpoint.
    """
    return trainer.fit_loop.epoch_loop._batches_that_stepped


def measures(trainer: L.Trainer, every_n_logging_steps: int) -> bool:
    """Whether a monitor that measures on every ``every_n_logging_steps``-th of Lightning's logging steps measures
    this batch (:func:`should_log` and :func:`is_every_nth_logging_step`)."""
    logging = should_log(trainer)
    if not logging or every_n_logging_steps == 1:
        return logging
    interval: int = trainer.log_every_n_steps  # type: ignore[attr-defined]  # set by Lightning's logger connector
    return is_every_nth_logging_step(logging_step(trainer), interval, every_n_logging_steps)


def is_every_nth_logging_step(step: int, log_every_n_steps: int, every_n: int) -> bool:
    """Whether logging step ``step`` is the first, the ``(1 + every_n)``-th, ... of Lightning's regular logging steps
    (those with ``(step + 1) % log_every_n_steps == 0``). Counted from the step, not from the steps seen, so a resumed
    run measures the same steps as one that never stopped; a logging step Lightning adds because the run is stopping
    counts as the regular one before it.

    Examples:
        >>> [step for step in range(12) if (step + 1) % 2 == 0 and is_every_nth_logging_step(step, 2, every_n=3)]
        [1, 7]
    """
    return ((step + 1) // log_every_n_steps - 1) % every_n == 0


def is_last_batch(trainer: L.Trainer) -> bool:
    """Whether the training batch being run is the last one the dataloader yields this epoch (it may be smaller).

    Reads ``trainer.fit_loop.epoch_loop.batch_progress.is_last_batch`` (the loops are private classes), which
    Lightning sets before ``on_train_batch_start``; hooks are not told it.
    """
    return trainer.fit_loop.epoch_loop.batch_progress.is_last_batch


def ends_epoch(trainer: L.Trainer) -> bool:
    """Whether the epoch ends after the training batch being run: the dataloader's last batch, or the last one
    ``limit_train_batches`` allows.

    Reads ``batch_progress`` of ``trainer.fit_loop.epoch_loop``: ``is_last_batch``, or ``current.ready`` (the
    batches of this epoch so far, restored on resume) reaching ``trainer.num_training_batches``.
    """
    progress = trainer.fit_loop.epoch_loop.batch_progress
    return progress.is_last_batch or progress.current.ready == trainer.num_training_batches


def resumed_epoch(trainer: L.Trainer) -> tuple[int, int | None]:
    """The batches already run of the epoch under way at train start, and the accumulation Lightning resumes it with.

    ``(0, None)`` unless the run resumes an epoch it had begun. Lightning then skips ``on_train_epoch_start`` for that
    epoch, so a ``GradientAccumulationScheduler`` does not set its factor again and the epoch goes on with the
    trainer's ``accumulate_grad_batches`` as it is. Reads the fit loop's restart stage (``restarted_mid_epoch``,
    ``restarted_on_epoch_end``, the decision its ``on_advance_start`` takes) and the epoch loop's
    ``batch_progress.current.ready`` (a finished epoch's count stands for the next one, which starts from its first
    batch). Nothing public tells where a resumed epoch starts.
    """
    loop = trainer.fit_loop
    if not (loop.restarted_mid_epoch or loop.restarted_on_epoch_end):
        return 0, None
    done = loop.epoch_loop.batch_progress.current.ready
    return (done if done < trainer.num_training_batches else 0), trainer.accumulate_grad_batches


def stepping_batches_done(trainer: L.Trainer) -> int:
    """The batches so far that ended with an optimizer step, counted as ``trainer.estimated_stepping_batches`` counts.

    Under automatic optimization (one optimizer) that is ``trainer.global_step``. Under manual optimization
    ``global_step`` counts every ``optimizer.step()`` of every optimizer, while Lightning's estimate counts batches
    (a manual run does not accumulate): this reads the epoch loop's ``batch_progress.total.ready``, the batches run
    (restored on resume). ``_batches_that_stepped``, the logger's axis, is one behind at train start after some
    resumes (Lightning corrects it when the epoch loop resets, after ``on_train_start``).
    """
    module = trainer.lightning_module
    if module is None or module.automatic_optimization:
        return trainer.global_step
    return trainer.fit_loop.epoch_loop.batch_progress.total.ready


def swa_batchnorm_epochs(trainer: L.Trainer) -> int:
    """The epochs Lightning's ``StochasticWeightAveraging`` added to ``trainer.max_epochs`` for its BatchNorm update.

    For a model with BatchNorm, the callback's ``on_fit_start`` adds one epoch (``fit_loop.max_epochs += 1``) in which
    it only recomputes the BatchNorm statistics of the averaged weights, and its ``on_train_end`` takes it away again;
    ``trainer.max_epochs`` (and ``estimated_stepping_batches``) count it in between, and nothing public says so.
    Reads the callback's ``_model_contains_batch_norm`` and ``_max_epochs`` (the ``max_epochs`` it found, set in
    ``on_fit_start``): 1 while ``trainer.max_epochs`` is one more than that, else 0. Lightning is imported here, at
    the call, as the callback's class is needed only when a trainer exists.
    """
    from lightning.pytorch.callbacks import StochasticWeightAveraging

    for callback in getattr(trainer, "callbacks", []):
        if isinstance(callback, StochasticWeightAveraging) and callback._model_contains_batch_norm:
            found = getattr(callback, "_max_epochs", None)
            if found is not None and found != -1 and trainer.max_epochs == found + 1:
                return 1
    return 0


def attached_trainer(module: L.LightningModule) -> L.Trainer | None:
    """The Trainer the module is attached to, or None.

    Reads ``module._trainer``: the public ``module.trainer`` raises instead of returning None when there is none.
    """
    return module._trainer


def grad_scaler(trainer: L.Trainer | None) -> torch.amp.GradScaler | None:
    """The AMP ``GradScaler`` of the Trainer's precision plugin (``precision="16-mixed"``), or None.

    Reads ``trainer.precision_plugin.scaler``: only ``MixedPrecision`` has that attribute, and the Trainer has no
    accessor for it.
    """
    return getattr(trainer.precision_plugin, "scaler", None) if trainer is not None else None


def scale_tensor(scaler: torch.amp.GradScaler) -> torch.Tensor | None:
    """The scale the gradients carry, as a tensor on the scaler's device: no host sync (None before the first
    ``scaler.scale``).

    Reads ``scaler._get_scale_async()``: the public ``get_scale()`` returns a Python float, a host sync per step.
    """
    return scaler._get_scale_async()


def torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer itself, also when Lightning hands its ``LightningOptimizer`` wrapper.

    Reads ``LightningOptimizer._optimizer``. Its public ``optimizer`` property holds the same, but telling the
    wrapper apart would need Lightning's class, which this module does not import.
    """
    return getattr(optimizer, "_optimizer", optimizer)


def unscales_in_step(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step`` unscales AMP gradients itself (torch's fused Adam, AdamW, SGD, Adagrad).

    Reads ``_step_supports_amp_scaling``, the flag ``GradScaler`` checks: for such an optimizer it does not
    unscale before the step, and Lightning leaves the gradients scaled until the step. torch documents the
    behaviour but not the flag.
    """
    return getattr(optimizer, "_step_supports_amp_scaling", False)


BatchNormLayer = _BatchNorm
"""The common base of ``BatchNorm1d/2d/3d``, their lazy forms and ``SyncBatchNorm`` (torch's private ``_BatchNorm``)."""


def is_batchnorm(module: torch.nn.Module) -> TypeGuard[BatchNormLayer]:
    """Whether the module is a BatchNorm layer: ``BatchNorm1d/2d/3d``, their lazy forms, ``SyncBatchNorm``.

    Checks against ``torch.nn.modules.batchnorm._BatchNorm``, their only common base (``_NormBase`` also covers
    instance norm); listing the public classes would miss a lazy layer before its first forward.
    """
    return isinstance(module, _BatchNorm)


def batchnorm_saved_statistics(output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The per-channel batch mean and inverse standard deviation (``1 / sqrt(biased var + eps)``) that a BatchNorm
    training forward saved for its backward, or None where it saved none.

    Reads ``output.grad_fn._saved_result1`` and ``_saved_result2`` when ``grad_fn`` is a ``NativeBatchNormBackward0``
    (torch's own kernel: CPU, CUDA without cuDNN) that was training: what ``native_batch_norm`` returned besides the
    output, which torch keeps for the backward under no public name. Without a graph (no gradient), for cuDNN's or
    ``SyncBatchNorm``'s backward, or in eval mode (empty tensors), None.
    """
    grad_fn = output.grad_fn
    if type(grad_fn).__name__ != "NativeBatchNormBackward0" or not getattr(grad_fn, "_saved_training", False):
        return None
    mean, invstd = getattr(grad_fn, "_saved_result1", None), getattr(grad_fn, "_saved_result2", None)
    if not isinstance(mean, torch.Tensor) or not isinstance(invstd, torch.Tensor) or not mean.numel():
        return None
    return mean, invstd


def own_buffers(module: torch.nn.Module) -> Iterable[torch.Tensor | None]:
    """The module's own buffers (not its children's), None for one registered as None.

    Reads ``module._buffers``: ``module.buffers(recurse=False)`` yields the same tensors through a chain of
    generators, microseconds per layer, and this is read at every optimizer step.
    """
    return module._buffers.values()


def is_compiled(module: torch.nn.Module) -> bool:
    """Whether ``module`` (a LightningModule) runs under ``torch.compile`` in one of the forms Lightning and torch
    record: ``torch.compile(lightning_module)`` handed to the Trainer, a submodule replaced by its compiled form
    (``self.net = torch.compile(self.net)``), or ``nn.Module.compile()`` in place.

    Reads ``module._compiler_ctx`` (set by Lightning's ``from_compiled``, which ``Trainer.fit`` applies to a
    compiled LightningModule; the Trainer keeps no public flag), looks for torch's ``OptimizedModule`` (importable
    only from ``torch._dynamo``) among the submodules, and reads ``nn.Module._compiled_call_impl`` (set by
    ``Module.compile()``, which leaves no other trace). A function compiled inside ``training_step`` is not seen.
    """
    if getattr(module, "_compiler_ctx", None) is not None:
        return True
    from torch._dynamo.eval_frame import OptimizedModule

    return any(
        isinstance(submodule, OptimizedModule) or getattr(submodule, "_compiled_call_impl", None) is not None
        for submodule in module.modules()
    )


def logger_prefix(logger: TensorBoardLogger) -> str:
    """The ``prefix`` a ``TensorBoardLogger`` was made with, which its ``log_metrics`` joins to every key.

    Reads ``logger._prefix``: the logger keeps the argument under no public name.
    """
    return logger._prefix


def callback_metrics_store(trainer: L.Trainer) -> dict[str, torch.Tensor]:
    """The dict ``trainer.callback_metrics`` returns, without the refresh that property makes first.

    Reads ``trainer._logger_connector._callback_metrics``. The public property first recomputes the model's logged
    metrics, converting each progress-bar metric with ``.item()``: a host sync on every access. Keys put here are
    what the property returns next (refreshed with the model's metrics, as after any update through it).
    """
    return trainer._logger_connector._callback_metrics


def stop_as_on_sigterm(trainer: L.Trainer) -> None:
    """Make the Trainer stop where Lightning's own SIGTERM handling stops it, as if its handler had run.

    Sets ``trainer._signal_connector.received_sigterm``, which the public ``trainer.received_sigterm`` returns and
    Lightning's loops check: ``fit`` raises ``SIGTERMException`` at the end of the batch under way (scheduler stepped,
    validation run, logs written; at the end of the epoch if that was training's last batch), and evaluation after
    the batch under way. Lightning's handler sets it too, but also broadcasts from inside the signal handler, which
    deadlocks ranks under DDP.
    """
    trainer._signal_connector.received_sigterm = True
