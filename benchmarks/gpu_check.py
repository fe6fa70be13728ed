"""Every GPU check of lightning_optim in one command: a JSON and the markdown tables for docs/performance.md.

``python benchmarks/gpu_check.py [--device cuda|cpu] [--quick] [--out DIR] [--only CHECK ...]``

Writes ``gpu_check.json`` and ``gpu_check.md`` to ``--out`` (default ``benchmarks/results``) after every check, so
a run that is stopped keeps what it measured. Each check runs under its own time budget (all of them together in
under 8 minutes on one H100); one that fails is recorded with its traceback and the others still run; one that
needs CUDA is recorded as skipped on a CPU. The checks (see :data:`CHECKS`):

* ``host_syncs``: device-to-host syncs per training step of each monitor and of all of them, on logging and
  non-logging steps (``torch.profiler``'s ``aten::_local_scalar_dense``; on CUDA also the warnings of
  ``torch.cuda.set_sync_debug_mode("warn")``, which catch every synchronizing call), against a run without monitors.
* ``amp``: ``16-mixed`` (``GradScaler``) and ``bf16-mixed`` with norm clipping: the folded path (fused AdamW / SGD,
  the mixin's default), the unfolded one (``fold_clipping = False``) and plain Lightning with the unfused optimizer
  give the same parameters after N steps, within the precision's tolerance, and skip the same steps; with an
  initial loss scale that overflows, also the fused-SGD first-step skip.
* ``sync_batchnorm``: ``Trainer(strategy="ddp", devices=1, sync_batchnorm=True)`` with ``BatchNormMonitor`` logs the
  keys of a single-device run, finite (CUDA only: ``SyncBatchNorm`` refuses CPU tensors).
* ``fsdp``: FSDP on one device with norm clipping and ``GradNormMonitor``: ``grad_norm/total`` equals an unsharded
  copy's ``torch.nn.utils.get_total_norm`` at every step (CUDA only: Lightning's FSDP needs a GPU).
* ``sharded``: the cases of ``tests/sharded/`` (FSDP2, tensor parallelism, FSDP2 x TP with 4 GPUs or more under
  ``ModelParallelStrategy``, the spike guard under ``DDPStrategy``) with NCCL, against one GPU: the largest relative
  difference of every logged number, the parameters, the clipping and the adaptive statistics, and the
  ``all_reduce`` calls per step (CUDA and 2 GPUs or more; the CPU form, gloo, is ``tests/sharded/``).
* ``clip_step``: ``benchmarks/clip_step.py`` at 0.1B-1B parameters (whatever fits the free memory): folded, torch's
  way and the floor.
* ``overhead``: step time of all monitors at ``log_every_n_steps`` 50 and 1 on a ResNet-18-like CNN, side by side
  with plain Lightning and Lightning's recipe (``benchmarks/overhead.py``'s interleaved timing).

``--device cpu --quick`` runs everything that runs on a CPU at tiny sizes in well under a minute; a test does that
so the script cannot rot.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import logging
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import clip_step  # clip_step, overhead, gpu_check_report: beside this script, the first entry of sys.path
import lightning as L
import overhead
import torch
import torch.nn.functional as F
from gpu_check_report import markdown
from lightning.pytorch.loggers import Logger
from lightning.pytorch.plugins import MixedPrecision
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_optim import OptimMixin
from lightning_optim.callbacks import BatchNormMonitor, GradNormMonitor
from lightning_optim.internals import should_log

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).parents[1]
TOTAL_SECONDS = 420
"""No check starts later than this, and none runs past it by more than :data:`GRACE_SECONDS`: with the start-up, the
whole run stays under 8 minutes."""


# --------------------------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Context:
    """What every check is given: where it runs, how small, a scratch directory, and its deadline."""

    device: str
    quick: bool
    workdir: str
    deadline: float = math.inf

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    @property
    def cnn(self) -> str:
        """The ResNet of :mod:`overhead`: ResNet-18's widths on a GPU, a narrow one on a CPU."""
        return "resnet" if self.cuda else "resnet_tiny"

    def seconds_left(self) -> float:
        return self.deadline - time.perf_counter()


