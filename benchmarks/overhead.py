"""Overhead of lightning_optim's monitoring against plain Lightning and Lightning's documented recipe.

Three measurements, all in one run (``python benchmarks/overhead.py [--quick] [--out results.json]``):

1. **Step time** of training variants, interleaved step by step: every variant trains in its own thread with its
   own Trainer, and a turn-taking timer callback lets exactly one variant run at a time, one training step per
   turn, in a fresh random order each round. Drift (thermal, other load, allocator state) hits every variant
   equally. A step is the time between two consecutive ``on_train_batch_start`` of the same variant (the timer
   is the first callback), so it includes data loading, forward, backward, clipping, the optimizer and scheduler
   step, every callback and the logger's write on logging steps. The variants:

   * ``plain``: a LightningModule with its own ``configure_optimizers`` (SGD + warmup-cosine ``LambdaLR``), the
     Trainer's ``gradient_clip_val=1.0``;
   * ``plain_aa``: the same again, an A/A control: its ratio to ``plain`` shows the noise floor;
   * ``recipe``: ``plain`` + Lightning's documented recipe, ``LearningRateMonitor(logging_interval="step")`` and
     ``self.log_dict(grad_norm(self, norm_type=2))`` in ``on_before_optimizer_step``;
   * ``mixin``: the same network with ``OptimMixin`` (same optimizer and schedule from ``optim_config``), no
     monitor: the mixin's clipping alone;
   * ``mixin_monitors``: ``mixin`` + ``GradNormMonitor(per_layer_depth=1)``, ``LRMonitor``,
     ``TensorBoardDashboard`` and ``BatchNormMonitor``;
   * ``mixin_update``: ``mixin_monitors`` + ``UpdateMonitor(per_layer_depth=1)``;
   * ``mixin_update_aa``: the same again, an A/A control among monitored variants: the interleaving puts a few
     points between identical variants that allocate more than ``plain`` does (Python's garbage collector, shared by
     every variant's thread, runs in whichever step crosses its threshold), and this one shows how many.

   Models: the digits CNN of ``lightning_optim.demos`` and a deep residual MLP with ~390 parameter tensors; each at
   ``log_every_n_steps`` 1 and 50, TensorBoardLogger in a temporary directory. ``--models resnet`` (ResNet-18's
   stages on random 64x64 images) with ``--device cuda`` is the GPU-sized model ``gpu_check.py`` times.

2. **Gradient passes** on ~38M parameters of random gradients: one read of every gradient byte against
   ``total_norm``, ``clip_gradients``, ``clip_grad_norm_(foreach=True)`` and Lightning's ``grad_norm``.

3. **Host syncs**: ``aten::item`` calls per non-logging step (torch.profiler, CPU) of each variant.

Times are medians; ratios, never absolute timings, are what docs/performance.md compares with the targets: at
``log_every_n_steps=50`` monitoring costs at most 2% of the median step time and at most a third of the recipe's
cost; clipping plus monitoring at most 1.05x clipping alone; the total norm within 1.5x of one read of the
gradients; no ``aten::item`` from monitoring on non-logging steps.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import platform
import random
import statistics
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import grad_norm
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

from lightning_optim import OptimMixin
from lightning_optim.callbacks import BatchNormMonitor, GradNormMonitor, LRMonitor, TensorBoardDashboard, UpdateMonitor
from lightning_optim.clipping.arithmetic import clip_gradients
from lightning_optim.demos import DigitsCNN, DigitsDataModule
from lightning_optim.internals import should_log
from lightning_optim.stats import gradient_norms, module_path, total_norm

console = Console(width=150)

BATCH_SIZE = 64
LR = 0.05
MOMENTUM = 0.9
WARMUP_STEPS = 20
CLIP = 1.0
VARIANTS = ("plain", "plain_aa", "recipe", "mixin", "mixin_monitors", "mixin_update", "mixin_update_aa")
VARIANT_HELP = {
    "plain": "plain Lightning: own configure_optimizers, Trainer gradient_clip_val",
    "plain_aa": "plain again (A/A control: noise floor)",
    "recipe": "plain + LearningRateMonitor + log_dict(grad_norm) (Lightning's recipe)",
    "mixin": "OptimMixin, no monitor (the mixin's clipping alone)",
    "mixin_monitors": "OptimMixin + all monitors",
    "mixin_update": "OptimMixin + all monitors + UpdateMonitor(per_layer_depth=1)",
    "mixin_update_aa": "mixin_update again (A/A control among monitored variants)",
}


MONITORS = ("GradNormMonitor", "LRMonitor", "TensorBoardDashboard", "BatchNormMonitor")


def make_monitors() -> list[L.Callback]:
    """The monitors of the ``mixin_monitors`` variant (no BatchNorm health report at the end of fit)."""
    return [GradNormMonitor(per_layer_depth=1), LRMonitor(), TensorBoardDashboard(), BatchNormMonitor(report=False)]


# --------------------------------------------------------------------------------------------------------------
# Models and data
# --------------------------------------------------------------------------------------------------------------


class Block(nn.Module):
    """Pre-norm residual block: ``x + Linear(relu(LayerNorm(x)))``, 4 parameter tensors."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.linear = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.linear(F.relu(self.norm(x)))


