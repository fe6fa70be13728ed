"""Clipping by norm plus a fused optimizer step: torch's way against the step doing the scaling (issue 7).

``python benchmarks/clip_step.py [--quick] [--device cpu|cuda] [--out results.json]``

For a few model sizes (float32 parameters of transformer-like shapes) and fused AdamW, the median time of, all
interleaved in a fresh random order every repetition on the same parameters, gradients and optimizer:

* ``step``: ``optimizer.step()`` alone (no clipping);
* ``torch``: ``clip_grad_norm_(foreach=True)`` then the step, what Lightning's ``gradient_clip_val`` does;
* ``folded``: :func:`~lightning_optim.clipping.fused_step.clip_in_step` (the total norm, the divisor set on the
optimizer)
  then the step, which divides the gradients in its own kernel;
* ``read``: one read of every gradient byte (the faster of a per-tensor ``sum`` and ``torch._foreach_max``).

The floor for clip + step is ``step + read``: clipping must look at every gradient once to know the norm; anything
above that is clipping's own traffic. Before each timed call the gradients are restored from a copy (not timed), so
every call clips (the gradients' norm is 10x the threshold) and no value decays into denormals.

Bytes moved are a model of each variant's memory traffic over the N parameters (4 bytes each): the AdamW step reads
the parameter, gradient and both moments and writes the parameter and both moments (7 passes of 4N bytes); given a
divisor, the fused kernel also writes the divided gradient back (one more pass: the gradients after the step are
the clipped ones, as torch's way leaves them). ``clip_grad_norm_`` reads the gradients for the norm and then reads
and writes them to scale: 3 passes. Folded clipping reads them once for the norm: 1 pass, plus the write inside the
step. So torch = step + 3, folded = step + 2 (1 read outside, 1 write inside the kernel), floor = step + 1.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from lightning_optim.clipping.fused_step import clip_in_step, forget_step_attributes
from lightning_optim.stats import total_norm

console = Console(width=150)
MAX_NORM = 1.0
SIZES = {
    "1M": (128, 5),
    "8M": (256, 10),
    "32M": (512, 10),
    "128M": (1024, 10),
    "512M": (2048, 10),
    "1B": (2048, 20),
}
"""Model name -> (width d, layers): each layer has the tensors of a transformer block, ~12·d² + 13·d parameters."""
CPU_SIZES = ["1M", "8M", "32M"]
"""The sizes run by default on a CPU; on a GPU, every size that fits (:func:`sizes_that_fit`)."""
BYTES_PER_PARAMETER = 32
"""Device memory :func:`measure` needs per parameter, with room: parameter, gradient, its saved copy and AdamW's two
moments are 20 bytes; making the gradients holds two more copies for a moment."""


def parameter_count(size: str) -> int:
    """The number of parameters of a model size.

    Examples:
        >>> parameter_count("1M")
        991360
    """
    width, layers = SIZES[size]
    return layers * sum(math.prod(shape) for shape in block_shapes(width))


def sizes_that_fit(free_bytes: int, sizes: list[str] | None = None) -> list[str]:
    """The sizes whose :data:`BYTES_PER_PARAMETER` fit in 80% of ``free_bytes``.

    Examples:
        >>> sizes_that_fit(40 * 2**30)
        ['1M', '8M', '32M', '128M', '512M', '1B']
        >>> sizes_that_fit(8 * 2**30)
        ['1M', '8M', '32M', '128M']
    """
    return [s for s in sizes or list(SIZES) if parameter_count(s) * BYTES_PER_PARAMETER <= 0.8 * free_bytes]


def block_shapes(width: int) -> list[tuple[int, ...]]:
    """The parameter shapes of one transformer block of width ``width`` (attention, MLP, two norms)."""
    d = width
    return [(3 * d, d), (3 * d,), (d, d), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,), (d,), (d,), (d,), (d,)]


def make_parameters(width: int, layers: int, device: str) -> tuple[list[torch.nn.Parameter], list[torch.Tensor]]:
    """Parameters with gradients whose total norm is ten times the threshold, and a copy of those gradients.

    On a GPU the numbers are drawn there (a billion draws on one CPU core take a minute)."""
    on_cpu = torch.device(device).type == "cpu"
    generator = torch.Generator(device="cpu" if on_cpu else device).manual_seed(0)
    where = {} if on_cpu else {"device": device}
    shapes = [shape for _ in range(layers) for shape in block_shapes(width)]
    params = [
        torch.nn.Parameter(torch.randn(shape, generator=generator, **where).to(device) * 0.02) for shape in shapes
    ]
    grads = [torch.randn(shape, generator=generator, **where).to(device) for shape in shapes]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    grads = [g * (10 * MAX_NORM / norm) for g in grads]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    return params, grads


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(size: str, device: str, repetitions: int, deadline: float | None = None) -> dict[str, Any]:
    """Median time of each variant for one model size, interleaved in random order.

    Past ``deadline`` (``time.perf_counter``) the repetitions stop, after at least 5 measured ones."""
    width, layers = SIZES[size]
    params, source = make_parameters(width, layers, device)
    numel = sum(p.numel() for p in params)
    named = [(str(i), p) for i, p in enumerate(params)]
    grads = [p.grad for p in params]
    optimizer = torch.optim.AdamW(params, lr=1e-6, fused=True)

    def folded() -> None:
        clip_in_step(named, optimizer, MAX_NORM)
        optimizer.step()

    def torch_way() -> None:
        torch.nn.utils.clip_grad_norm_(params, MAX_NORM, foreach=True)
        optimizer.step()

    variants: dict[str, Callable[[], Any]] = {
        "step": optimizer.step,
        "torch": torch_way,
        "folded": folded,
        "norm": lambda: total_norm(params),
        "read: sum per tensor": lambda: torch.stack([g.sum() for g in grads]),
        "read: _foreach_max": lambda: torch.stack(torch._foreach_max(grads)),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for repetition in range(repetitions + 3):
        if deadline is not None and repetition >= 3 + 5 and time.perf_counter() > deadline:
            break
        order = list(variants)
        random.shuffle(order)
        for name in order:
            torch._foreach_copy_(grads, source)
            synchronize(device)
            start = time.perf_counter()
            variants[name]()
            synchronize(device)
            if repetition >= 3:  # warm-up: allocator, optimizer state, kernels
                times[name].append(time.perf_counter() - start)
    forget_step_attributes(optimizer)
    medians = {name: statistics.median(values) for name, values in times.items()}
    read = min(medians["read: sum per tensor"], medians["read: _foreach_max"])
    pass_bytes = 4 * numel
    traffic = {"step": 7, "torch": 10, "folded": 9, "floor": 8, "read": 1}
    return {
        "size": size,
        "repetitions": len(times["step"]),
        "parameters": numel,
        "tensors": len(params),
        "ms": {name: 1e3 * value for name, value in medians.items()},
        "read_ms": 1e3 * read,
        "floor_ms": 1e3 * (medians["step"] + read),
        "folded_over_torch": medians["folded"] / medians["torch"],
        "folded_over_floor": medians["folded"] / (medians["step"] + read),
        "torch_over_floor": medians["torch"] / (medians["step"] + read),
        "clip_cost_torch": medians["torch"] / medians["step"] - 1,
        "clip_cost_folded": medians["folded"] / medians["step"] - 1,
        "clip_cost_floor": read / medians["step"],
        "bytes_gb": {name: passes * pass_bytes / 1e9 for name, passes in traffic.items()},
        "read_gb_per_s": pass_bytes / read / 1e9,
    }


def default_sizes(device: str, quick: bool) -> list[str]:
    """The CPU's sizes (the smallest two when ``quick``), or on a GPU every size from 128M on that fits its memory."""
    if device != "cuda":
        return CPU_SIZES[:2] if quick else CPU_SIZES
    fitting = sizes_that_fit(torch.cuda.mem_get_info()[0], list(SIZES)[3:])
    return fitting[:2] if quick else fitting