class MemoryLogger(Logger):
    """Keeps every ``log_metrics`` call in memory: ``(step, metrics)``."""

    def __init__(self) -> None:
        super().__init__()
        self.logged: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Hyperparameters are not kept."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.logged.append((step, dict(metrics)))

    def series(self, key: str) -> list[float]:
        return [metrics[key] for _, metrics in self.logged if key in metrics]

    def keys(self, prefix: str) -> set[str]:
        return {key for _, metrics in self.logged for key in metrics if key.startswith(prefix)}


def fit(
    module: L.LightningModule,
    ctx: Context,
    steps: int,
    callbacks: list[L.Callback],
    model: str,
    log_every: int = 1,
    **options: Any,
) -> L.Trainer:
    """Train ``module`` for ``steps`` steps on ``model``'s data with :func:`overhead.make_trainer`'s settings."""
    options.setdefault("logger", MemoryLogger())
    trainer = overhead.make_trainer(
        "mixin", log_every, steps, ctx.workdir, callbacks, accelerator=ctx.device, **options
    )
    trainer.fit(module, train_dataloaders=overhead.loader(model, steps, ctx.device))
    return trainer


def monitors() -> dict[str, list[L.Callback]]:
    """The monitor configurations: none, each alone, and all of them (``overhead.make_monitors``)."""
    return {
        "none": [],
        **{type(m).__name__: [m] for m in overhead.make_monitors() if type(m).__name__ in SYNC_MONITORS},
        "all": overhead.make_monitors(),
    }


# --------------------------------------------------------------------------------------------------------------
# host_syncs
# --------------------------------------------------------------------------------------------------------------

SYNC_MONITORS = ("GradNormMonitor", "LRMonitor", "BatchNormMonitor")
"""The monitors measured alone; ``all`` adds ``TensorBoardDashboard`` (``overhead.make_monitors``)."""
SYNC_WARNING = "called a synchronizing CUDA operation"