def deep_mlp_layers(blocks: int = 96, width: int = 64, inputs: int = 32, classes: int = 10) -> dict[str, nn.Module]:
    """A deep residual MLP: 2 + 4 * blocks + 4 parameter tensors (390 with 96 blocks)."""
    return {
        "stem": nn.Linear(inputs, width),
        "blocks": nn.Sequential(*[Block(width) for _ in range(blocks)]),
        "head": nn.Sequential(nn.LayerNorm(width), nn.Linear(width, classes)),
    }


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 convolutions with BatchNorm, and a projected shortcut where the shape changes."""

    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.shortcut = nn.Sequential()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


RESNETS = {"resnet": (64, 128, 256, 512), "resnet_tiny": (4, 8)}
"""ResNet-like models (two basic blocks per stage) by name -> stage widths: ``resnet`` has ResNet-18's stages and
widths (11.2M parameters, 62 tensors, 20 BatchNorm layers), ``resnet_tiny`` two narrow stages for CPU smoke runs."""
IMAGE_SIZE = {"resnet": 64, "resnet_tiny": 8}


def resnet_layers(widths: tuple[int, ...], classes: int = 10) -> dict[str, nn.Module]:
    """A ResNet-like CNN for small images: a 3x3 stem, a stage of two basic blocks per width, global pooling."""
    stages, inputs = [], widths[0]
    for index, width in enumerate(widths):
        stride = 1 if index == 0 else 2
        stages += [BasicBlock(inputs, width, stride), BasicBlock(width, width, 1)]
        inputs = width
    return {
        "stem": nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()),
        "stages": nn.Sequential(*stages),
        "head": nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(inputs, classes)),
    }


def digits_layers() -> dict[str, nn.Module]:
    """The layers of ``lightning_optim.demos.DigitsCNN`` (same names, same initialization under the same seed)."""
    cnn = DigitsCNN()
    return {"features": cnn.features, "head": cnn.head}


def warmup_steps(total_steps: int) -> int:
    """:data:`WARMUP_STEPS`, or the whole run when it is shorter (smoke runs)."""
    return min(WARMUP_STEPS, total_steps)


def lr_factor(step: int, total_steps: int) -> float:
    """``warmup_cosine`` of lightning_optim (min_lr_ratio 0), for the plain variants' ``LambdaLR``."""
    warmup = warmup_steps(total_steps)
    if step < warmup:
        return step / warmup
    progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def optim_config(total_steps: int) -> dict[str, Any]:
    return {
        "optimizer": {"name": "sgd", "lr": LR, "momentum": MOMENTUM, "nesterov": True},
        "scheduler": {"name": "warmup_cosine", "warmup_steps": warmup_steps(total_steps), "total_steps": total_steps},
    }


