"""Clipping by norm plus a fused optimizer step: torch's way against the step doing the scaling (issue 7).

``python benchmarks/clip_step.py [--quick] [--device cpu|cuda] [--out results.json]``

For a few model sizes (float32 parameters of transformer-like shapes) and fused AdamW, the median time of, all
interleaved in a fresh random order every repetition on the same parameters, gradients and optimizer:

* ``step``: ``optimizer.step()`` alone (no clipping);
* ``torch``: ``clip_grad_norm_(foreach=True)`` then the step, what Lightning's ``gradient_clip_val`` does;
* ``folded``: :func:`~lightning_optim.clipping.clip_in_step` (the total norm, the divisor set on the optimizer)
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

from lightning_optim.clipping import clip_in_step, forget_step_attributes
from lightning_optim.stats import total_norm

console = Console(width=150)
MAX_NORM = 1.0
SIZES = {"1M": (128, 5), "8M": (256, 10), "32M": (512, 10)}
"""Model name -> (width d, layers): each layer has the tensors of a transformer block, ~12·d² + 13·d parameters."""


def block_shapes(width: int) -> list[tuple[int, ...]]:
    """The parameter shapes of one transformer block of width ``width`` (attention, MLP, two norms)."""
    d = width
    return [(3 * d, d), (3 * d,), (d, d), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,), (d,), (d,), (d,), (d,)]


def make_parameters(width: int, layers: int, device: str) -> tuple[list[torch.nn.Parameter], list[torch.Tensor]]:
    """Parameters with gradients whose total norm is ten times the threshold, and a copy of those gradients."""
    generator = torch.Generator().manual_seed(0)
    shapes = [shape for _ in range(layers) for shape in block_shapes(width)]
    params = [torch.nn.Parameter(torch.randn(shape, generator=generator).to(device) * 0.02) for shape in shapes]
    grads = [torch.randn(shape, generator=generator).to(device) for shape in shapes]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    grads = [g * (10 * MAX_NORM / norm) for g in grads]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    return params, grads


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(size: str, device: str, repetitions: int) -> dict[str, Any]:
    """Median time of each variant for one model size, interleaved in random order."""
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
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, smallest two sizes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repetitions", type=int, default=None)
    parser.add_argument("--sizes", nargs="+", default=None, choices=list(SIZES))
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    random.seed(0)
    sizes = args.sizes or (["1M", "8M"] if args.quick else list(SIZES))
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