class SyncOps(TorchDispatchMode):
    """Counts the aten calls that make the host wait for the device: ``_local_scalar_dense`` (``item()``,
    ``float(tensor)``, ``bool(tensor)``) and copies from a device to the CPU (``tolist()``, ``.cpu()``)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts = {"items": 0, "to_host": 0}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        result = func(*args, **(kwargs or {}))
        if func is torch.ops.aten._local_scalar_dense.default:
            self.counts["items"] += 1
        elif func is torch.ops.aten._to_copy.default:
            self.counts["to_host"] += to_host(args[0], result)
        elif func is torch.ops.aten.copy_.default:
            self.counts["to_host"] += to_host(args[1], args[0])
        return result


def to_host(source: torch.Tensor, destination: torch.Tensor) -> bool:
    return source.device.type != "cpu" and destination.device.type == "cpu"


class SyncCounter(L.Callback):
    """First callback: counts host syncs per training step (from one batch start to the next), for ``measured``
    steps after ``warmup``: the calls :class:`SyncOps` sees, and on CUDA the warnings of
    ``set_sync_debug_mode("warn")`` recorded in ``records`` (every synchronizing call), with their callers.
    """

    def __init__(self, warmup: int, measured: int, records: list[warnings.WarningMessage] | None) -> None:
        self.warmup, self.measured = warmup, measured
        self.records = records
        self.steps: list[dict[str, Any]] = []
        self.callers: Counter[str] = Counter()
        self._index = 0
        self._ops = SyncOps()

    def _warnings(self) -> list[warnings.WarningMessage]:
        return [w for w in self.records or [] if SYNC_WARNING in str(w.message)]

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        index, self._index = self._index, self._index + 1
        if not self.warmup <= index <= self.warmup + self.measured:
            return
        if index == self.warmup:
            self._ops.__enter__()
        synced = self._warnings()
        if self.steps:
            step = self.steps[-1]
            new = synced[step.pop("warnings_before") :]
            step["sync_warnings"] = len(new) if self.records is not None else None
            step.update({name: count - step.pop(f"{name}_before") for name, count in self._ops.counts.items()})
            self.callers.update(caller(w) for w in new)
        if index < self.warmup + self.measured:
            before = {f"{name}_before": count for name, count in self._ops.counts.items()}
            self.steps.append({"logging": should_log(trainer), "warnings_before": len(synced), **before})
        else:
            self._ops.__exit__(None, None, None)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._index <= self.warmup + self.measured and self._index > self.warmup:
            self._ops.__exit__(None, None, None)  # stopped early: leave no mode behind


def caller(message: warnings.WarningMessage) -> str:
    """``package/module.py:line`` of the Python line that synced."""
    path = Path(message.filename)
    parts = path.parts
    for anchor in ("lightning_optim", "lightning", "torch"):
        if anchor in parts:
            return f"{'/'.join(parts[len(parts) - parts[::-1].index(anchor) - 1 :])}:{message.lineno}"
    return f"{path.name}:{message.lineno}"


def summarize_syncs(steps: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for kind, logging_step in (("logging", True), ("non_logging", False)):
        chosen = [step for step in steps if step["logging"] is logging_step]
        summary[kind] = {
            "steps": len(chosen),
            **{
                f"{count}_per_step": (
                    sum(step[count] for step in chosen) / len(chosen)
                    if chosen and chosen[0][count] is not None
                    else None
                )
                for count in ("items", "to_host", "sync_warnings")
            },
        }
    return summary


def check_host_syncs(ctx: Context) -> dict[str, Any]:
    log_every = 4
    warmup, measured = (2, 8) if ctx.quick else (3, 16)
    steps = warmup + measured + 1
    configs = monitors()
    results: dict[str, Any] = {}
    callers: dict[str, Counter[str]] = {}
    for name, callbacks in configs.items():
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            counter = SyncCounter(warmup, measured, records if ctx.cuda else None)
            if ctx.cuda:
                torch.cuda.set_sync_debug_mode("warn")
            try:
                torch.manual_seed(0)
                module = overhead.MixinModule(overhead.model_layers(ctx.cnn), steps)
                fit(
                    module,
                    ctx,
                    steps,
                    [counter, *callbacks],
                    ctx.cnn,
                    log_every,
                    logger=overhead.TensorBoardLogger(ctx.workdir, name=f"syncs-{name}", version=0),
                )
            finally:
                if ctx.cuda:
                    torch.cuda.set_sync_debug_mode(0)
        results[name] = summarize_syncs(counter.steps)
        callers[name] = counter.callers
    counts = ("items_per_step", "to_host_per_step", "sync_warnings_per_step")
    for result in results.values():
        for kind in ("logging", "non_logging"):
            for count in counts:
                own, base = result[kind][count], results["none"][kind][count]
                result[kind][f"{count}_over_none"] = None if own is None or base is None else own - base
    headline = "sync_warnings_per_step_over_none" if ctx.cuda else "items_per_step_over_none"
    # On a CPU a copy to the host is no sync, and there is no sync-debug mode: item() is what syncs on a GPU.
    verdicts = {
        "no host sync from the monitors on non-logging steps": results["all"]["non_logging"][headline] == 0,
        "at most 1 host sync per logging step for all monitors together": (
            results["all"]["logging"][headline] is not None and results["all"]["logging"][headline] <= 1
        ),
    }
    return {
        "model": ctx.cnn,
        "log_every_n_steps": log_every,
        "measured_steps": measured,
        "counted": "sync_debug_mode warnings and aten::_local_scalar_dense"
        if ctx.cuda
        else "aten::_local_scalar_dense",
        "per_config": results,
        "sync_callers": {name: dict(counts.most_common(12)) for name, counts in callers.items()},
        "sync_callers_all_over_none": dict((callers["all"] - callers["none"]).most_common(12)),
        "verdicts": verdicts,
    }


# --------------------------------------------------------------------------------------------------------------
# amp
# --------------------------------------------------------------------------------------------------------------

AMP_OPTIMIZERS = {
    "adamw": (torch.optim.AdamW, {"lr": 1e-3, "weight_decay": 0.01}),
    "sgd": (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
}
AMP_CASES = {
    "16-mixed adamw": ("16-mixed", "adamw", None),
    "16-mixed sgd": ("16-mixed", "sgd", None),
    "bf16-mixed adamw": ("bf16-mixed", "adamw", None),
    "bf16-mixed sgd": ("bf16-mixed", "sgd", None),
    "16-mixed adamw, overflowing scale": ("16-mixed", "adamw", 2.0**24),
    "16-mixed sgd, overflowing scale (fused-SGD first-step skip)": ("16-mixed", "sgd", 2.0**24),
}
"""Case -> (precision, optimizer, GradScaler's initial scale or None for its default)."""
TOLERANCES = {"16-mixed": {"rtol": 1e-3, "atol": 1e-5}, "bf16-mixed": {"rtol": 1.6e-2, "atol": 1e-5}}
"""``torch.testing.assert_close``'s defaults for float16 and bfloat16."""
AMP_CLIP = 0.5


class Net(L.LightningModule):
    """``layers`` in order, cross-entropy, and a torch optimizer (``fused`` as given) without a scheduler."""

    def __init__(self, layers: dict[str, nn.Module], optimizer: str, fused: bool = False) -> None:
        super().__init__()
        self.layers = nn.Sequential(*layers.values())
        self.optimizer_name, self.fused = optimizer, fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        return F.cross_entropy(self(inputs), targets)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        cls, options = AMP_OPTIMIZERS[self.optimizer_name]
        return cls(self.parameters(), fused=self.fused, **options)


class MixinNet(OptimMixin, Net):
    """:class:`Net` with the mixin's optimizer (``fused: true``) and clipping: norm clipping folded into the step."""

    def __init__(self, layers: dict[str, nn.Module], optimizer: str) -> None:
        super().__init__(layers, optimizer)
        _, options = AMP_OPTIMIZERS[optimizer]
        self.optim_config = {"optimizer": {"name": optimizer, **options, "fused": True}}


class UnfoldedMixinNet(MixinNet):
    """The mixin clipping in its hook (``GradScaler.unscale_`` first), the same fused optimizer stepping after."""

    fold_clipping = False


class StepRecorder(L.Callback):
    """Per optimizer step: the ``GradScaler``'s scale after it (a skipped step halves it), whether clipping folded."""

    def __init__(self) -> None:
        self.scales: list[float] = []
        self.folded: list[bool | None] = []
        self.initial_scale: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        self.initial_scale = float(scaler.get_scale()) if scaler is not None else None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None:
            self.scales.append(float(scaler.get_scale()))
        last = getattr(getattr(pl_module, "clip_state", None), "last", None)
        self.folded.append(None if last is None else bool(last.folded))

    def skipped(self) -> list[int]:
        """The steps after which the scale went down: those ``GradScaler`` skipped."""
        before = [self.initial_scale, *self.scales[:-1]]
        return [step for step, (old, new) in enumerate(zip(before, self.scales, strict=True)) if new < (old or 0)]


def amp_run(ctx: Context, cls: type[Net], precision: str, optimizer: str, init_scale: float | None, steps: int):
    torch.manual_seed(0)
    layers = overhead.model_layers("resnet_tiny")
    module = cls(layers, optimizer) if cls is not Net else Net(layers, optimizer, fused=False)
    recorder, logger = StepRecorder(), MemoryLogger()
    callbacks: list[L.Callback] = [recorder]
    if cls is not Net:
        callbacks.append(GradNormMonitor())
    options: dict[str, Any] = {"precision": precision}
    if precision == "16-mixed":
        scaler_options = {} if init_scale is None else {"init_scale": init_scale}
        device = "cuda" if ctx.cuda else "cpu"
        options = {"plugins": [MixedPrecision("16-mixed", device, torch.amp.GradScaler(device, **scaler_options))]}
    fit(module, ctx, steps, callbacks, "resnet_tiny", gradient_clip_val=AMP_CLIP, logger=logger, **options)
    parameters = [p.detach().float().cpu() for p in module.parameters()]
    return parameters, recorder, logger


def max_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> dict[str, float]:
    absolute = max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))
    relative = max(float(((x - y).abs() / y.abs().clamp_min(1e-6)).max()) for x, y in zip(a, b, strict=True))
    return {"max_abs": absolute, "max_rel": relative}