class PlainModule(L.LightningModule):
    """Plain Lightning: own ``configure_optimizers``; with ``recipe``, Lightning's documented grad-norm logging."""

    def __init__(self, layers: dict[str, nn.Module], total_steps: int, recipe: bool = False) -> None:
        super().__init__()
        for name, layer in layers.items():
            setattr(self, name, layer)
        self.order = list(layers)
        self.total_steps = total_steps
        self.recipe = recipe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.order:
            x = getattr(self, name)(x)
        return x

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        loss = F.cross_entropy(self(inputs), targets)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.recipe:
            self.log_dict(grad_norm(self, norm_type=2))

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.SGD(self.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True)
        total = self.total_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class MixinModule(OptimMixin, L.LightningModule):
    """The same network and training step with ``OptimMixin`` (as the demo classifiers use it)."""

    def __init__(self, layers: dict[str, nn.Module], total_steps: int) -> None:
        super().__init__()
        for name, layer in layers.items():
            setattr(self, name, layer)
        self.order = list(layers)
        self.optim_config = optim_config(total_steps)

    forward = PlainModule.forward
    training_step = PlainModule.training_step


def model_layers(model: str) -> dict[str, nn.Module]:
    if model in RESNETS:
        return resnet_layers(RESNETS[model])
    return digits_layers() if model == "digits" else deep_mlp_layers()


def build_model(model: str, variant: str, total_steps: int) -> L.LightningModule:
    torch.manual_seed(0)
    if variant.startswith("mixin"):
        if model == "digits":
            return DigitsCNN(optim_config=optim_config(total_steps))
        return MixinModule(model_layers(model), total_steps)
    return PlainModule(model_layers(model), total_steps, recipe=variant == "recipe")


_DATA: dict[tuple[str, str], TensorDataset] = {}


def dataset(model: str, device: str = "cpu") -> TensorDataset:
    """The model's training set; random images (on ``device``, where batches are then cut) for the ResNets."""
    if (model, device) in _DATA:
        return _DATA[model, device]
    if model in RESNETS:
        generator = torch.Generator().manual_seed(0)
        size = IMAGE_SIZE[model]
        images = torch.randn(1024, 3, size, size, generator=generator)
        _DATA[model, device] = TensorDataset(
            images.to(device), torch.randint(0, 10, (1024,), generator=generator).to(device)
        )
    else:
        if model == "digits":
            data = DigitsDataModule(batch_size=BATCH_SIZE)
            data.setup("fit")
            _DATA[model, device] = data.train_set
        else:
            generator = torch.Generator().manual_seed(0)
            inputs = torch.randn(4096, 32, generator=generator)
            targets = (inputs[:, :10].argmax(dim=1) + (inputs[:, 10] > 1.0).long()) % 10
            _DATA[model, device] = TensorDataset(inputs, targets)
    return _DATA[model, device]


def loader(model: str, steps: int, device: str = "cpu") -> DataLoader:
    """One epoch of ``steps`` batches (sampled with replacement): no epoch boundary inside the measurement.

    The ResNets' batches are cut from the images where they are (one gather per batch, no host-to-device copy)."""
    data = dataset(model, device)
    sampler = RandomSampler(
        data, replacement=True, num_samples=steps * BATCH_SIZE, generator=torch.Generator().manual_seed(1)
    )
    if model in RESNETS:
        return DataLoader(data, batch_size=None, sampler=BatchSampler(sampler, BATCH_SIZE, drop_last=False))
    return DataLoader(data, batch_size=BATCH_SIZE, sampler=sampler)


