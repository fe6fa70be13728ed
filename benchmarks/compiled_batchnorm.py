"""What BatchNorm statistics cost per training step, eager and under torch.compile (inductor), side by side.

``python benchmarks/compiled_batchnorm.py [--quick] [--device cpu|cuda] [--out results.json]``

One process trains six copies of a ResNet-18-shaped network (20 BatchNorm layers; SGD with momentum), one step per
variant per round, in a fresh random order every round, so drift and foreign load hit every variant alike:

* ``eager``: no statistics;
* ``eager_hooks``: eager, with what ``BatchNormMonitor`` does on a logging step: a forward pre-hook per layer computing
  :func:`~lightning_optim.stats.batchnorm_layers.layer_values` (the batch statistics and the summaries), the running
  statistics' copy, and one host sync for all values;
* ``compiled``: ``torch.compile(net)`` (inductor), no statistics;
* ``compiled_updates``: compiled, with what ``BatchNormMonitor`` does on a logging step under compile: the running
  statistics copied before the forward (:class:`~lightning_optim.stats.batchnorm_layers.LayerUpdates`), the batch's
  statistics recovered from their update after it, one host sync (the graph is the ``compiled`` one);
* ``compiled_in_graph``: the design not taken, measured: forward pre-hooks attached *before* compiling, traced into
  the graph, computing the same statistics into preallocated buffers on every step, read with one host sync;
* ``compiled_aa``: ``compiled`` again, an A/A control whose ratio to ``compiled`` shows the noise floor.

Each ratio is the median over rounds of the per-round ratio to the variant's baseline (``eager`` or ``compiled``),
with a 95% bootstrap interval. The monitor measures only on Lightning's logging steps, so its cost per step is
``(logging-step ratio - 1) / log_every_n_steps``; the in-graph design pays its ratio on every step. The values the
compiled path logs are compared with eager hooks' (max relative difference, denominators at least 1e-3) over three
steps from the same initial weights: the first from identical weights, the later ones after inductor's and eager's
training steps have drifted apart by float rounding.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from lightning_optim.stats.batchnorm import channel_moments
from lightning_optim.stats.batchnorm_layers import LayerUpdates, layer_values

BATCH_NORMS = (nn.BatchNorm2d,)


class Block(nn.Module):
    """torchvision's ResNet ``BasicBlock``."""

    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + identity)