def within(a: list[torch.Tensor], b: list[torch.Tensor], precision: str) -> bool:
    try:
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y, **TOLERANCES[precision])
    except AssertionError:
        return False
    return True


@contextlib.contextmanager
def deterministic_cudnn() -> Iterator[None]:
    """cuDNN's deterministic kernels, so that two paths differ by what they compute, not by the kernels' order."""
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def check_amp(ctx: Context) -> dict[str, Any]:
    steps = 8 if ctx.quick else 20
    cases: dict[str, Any] = {}
    with deterministic_cudnn():
        for case, (precision, optimizer, init_scale) in AMP_CASES.items():
            runs = {
                path: amp_run(ctx, cls, precision, optimizer, init_scale, steps)
                for path, cls in (("folded", MixinNet), ("unfolded", UnfoldedMixinNet), ("reference", Net))
            }
            params = {path: run[0] for path, run in runs.items()}
            skipped = {path: run[1].skipped() for path, run in runs.items()} if precision == "16-mixed" else None
            totals = {path: runs[path][2].series("grad_norm/total") for path in ("folded", "unfolded")}
            cases[case] = {
                "precision": precision,
                "optimizer": f"{optimizer} (fused in the mixin's paths, unfused in the reference)",
                "initial_scale": runs["folded"][1].initial_scale,
                "steps": steps,
                "clip_folded": runs["folded"][1].folded,
                "clip_unfolded": runs["unfolded"][1].folded,
                "skipped_steps": skipped,
                "folded_vs_unfolded": max_difference(params["folded"], params["unfolded"]),
                "folded_vs_reference": max_difference(params["folded"], params["reference"]),
                "unfolded_vs_reference": max_difference(params["unfolded"], params["reference"]),
                "tolerance": TOLERANCES[precision],
                "within_tolerance": {
                    "folded_vs_unfolded": within(params["folded"], params["unfolded"], precision),
                    "folded_vs_reference": within(params["folded"], params["reference"], precision),
                },
                "parameters_finite": all(bool(torch.isfinite(p).all()) for p in params["folded"]),
                "grad_norm_total": totals,
            }
    verdicts = {
        "folded path taken": all(all(c["clip_folded"]) for c in cases.values()),
        "folded == unfolded within the precision's tolerance": all(
            c["within_tolerance"]["folded_vs_unfolded"] for c in cases.values()
        ),
        "folded == plain Lightning within the precision's tolerance": all(
            c["within_tolerance"]["folded_vs_reference"] for c in cases.values()
        ),
        "the same steps skipped on every path": all(
            c["skipped_steps"] is None or len({tuple(s) for s in c["skipped_steps"].values()}) == 1
            for c in cases.values()
        ),
    }
    return {"model": "resnet_tiny", "gradient_clip_val": AMP_CLIP, "cases": cases, "verdicts": verdicts}