def make_trainer(
    variant: str,
    log_every: int,
    steps: int,
    logdir: str,
    callbacks: list[L.Callback],
    accelerator: str = "cpu",
    **options: Any,
) -> L.Trainer:
    """The variant's Trainer (its callbacks after ``callbacks``); ``options`` override the Trainer's arguments."""
    callbacks = list(callbacks)
    if variant == "recipe":
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    elif variant == "mixin_monitors":
        callbacks += make_monitors()
    elif variant in ("mixin_update", "mixin_update_aa"):
        callbacks += [*make_monitors(), UpdateMonitor(per_layer_depth=1)]
    arguments: dict[str, Any] = {
        "max_steps": steps,
        "max_epochs": 1,
        "accelerator": accelerator,
        "devices": 1,
        "log_every_n_steps": log_every,
        "gradient_clip_val": CLIP,
        "logger": TensorBoardLogger(logdir, name=variant, version=0),
        "callbacks": callbacks,
        "limit_val_batches": 0,
        "num_sanity_val_steps": 0,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return L.Trainer(**{**arguments, **options})


# --------------------------------------------------------------------------------------------------------------
# 1. Interleaved step times
# --------------------------------------------------------------------------------------------------------------


class TurnTaking:
    """Lets one thread at a time run; turns go round the active threads in a fresh random order each round."""

    def __init__(self, names: list[str], seed: int = 0) -> None:
        self.condition = threading.Condition()
        self.active = list(names)
        self.queue: list[str] = []
        self.current: str | None = None
        self.random = random.Random(seed)
        with self.condition:
            self._advance()

    def _advance(self) -> None:
        if not self.queue:
            self.queue = self.random.sample(self.active, len(self.active))
        self.current = self.queue.pop(0) if self.queue else None
        self.condition.notify_all()

    def wait(self, name: str) -> None:
        with self.condition:
            self.condition.wait_for(lambda: self.current == name)

    def pass_turn(self, name: str) -> None:
        with self.condition:
            assert self.current == name
            self._advance()
            self.condition.wait_for(lambda: self.current == name)

    def finish(self, name: str) -> None:
        with self.condition:
            self.active.remove(name)
            if name in self.queue:
                self.queue.remove(name)
            if self.current == name:
                self.current = None
                if self.active:
                    self._advance()


class StepTimer(L.Callback):
    """First callback: at each batch start, close the previous step, pass the turn, and open the next step.

    On a GPU, ``synchronize`` (``torch.cuda.synchronize``) waits for the step's kernels before the clock is read, so
    each variant's queued work is charged to it. Past ``deadline`` (``time.perf_counter``), the run stops."""

    def __init__(
        self,
        name: str,
        turns: TurnTaking,
        warmup: int,
        synchronize: Callable[[], None] | None = None,
        deadline: float | None = None,
    ) -> None:
        self.name = name
        self.turns = turns
        self.warmup = warmup
        self.synchronize = synchronize
        self.deadline = deadline
        self.times: list[float] = []
        self.logging: list[bool] = []
        self._start: float | None = None
        self._logging_step = False
        self._index = 0

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if self.synchronize is not None:
            self.synchronize()
        now = time.perf_counter()
        if self.deadline is not None and now > self.deadline:
            trainer.should_stop = True
        if self._start is not None and self._index > self.warmup:
            self.times.append(now - self._start)
            self.logging.append(self._logging_step)
        self.turns.pass_turn(self.name)
        self._index += 1
        self._logging_step = should_log(trainer)
        self._start = time.perf_counter()


def run_interleaved(
    model: str,
    log_every: int,
    warmup: int,
    measured: int,
    logdir: str,
    device: str = "cpu",
    deadline: float | None = None,
    variants: tuple[str, ...] = VARIANTS,
) -> dict[str, dict[str, Any]]:
    """Train every variant in its own thread, one step per turn; return the measured step times per variant.

    On ``device="cuda"`` each step is timed to the end of its kernels. Past ``deadline`` the variants stop at their
    next step and keep the rounds that all of them completed. ``variants`` must include ``plain`` (the reference
    of every ratio)."""
    steps = warmup + measured + 1  # the last step has no following batch start to close it
    turns = TurnTaking(list(variants))
    synchronize = torch.cuda.synchronize if device == "cuda" else None
    timers = {variant: StepTimer(variant, turns, warmup, synchronize, deadline) for variant in variants}
    errors: dict[str, BaseException] = {}

    def train(variant: str) -> None:
        try:
            turns.wait(variant)
            module = build_model(model, variant, steps)
            trainer = make_trainer(
                variant,
                log_every,
                steps,
                os.path.join(logdir, f"{model}-{log_every}"),
                [timers[variant]],
                accelerator=device,
            )
            trainer.fit(module, train_dataloaders=loader(model, steps, device))
        except BaseException as error:
            errors[variant] = error
        finally:
            turns.finish(variant)

    threads = [threading.Thread(target=train, args=(variant,), name=variant) for variant in variants]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        variant, error = next(iter(errors.items()))
        raise RuntimeError(f"variant {variant} failed on {model}, log_every_n_steps={log_every}") from error
    rounds = min(len(timer.times) for timer in timers.values())
    return {variant: summarize(timer.times[:rounds], timer.logging[:rounds]) for variant, timer in timers.items()}


def summarize(times: list[float], logging_steps: list[bool]) -> dict[str, Any]:
    ms = np.array(times) * 1e3
    flags = np.array(logging_steps, dtype=bool)
    return {
        "steps": int(ms.size),
        "median_ms": float(np.median(ms)),
        "mean_ms": float(ms.mean()),
        "p90_ms": float(np.percentile(ms, 90)),
        "logging_steps": int(flags.sum()),
        "median_logging_ms": float(np.median(ms[flags])) if flags.any() else None,
        "median_nonlogging_ms": float(np.median(ms[~flags])) if (~flags).any() else None,
        "times_ms": [round(float(t), 4) for t in ms],
    }


STATISTICS = {
    "median": "ratio of the median step times",
    "paired": "median over rounds of the per-round ratio (the variants' steps of one round ran back to back)",
    "mean": "ratio of the mean step times (amortized: includes the logging steps)",
}


def ratio_statistics(numerator: np.ndarray, denominator: np.ndarray) -> dict[str, float]:
    return {
        "median": float(np.median(numerator) / np.median(denominator)),
        "paired": float(np.median(numerator / denominator)),
        "mean": float(numerator.mean() / denominator.mean()),
    }


def step_ratios(results: dict[str, dict[str, Any]], samples: int = 1000) -> dict[str, Any]:
    """Ratios to ``plain`` (see :data:`STATISTICS`) with 95% bootstrap intervals over rounds, and the overhead
    fractions the targets are stated in (module docstring). Round ``r`` holds step ``r`` of every variant, so
    resampling rounds keeps pairs."""
    times = {variant: np.asarray(result["times_ms"]) for variant, result in results.items()}
    rounds = {len(values) for values in times.values()}
    assert len(rounds) == 1, f"variants measured different numbers of steps: {rounds}"
    rng = np.random.default_rng(0)
    resamples = rng.integers(0, rounds.pop(), size=(samples, next(iter(times.values())).size))
    plain = times["plain"]
    ratios: dict[str, Any] = {}
    for variant, values in times.items():
        point = ratio_statistics(values, plain)
        boot = [ratio_statistics(values[index], plain[index]) for index in resamples]
        ratios[variant] = {
            stat: {
                "ratio": point[stat],
                "ci95": [float(np.percentile([b[stat] for b in boot], q)) for q in (2.5, 97.5)],
            }
            for stat in STATISTICS
        }
    derived = {}
    for stat in STATISTICS:
        r = {variant: ratios[variant][stat]["ratio"] for variant in ratios}
        aa, recipe, mixin, monitors = (r.get(name) for name in ("plain_aa", "recipe", "mixin", "mixin_monitors"))
        update, update_aa = r.get("mixin_update"), r.get("mixin_update_aa")
        derived[stat] = {
            "aa_noise_fraction": None if aa is None else aa - 1.0,
            "monitored_aa_noise_fraction": None if update is None or update_aa is None else update_aa / update - 1.0,
            "recipe_overhead_fraction": None if recipe is None else recipe - 1.0,
            "monitoring_overhead_fraction": None if monitors is None else monitors - 1.0,
            "monitoring_over_recipe": (
                (monitors - 1.0) / (recipe - 1.0)
                if monitors is not None and recipe is not None and recipe > 1
                else None
            ),
            "mixin_alone_overhead_fraction": None if mixin is None else mixin - 1.0,
            "monitors_over_mixin_alone_fraction": (
                None if monitors is None or mixin is None else monitors / mixin - 1.0
            ),
        }
    return {"statistics": STATISTICS, "per_variant": ratios, "derived": derived}


# --------------------------------------------------------------------------------------------------------------
# 2. Gradient passes on a large parameter set
# --------------------------------------------------------------------------------------------------------------

LARGE_SHAPES: list[tuple[str, tuple[int, ...]]] = (
    [(f"layers.{i}.weight", (2048, 4096)) for i in range(4)]
    + [(f"layers.{i}.bias", (2048,)) for i in range(4)]
    + [(f"proj.{i}.weight", (1024, 512)) for i in range(8)]
    + [(f"proj.{i}.bias", (1024,)) for i in range(8)]
    + [(f"norm.{i}.weight", (512,)) for i in range(8)]
)


class Large(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        for name, shape in LARGE_SHAPES:
            parameter = nn.Parameter(torch.empty(shape))
            parameter.grad = torch.randn(shape, generator=generator)
            module = self
            *path, leaf = name.split(".")
            for part in path:
                if not hasattr(module, part):
                    module.add_module(part, nn.Module())
                module = getattr(module, part)
            module.register_parameter(leaf, parameter)


def gradient_pass_benchmark(repeats: int) -> dict[str, Any]:
    """Median time of each gradient pass, interleaved (random order every repetition), and ratios to one read."""
    module = Large()
    named = list(module.named_parameters())
    parameters = [p for _, p in named]
    grads = [p.grad for p in parameters]
    numel = sum(g.numel() for g in grads)
    per_layer = module_path(1)
    candidates: dict[str, Callable[[], Any]] = {
        "read: sum per tensor": lambda: torch.stack([g.sum() for g in grads]),
        "read: _foreach_max": lambda: torch.stack(torch._foreach_max(grads)),
        "_foreach_norm + stack + vector_norm": lambda: torch.linalg.vector_norm(
            torch.stack(torch._foreach_norm(grads, 2.0)), 2.0
        ),
        "stats.total_norm": lambda: total_norm(parameters),
        "stats.gradient_norms (per layer, depth 1)": lambda: gradient_norms(named, per_layer),
        "clipping.clip_gradients (norm + scale)": lambda: clip_gradients(named, CLIP, "norm"),
        "clip_gradients + per-layer norms (logging step)": lambda: clip_gradients(
            named, CLIP, "norm", group_of=per_layer
        ),
        "clip_grad_norm_(foreach=True)": lambda: torch.nn.utils.clip_grad_norm_(parameters, CLIP, foreach=True),
        "lightning grad_norm": lambda: grad_norm(module, 2),
    }
    for fn in candidates.values():  # warm-up, and brings the gradients to norm CLIP (clipping then scales by 1)
        fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    order = list(candidates)
    rng = random.Random(0)
    for _ in range(repeats):
        rng.shuffle(order)
        for name in order:
            start = time.perf_counter()
            candidates[name]()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) * 1e3 for name, values in times.items()}
    read_name = min(("read: sum per tensor", "read: _foreach_max"), key=medians.__getitem__)
    read = medians[read_name]
    return {
        "parameters": numel,
        "tensors": len(grads),
        "gradient_bytes": numel * 4,
        "repeats": repeats,
        "one_read": read_name,
        "one_read_gb_per_s": numel * 4 / (read * 1e-3) / 1e9,
        "median_ms": medians,
        "ratio_to_one_read": {name: value / read for name, value in medians.items()},
    }