def report(results: list[dict[str, Any]], device: str) -> None:
    table = Table(title=f"Clip by norm + fused AdamW step ({device}); medians, ms")
    for column in ("model", "step", "torch", "folded", "floor", "folded/torch", "folded/floor", "torch/floor"):
        table.add_column(column, justify="right")
    for r in results:
        ms = r["ms"]
        table.add_row(
            f"{r['size']} ({r['parameters'] / 1e6:.1f}M, {r['tensors']} tensors)",
            f"{ms['step']:.2f}",
            f"{ms['torch']:.2f}",
            f"{ms['folded']:.2f}",
            f"{r['floor_ms']:.2f}",
            f"{r['folded_over_torch']:.3f}",
            f"{r['folded_over_floor']:.3f}",
            f"{r['torch_over_floor']:.3f}",
        )
    console.print(table)
    costs = Table(title="Clipping's cost over the step alone, and bytes moved (model, GB)")
    for column in ("model", "torch", "folded", "floor (one read)", "bytes torch", "bytes folded", "bytes floor"):
        costs.add_column(column, justify="right")
    for r in results:
        costs.add_row(
            r["size"],
            f"+{100 * r['clip_cost_torch']:.0f}%",
            f"+{100 * r['clip_cost_folded']:.0f}%",
            f"+{100 * r['clip_cost_floor']:.0f}%",
            f"{r['bytes_gb']['torch']:.2f}",
            f"{r['bytes_gb']['folded']:.2f}",
            f"{r['bytes_gb']['floor']:.2f}",
        )
    console.print(costs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer repetitions, smallest two sizes (on a GPU: 128M and 512M)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repetitions", type=int, default=None)
    parser.add_argument("--sizes", nargs="+", default=None, choices=list(SIZES))
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    random.seed(0)
    sizes = args.sizes or default_sizes(args.device, args.quick)
    repetitions = args.repetitions or (10 if args.quick else (200 if args.device == "cuda" else 40))
    results = [measure(size, args.device, repetitions) for size in sizes]
    report(results, args.device)
    environment = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "repetitions": repetitions,
    }
    if args.out:
        args.out.write_text(json.dumps({"environment": environment, "results": results}, indent=2))
        console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