# --------------------------------------------------------------------------------------------------------------
# sync_batchnorm and fsdp (CUDA only)
# --------------------------------------------------------------------------------------------------------------


def check_sync_batchnorm(ctx: Context) -> dict[str, Any]:
    steps, log_every = 8, 2
    runs: dict[str, tuple[MemoryLogger, L.LightningModule]] = {}
    for name, options in (("single device", {}), ("ddp + sync_batchnorm", {"strategy": "ddp", "sync_batchnorm": True})):
        torch.manual_seed(0)
        module = overhead.MixinModule(overhead.model_layers("resnet_tiny"), steps)
        logger = MemoryLogger()
        # The same batches in both runs: no DistributedSampler.
        options["use_distributed_sampler"] = False
        fit(module, ctx, steps, [BatchNormMonitor(report=False)], "resnet_tiny", log_every, logger=logger, **options)
        runs[name] = (logger, module)
    single, synced = runs["single device"][0], runs["ddp + sync_batchnorm"][0]
    keys = {name: logger.keys("batchnorm/") for name, (logger, _) in runs.items()}
    values = [value for _, metrics in synced.logged for key, value in metrics.items() if key.startswith("batchnorm/")]
    pairs = [
        (a, b)
        for key in keys["single device"] & keys["ddp + sync_batchnorm"]
        for a, b in zip(synced.series(key), single.series(key), strict=False)
    ]
    sync_layers = sum(isinstance(m, nn.SyncBatchNorm) for m in runs["ddp + sync_batchnorm"][1].modules())
    return {
        "sync_batchnorm_layers": sync_layers,
        "keys": len(keys["ddp + sync_batchnorm"]),
        "missing_keys": sorted(keys["single device"] - keys["ddp + sync_batchnorm"]),
        "extra_keys": sorted(keys["ddp + sync_batchnorm"] - keys["single device"]),
        "values": len(values),
        "nonfinite_values": sum(not math.isfinite(v) for v in values),
        "max_abs_difference_to_single_device": max((abs(a - b) for a, b in pairs), default=None),
        "verdicts": {
            "the layers are SyncBatchNorm": sync_layers > 0,
            "the same batchnorm keys as on one device": bool(keys["single device"])
            and keys["single device"] == keys["ddp + sync_batchnorm"],
            "every value finite": bool(values) and all(math.isfinite(v) for v in values),
            "the values of one device (one process: no statistics to share)": bool(pairs)
            and all(abs(a - b) <= 1e-4 + 1e-3 * abs(b) for a, b in pairs),
        },
    }