# --------------------------------------------------------------------------------------------------------------
# 3. aten::item per non-logging step
# --------------------------------------------------------------------------------------------------------------


ITEM_SOURCES = (
    ("lightning_optim", "lightning_optim/"),
    ("lightning grad_norm", "utilities/grads.py"),
    ("lightning logger connector", "logger_connector"),
    ("lightning LearningRateMonitor", "lr_monitor.py"),
)


def item_source(event: Any) -> str:
    """Who called this ``aten::item``: the first known frame up its chain of parent events (Python stack)."""
    frames = []
    parent = event
    while parent is not None:
        frames.append(parent.name)
        parent = parent.cpu_parent
    for frame in frames:
        for source, marker in ITEM_SOURCES:
            if marker in frame:
                return source
    return "other"


class ProfileWindow(L.Callback):
    """Profile the steps ``[first, last)`` (all non-logging at log_every_n_steps=50) and count host syncs."""

    def __init__(self, first: int, last: int, with_stack: bool) -> None:
        self.first, self.last = first, last
        self.with_stack = with_stack
        self.index = 0
        self.profiler: torch.profiler.profile | None = None
        self.logging_in_window = 0
        self.counts: dict[str, int] = {}
        self.sources: dict[str, int] = {}

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if self.index == self.first:
            self.profiler = torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU], with_stack=self.with_stack
            )
            self.profiler.__enter__()
        if self.index == self.last and self.profiler is not None:
            self.profiler.__exit__(None, None, None)
            events = list(self.profiler.events())
            for name in ("aten::item", "aten::_local_scalar_dense"):
                self.counts[name] = sum(1 for event in events if event.name == name)
            for event in events:
                if event.name == "aten::item" and self.with_stack:
                    source = item_source(event)
                    self.sources[source] = self.sources.get(source, 0) + 1
            self.profiler = None
        if self.first <= self.index < self.last and should_log(trainer):
            self.logging_in_window += 1
        self.index += 1