def resnet18(width: int) -> nn.Module:
    """ResNet-18's layout (stem, four stages of two blocks, pool, fc) at ``width`` channels in the first stage."""
    stages, inplanes = [], width
    for index, planes in enumerate((width, 2 * width, 4 * width, 8 * width)):
        stride = 1 if index == 0 else 2
        stages += [Block(inplanes, planes, stride), Block(planes, planes, 1)]
        inplanes = planes
    return nn.Sequential(
        nn.Conv2d(3, width, 3, 1, 1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        *stages,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(inplanes, 10),
    )


def batchnorms(net: nn.Module) -> dict[str, nn.BatchNorm2d]:
    return {name: module for name, module in net.named_modules() if isinstance(module, BATCH_NORMS)}


def hook_values(layer: nn.BatchNorm2d, inputs: torch.Tensor) -> list[torch.Tensor]:
    """What ``BatchNormMonitor``'s eager pre-hook computes for one layer."""
    with torch.no_grad():
        _, values = layer_values(layer, layer.running_mean, layer.running_var, channel_moments(inputs))
    return list(values.unbind())


class EagerHooks:
    """Pre-hooks attached for one step, as the monitor does on a logging step."""

    def __init__(self, net: nn.Module) -> None:
        self.layers = batchnorms(net)
        self.values: dict[str, list[torch.Tensor]] = {}

    def _hook(self, name: str, layer: nn.BatchNorm2d, args: tuple[Any, ...]) -> None:
        if name not in self.values:
            self.values[name] = hook_values(layer, args[0])

    def around(self, forward_backward: Callable[[], None]) -> dict[str, list[float]]:
        self.values = {}
        # The monitor copies the running statistics in eager runs too, for a layer its hook does not see.
        before = LayerUpdates(self.layers)
        handles = [layer.register_forward_pre_hook(partial(self._hook, name)) for name, layer in self.layers.items()]
        forward_backward()
        before.measure(skip=self.values)
        for handle in handles:
            handle.remove()
        return synced(self.values)


class InGraph:
    """Pre-hooks attached before compiling, writing every step into one preallocated buffer (the design not taken)."""

    def __init__(self, net: nn.Module) -> None:
        self.layers = batchnorms(net)
        device = next(net.parameters()).device
        self.buffer = torch.zeros(len(self.layers), 15, device=device)
        self.calls = torch.zeros((), device=device)
        for row, layer in enumerate(self.layers.values()):
            layer.register_forward_pre_hook(partial(self._hook, row))

    def _hook(self, row: int, layer: nn.BatchNorm2d, args: tuple[Any, ...]) -> None:
        with torch.no_grad():
            self.buffer[row].copy_(torch.stack(hook_values(layer, args[0])))
            if row == 0:
                self.calls.add_(1)

    def read(self) -> dict[str, list[float]]:
        return dict(zip(self.layers, self.buffer.tolist(), strict=True))


def synced(values: dict[str, list[torch.Tensor]]) -> dict[str, list[float]]:
    """All values to Python numbers with one host sync, as the monitor does."""
    names = list(values)
    numbers = torch.stack([torch.stack(values[name]) for name in names]).tolist()
    return dict(zip(names, numbers, strict=True))


def from_updates(layers: dict[str, nn.BatchNorm2d], forward_backward: Callable[[], None]) -> dict[str, list[float]]:
    """The monitor's compiled path for one logging step."""
    before = LayerUpdates(layers)
    forward_backward()
    measured = before.measure()
    return synced({name: list(values.unbind()) for name, (_, values, _) in measured.items()})


class Variant:
    def __init__(self, name: str, width: int, device: torch.device, compiled: bool, in_graph: bool = False) -> None:
        torch.manual_seed(0)
        self.name = name
        self.net = resnet18(width).to(device)
        self.in_graph = InGraph(self.net) if in_graph else None
        self.model = torch.compile(self.net) if compiled else self.net
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=0.01, momentum=0.9)
        self.layers = batchnorms(self.net)
        self.eager_hooks = EagerHooks(self.net) if name == "eager_hooks" else None

    def forward_backward(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        nn.functional.cross_entropy(self.model(inputs), labels).backward()

    def step(self, inputs: torch.Tensor, labels: torch.Tensor, read: bool = False) -> dict[str, list[float]] | None:
        run = partial(self.forward_backward, inputs, labels)
        values = None
        if self.eager_hooks is not None:
            values = self.eager_hooks.around(run)
        elif self.name == "compiled_updates":
            values = from_updates(self.layers, run)
        else:
            run()
            # The in-graph design computes every step but reads (a host sync) only on logging steps: not timed here.
            if self.in_graph is not None and read:
                values = self.in_graph.read()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return values


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bootstrap(ratios: list[float], rounds: int = 2000) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    samples = np.asarray(ratios)
    medians = np.median(rng.choice(samples, (rounds, len(samples))), axis=1)
    return float(np.quantile(medians, 0.025)), float(np.quantile(medians, 0.975))


def agreement(width: int, device: torch.device, inputs: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Max relative difference between the compiled path's values and eager hooks', per step from the same weights
    and batch: the first step measures the recovery alone; later ones add the divergence of inductor's training."""
    eager, compiled = Variant("eager_hooks", width, device, False), Variant("compiled_updates", width, device, True)
    worst = []
    for _ in range(3):
        expected, got = eager.step(inputs, labels), compiled.step(inputs, labels)
        assert expected is not None and got is not None
        worst.append(
            max(
                abs(have - want) / max(abs(want), 1e-3)
                for name, values in expected.items()
                for want, have in zip(values, got[name], strict=True)
            )
        )
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and a narrower network (a smoke run)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads on CPU")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    width, batch, size = (8, 16, 16) if args.quick else (16, 32, 32)
    rounds = args.rounds or (10 if args.quick else 40)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(batch, 3, size, size, generator=generator).to(device)
    labels = torch.randint(0, 10, (batch,), generator=generator).to(device)

    started = time.perf_counter()
    # The in-graph variant first: dynamo reuses a graph traced without hooks for a later model with hooks.
    variants = [Variant("compiled_in_graph", width, device, True, in_graph=True)]
    variants += [
        Variant("eager", width, device, False),
        Variant("eager_hooks", width, device, False),
        Variant("compiled", width, device, True),
        Variant("compiled_aa", width, device, True),
        Variant("compiled_updates", width, device, True),
    ]
    for variant in variants:  # compile and warm up
        for _ in range(3):
            variant.step(inputs, labels)
    in_graph = variants[0].in_graph
    assert in_graph is not None and float(in_graph.calls) == 3, "the in-graph hooks did not run in the graph"
    compile_seconds = time.perf_counter() - started

    times: dict[str, list[float]] = {variant.name: [] for variant in variants}
    for _ in range(rounds):
        for variant in random.sample(variants, len(variants)):
            synchronize(device)
            start = time.perf_counter()
            variant.step(inputs, labels)
            synchronize(device)
            times[variant.name].append(time.perf_counter() - start)

    baselines = {"eager_hooks": "eager", "compiled": "compiled", "compiled_aa": "compiled"}
    baselines |= {"compiled_updates": "compiled", "compiled_in_graph": "compiled"}
    results: dict[str, Any] = {
        "device": str(device),
        "platform": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "width": width,
        "batch": [batch, 3, size, size],
        "batchnorm_layers": len(variants[1].layers),
        "rounds": rounds,
        "compile_and_warmup_s": round(compile_seconds, 1),
        "median_step_ms": {name: round(statistics.median(values) * 1e3, 3) for name, values in times.items()},
        "ratios": {},
        "max_relative_difference_compiled_vs_eager_per_step": agreement(width, device, inputs, labels),
    }
    for name, baseline in baselines.items():
        per_round = [a / b for a, b in zip(times[name], times[baseline], strict=True)]
        low, high = bootstrap(per_round)
        ratio = statistics.median(per_round)
        results["ratios"][name] = {
            "to": baseline,
            "paired_median": round(ratio, 4),
            "ci95": [round(low, 4), round(high, 4)],
            "per_step_at_log_every_50": round(1 + (ratio - 1) / 50, 4) if name != "compiled_in_graph" else None,
        }
    print(json.dumps(results, indent=2))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