class UnshardedReference(L.Callback):
    """At every batch start, the same step on an unsharded copy of the model: its total gradient norm
    (``torch.nn.utils.get_total_norm``), then the same clipping, optimizer and schedule (``overhead.PlainModule``),
    so that the copy follows the sharded model."""

    def __init__(self, copy_of_model: overhead.PlainModule) -> None:
        self.model = copy_of_model
        configured = copy_of_model.configure_optimizers()
        self.optimizer, self.scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
        self.totals: list[float] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, *args: Any) -> None:
        inputs, targets = batch
        self.model.to(inputs.device)
        self.optimizer.zero_grad()
        F.cross_entropy(self.model(inputs), targets).backward()
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        total = torch.nn.utils.get_total_norm(grads)
        torch.nn.utils.clip_grads_with_norm_(list(self.model.parameters()), overhead.CLIP, total)
        self.optimizer.step()
        self.scheduler.step()
        self.totals.append(float(total))


def check_fsdp(ctx: Context, strategy: str = "fsdp") -> dict[str, Any]:
    steps = 10
    torch.manual_seed(0)
    layers = overhead.deep_mlp_layers(blocks=8)
    reference = UnshardedReference(overhead.PlainModule(copy.deepcopy(layers), steps))
    module = overhead.MixinModule(layers, steps)
    logger = MemoryLogger()
    trainer = fit(module, ctx, steps, [GradNormMonitor(), reference], "deep_mlp", strategy=strategy, logger=logger)
    logged = logger.series("grad_norm/total")
    differences = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(logged, reference.totals, strict=False)]
    clipped = logger.series("grad_norm/clipped")
    expected_clipped = [t * min(1.0, overhead.CLIP / (t + 1e-6)) for t in reference.totals]
    return {
        "strategy": type(trainer.strategy).__name__,
        "model": "deep residual MLP, 8 blocks",
        "steps": steps,
        "grad_norm_total": logged,
        "reference_total": reference.totals,
        "max_rel_difference": max(differences, default=None),
        "first_step_rel_difference": differences[0] if differences else None,
        "clipped": clipped,
        "expected_clipped": expected_clipped,
        "verdicts": {
            "grad_norm/total logged at every step": len(logged) == steps,
            "grad_norm/total == the unsharded reference (rel 1e-4)": bool(differences) and max(differences) <= 1e-4,
        },
    }


# --------------------------------------------------------------------------------------------------------------
# sharded: tests/sharded/'s cases on GPUs (NCCL)
# --------------------------------------------------------------------------------------------------------------

SHARDED_TOLERANCE = 1e-4


class SkipCheck(Exception):
    """A check that cannot run here: why (recorded as ``skipped``, printed)."""


def launched(command: list[str], environment: dict[str, str], ctx: Context) -> None:
    """Run ``command`` in the repository to its end, within the check's time; stopped early (its time is up, or the
    check's alarm), it is killed with every process it started (Lightning's launcher starts the other ranks)."""
    process = subprocess.Popen(command, cwd=REPO, env=environment, start_new_session=True)
    try:
        code = process.wait(timeout=max(ctx.seconds_left(), 1))
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    if code:
        raise subprocess.CalledProcessError(code, command)