def count_items(model: str, logdir: str, with_stack: bool) -> dict[str, Any]:
    """``aten::item`` per non-logging step of each variant; with ``with_stack``, also who called each (slow: the
    Python stacks of the recipe on deep_mlp take minutes to collect)."""
    first, last = 25, 28
    results: dict[str, Any] = {}
    for variant in ("plain", "recipe", "mixin", "mixin_monitors"):
        window = ProfileWindow(first, last, with_stack)
        steps = last + 2
        trainer = make_trainer(variant, 50, steps, os.path.join(logdir, f"profile-{model}"), [window])
        trainer.fit(build_model(model, variant, steps), train_dataloaders=loader(model, steps))
        assert window.logging_in_window == 0, "the profiled window must hold non-logging steps only"
        results[variant] = {name: count / (last - first) for name, count in window.counts.items()}
        results[variant]["aten::item by caller"] = {
            source: count / (last - first) for source, count in sorted(window.sources.items())
        }
    return results


# --------------------------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------------------------


def print_steps(model: str, log_every: int, results: dict[str, dict[str, Any]], ratios: dict[str, Any]) -> None:
    table = Table(title=f"{model}, log_every_n_steps={log_every}: step time (ms) and ratio to plain (95% CI)")
    for column in ("variant", "median", "mean", "p90", "median / plain", "paired / plain", "mean / plain"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for variant, result in results.items():
        cells = []
        for stat in ("median", "paired", "mean"):
            entry = ratios["per_variant"][variant][stat]
            low, high = entry["ci95"]
            cells.append(f"{entry['ratio']:.3f} [{low:.3f}, {high:.3f}]")
        table.add_row(
            variant, f"{result['median_ms']:.2f}", f"{result['mean_ms']:.2f}", f"{result['p90_ms']:.2f}", *cells
        )
    console.print(table)


def print_summary(summary: dict[str, Any]) -> None:
    table = Table(title="Overhead relative to plain Lightning: paired median / mean (amortized)")
    columns = (
        "model",
        "log every",
        "A/A",
        "recipe",
        "mixin alone",
        "mixin+monitors",
        "monitors / recipe",
        "A/A monitored",
    )
    for column in columns:
        table.add_column(column, justify="right")

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:+.1f}%"

    def frac(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    for key, entry in summary.items():
        model, log_every = key.split("@")
        paired, mean = entry["ratios"]["derived"]["paired"], entry["ratios"]["derived"]["mean"]
        cells = [
            f"{pct(paired[k])} / {pct(mean[k])}"
            for k in (
                "aa_noise_fraction",
                "recipe_overhead_fraction",
                "mixin_alone_overhead_fraction",
                "monitoring_overhead_fraction",
            )
        ]
        cells.append(f"{frac(paired['monitoring_over_recipe'])} / {frac(mean['monitoring_over_recipe'])}")
        monitored_aa = "monitored_aa_noise_fraction"
        cells.append(f"{pct(paired.get(monitored_aa))} / {pct(mean.get(monitored_aa))}")
        table.add_row(model, log_every, *cells)
    console.print(table)


def print_passes(passes: dict[str, Any]) -> None:
    table = Table(
        title=(
            f"Gradient passes: {passes['parameters'] / 1e6:.1f}M parameters in {passes['tensors']} tensors "
            f"(one read = {passes['one_read']}, {passes['one_read_gb_per_s']:.1f} GB/s)"
        )
    )
    table.add_column("pass")
    table.add_column("median ms", justify="right")
    table.add_column("x one read", justify="right")
    for name, value in passes["median_ms"].items():
        table.add_row(name, f"{value:.2f}", f"{passes['ratio_to_one_read'][name]:.2f}")
    console.print(table)


def print_items(items: dict[str, dict[str, Any]]) -> None:
    table = Table(title="aten::item per non-logging step (torch.profiler, log_every_n_steps=50)")
    table.add_column("model")
    for variant in ("plain", "recipe", "mixin", "mixin_monitors"):
        table.add_column(variant, justify="right")
    for model, counts in items.items():
        cells = []
        for variant in counts:
            callers = ", ".join(f"{source} {n:g}" for source, n in counts[variant]["aten::item by caller"].items())
            cells.append(f"{counts[variant]['aten::item']:g}" + (f" ({callers})" if callers else ""))
        table.add_row(model, *cells)
    console.print(table)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (~1 minute): fewer steps and repetitions")
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch.set_num_threads for everything (default 1: tiny models gain nothing from intra-op threads, and "
        "on a shared 2-core machine two OpenMP threads turn any foreign load into 10-30x step-time outliers)",
    )
    parser.add_argument("--models", nargs="+", default=["digits", "deep_mlp"], choices=["digits", "deep_mlp", *RESNETS])
    parser.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda"], help="where the step times are measured (default cpu)"
    )
    parser.add_argument("--log-every", nargs="+", type=int, default=[1, 50])
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(VARIANTS),
        choices=VARIANTS,
        help="the variants timed side by side (default: all; plain is always timed, as every ratio's reference)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="measured steps per variant (default: digits 500, deep_mlp and the ResNets 200; --quick: 120 and 50)",
    )
    parser.add_argument("--skip-passes", action="store_true")
    parser.add_argument("--skip-items", action="store_true")
    parser.add_argument(
        "--item-callers", action="store_true", help="attribute each aten::item to its caller (Python stacks; slow)"
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)

    warmup = 20 if args.quick else 30
    default_steps = {"digits": 120, "deep_mlp": 50} if args.quick else {"digits": 500, "deep_mlp": 200}
    variants = tuple(dict.fromkeys(["plain", *args.variants]))
    measured = {model: args.steps or default_steps.get(model, default_steps["deep_mlp"]) for model in args.models}
    started = time.perf_counter()
    results: dict[str, Any] = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "processor": platform.processor(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "lightning": L.__version__,
        },
        "config": {
            "quick": args.quick,
            "warmup_steps": warmup,
            "measured_steps": measured,
            "batch_size": BATCH_SIZE,
            "gradient_clip_val": CLIP,
            "variants": {variant: VARIANT_HELP[variant] for variant in variants},
            "monitors": list(MONITORS),
            "device": args.device,
        },
        "steps": {},
    }
    with tempfile.TemporaryDirectory() as logdir:
        for model in args.models:
            for log_every in args.log_every:
                gc.collect()
                steps = run_interleaved(model, log_every, warmup, measured[model], logdir, args.device, None, variants)
                ratios = step_ratios(steps)
                results["steps"][f"{model}@{log_every}"] = {"variants": steps, "ratios": ratios}
                print_steps(model, log_every, steps, ratios)
                console.print(f"[dim]{time.perf_counter() - started:.0f} s elapsed")
        print_summary(results["steps"])
        if not args.skip_items:
            results["item_calls_per_nonlogging_step"] = {
                model: count_items(model, logdir, args.item_callers) for model in args.models
            }
            print_items(results["item_calls_per_nonlogging_step"])
            console.print(f"[dim]{time.perf_counter() - started:.0f} s elapsed")
    if not args.skip_passes:
        results["gradient_passes"] = gradient_pass_benchmark(repeats=10 if args.quick else 30)
        print_passes(results["gradient_passes"])
    results["wall_s"] = time.perf_counter() - started
    console.print(f"total {results['wall_s']:.0f} s")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
        console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