def check_sharded(ctx: Context) -> dict[str, Any]:
    gpus = torch.cuda.device_count()
    if gpus < 2:
        raise SkipCheck(f"needs 2 or more GPUs for NCCL: torch sees {gpus}")
    if str(REPO) not in sys.path:
        sys.path.append(str(REPO))
    from tests.sharded import runs

    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    cases: dict[str, Any] = {}
    for launch in runs.LAUNCHES:
        processes = math.prod(runs.mesh_shape(launch[0]))
        if processes > gpus:
            cases.update({case: {"skipped": f"needs {processes} GPUs: torch sees {gpus}"} for case in launch})
            continue
        out = Path(ctx.workdir) / "sharded"
        out.mkdir(exist_ok=True)
        launched([sys.executable, "-m", "tests.sharded.runs", ",".join(launch), str(out), ctx.device], environment, ctx)
        for case in launch:
            ranks = [json.loads((out / f"{case}.rank{rank}.json").read_text()) for rank in range(processes)]
            logging = [step[0] for step in ranks[0]["all_reduce"]]
            cases[case] = {
                "mesh": runs.mesh_shape(case),
                "max_rel_difference": runs.differences(ranks, runs.run(case, ctx.device)),
                "all_reduce_as_expected": ranks[0]["all_reduce"] == runs.expected_all_reduce(case, logging),
            }
    measured = [entry for entry in cases.values() if "skipped" not in entry]
    return {
        "gpus": gpus,
        "tolerance": SHARDED_TOLERANCE,
        "cases": cases,
        "verdicts": {
            f"every number within {SHARDED_TOLERANCE:g} relative of one GPU, every rank alike": all(
                max(entry["max_rel_difference"].values()) <= SHARDED_TOLERANCE for entry in measured
            ),
            "all_reduce calls per step as on CPU": all(entry["all_reduce_as_expected"] for entry in measured),
        },
    }


# --------------------------------------------------------------------------------------------------------------
# clip_step and overhead: the benchmarks beside this file
# --------------------------------------------------------------------------------------------------------------


def check_clip_step(ctx: Context) -> dict[str, Any]:
    free = torch.cuda.mem_get_info()[0] if ctx.cuda else None
    if ctx.cuda:
        sizes = clip_step.default_sizes("cuda", ctx.quick)
        repetitions = 20 if ctx.quick else 200
    else:
        sizes, repetitions = (["1M"], 5) if ctx.quick else (clip_step.CPU_SIZES, 40)
    results = []
    for index, size in enumerate(sizes):
        share = ctx.seconds_left() / (len(sizes) - index)
        results.append(clip_step.measure(size, ctx.device, repetitions, deadline=time.perf_counter() + share * 0.9))
        if ctx.cuda:
            torch.cuda.empty_cache()
    return {
        "free_bytes": free,
        "sizes": sizes,
        "results": results,
        "verdicts": {"folded faster than torch's way at every size": all(r["folded_over_torch"] < 1 for r in results)},
    }


def check_overhead(ctx: Context) -> dict[str, Any]:
    warmup, measured = (2, 6) if ctx.quick else (20, 300)
    runs: dict[str, Any] = {}
    intervals = (50, 1)
    for index, log_every in enumerate(intervals):
        share = ctx.seconds_left() / (len(intervals) - index)
        deadline = time.perf_counter() + share * 0.85
        gc.collect()
        steps = overhead.run_interleaved(ctx.cnn, log_every, warmup, measured, ctx.workdir, ctx.device, deadline)
        runs[f"{ctx.cnn}@{log_every}"] = {"variants": steps, "ratios": overhead.step_ratios(steps)}
    paired = {key: run["ratios"]["derived"]["paired"] for key, run in runs.items()}
    return {
        "model": ctx.cnn,
        "parameters": sum(p.numel() for p in overhead.build_model(ctx.cnn, "plain", 1).parameters()),
        "batch_size": overhead.BATCH_SIZE,
        "image_size": overhead.IMAGE_SIZE[ctx.cnn],
        "warmup_steps": warmup,
        "runs": runs,
        "verdicts": {
            "monitors <= 1.02x plain at interval 50": paired[f"{ctx.cnn}@50"]["monitoring_overhead_fraction"] <= 0.02,
            "monitors <= 1.10x plain at interval 1": paired[f"{ctx.cnn}@1"]["monitoring_overhead_fraction"] <= 0.10,
        },
    }


# --------------------------------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    run: Callable[[Context], dict[str, Any]]
    seconds: float
    """Its share of :data:`TOTAL_SECONDS` on a GPU (a CPU --quick run takes a fraction)."""
    needs_cuda: str | None = None
    """Why it cannot run on a CPU, or None."""


CHECKS = {
    "host_syncs": Check(check_host_syncs, 40),
    "amp": Check(check_amp, 70),
    "clip_step": Check(check_clip_step, 80),
    "sharded": Check(check_sharded, 90, "needs CUDA: NCCL on 2 or more GPUs (the CPU form, gloo, is tests/sharded/)"),
    "overhead": Check(check_overhead, 170),
    "sync_batchnorm": Check(
        check_sync_batchnorm, 40, "needs CUDA: SyncBatchNorm refuses CPU tensors once torch.distributed is initialized"
    ),
    "fsdp": Check(check_fsdp, 40, "needs CUDA: Lightning's FSDP strategy requires a GPU accelerator"),
}
"""In the order they run: the distributed ones last, as they leave a process group behind (``sharded`` leaves none:
its sharded runs are processes of their own); ``sharded`` before ``overhead``, which fits itself to the time left."""
GRACE_SECONDS = 30
"""How long past its budget a check may run before it is interrupted (it was asked to stop at its budget)."""


class CheckTimeout(Exception):
    """A check ran past its budget and the grace after it."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`CheckTimeout` in the main thread after ``seconds`` (SIGALRM; elsewhere nothing happens)."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise CheckTimeout(f"stopped after {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_check(name: str, check: Check, ctx: Context, stop_at: float) -> dict[str, Any]:
    if check.needs_cuda and not ctx.cuda:
        return {"status": "skipped", "reason": check.needs_cuda, "seconds": 0.0}
    budget = min(check.seconds, stop_at - time.perf_counter())
    if budget < 5:
        return {"status": "skipped", "reason": f"out of time (the run stops after {TOTAL_SECONDS} s)", "seconds": 0.0}
    start = time.perf_counter()
    ctx.deadline = start + budget
    try:
        with time_limit(budget + GRACE_SECONDS):
            result = check.run(ctx)
        outcome = {"status": "ok", **result}
    except SkipCheck as reason:
        outcome = {"status": "skipped", "reason": str(reason)}
    except Exception as error:
        outcome = {"status": "error", "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    finally:
        gc.collect()
        if ctx.cuda:
            torch.cuda.empty_cache()
    return {**outcome, "seconds": round(time.perf_counter() - start, 1), "budget_seconds": budget}


def environment(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": device,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info()
        info.update(
            card=torch.cuda.get_device_name(0),
            capability=".".join(map(str, torch.cuda.get_device_capability(0))),
            multiprocessors=properties.multi_processor_count,
            cuda=torch.version.cuda,
            memory_gib=round(total / 2**30, 1),
            free_gib=round(free / 2**30, 1),
        )
    else:
        info["card"] = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return info


def write(out: Path, report: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "gpu_check.md").write_text(markdown(report))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few steps (a smoke run)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for gpu_check.json and gpu_check.md")
    parser.add_argument("--only", nargs="+", choices=list(CHECKS), default=list(CHECKS), help="run these checks")
    parser.add_argument("--seconds", type=float, default=TOTAL_SECONDS, help="stop starting checks after this")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if args.device == "cpu":
        torch.set_num_threads(1)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "environment": environment(args.device),
        "quick": args.quick,
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "checks": {},
    }
    with tempfile.TemporaryDirectory() as workdir:
        ctx = Context(args.device, args.quick, workdir)
        for name in args.only:
            print(f"[gpu_check] {name} ...", flush=True)
            report["checks"][name] = run_check(name, CHECKS[name], ctx, started + args.seconds)
            entry = report["checks"][name]
            reason = f" ({entry['reason']})" if entry["status"] == "skipped" else ""
            print(f"[gpu_check] {name}: {entry['status']}{reason} in {entry['seconds']} s", flush=True)
            report["wall_seconds"] = round(time.perf_counter() - started, 1)
            write(args.out, report)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    print((args.out / "gpu_check.md").read_text())
    return 1 if any(entry["status"] == "error" for entry in report["checks"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
