"""Learning rate on y = 4x², from x = 2: converge, land in one step, diverge, crawl; and momentum.

Gradient descent on y = 4x² updates x ← x - lr·8x = (1 - 8·lr)·x, so

* lr 0.125 makes the factor 0: the minimum x = 0 after exactly one step;
* lr 0.2 gives factor -0.6: x flips sign and shrinks, it converges;
* lr 0.3 (anything above 0.25) gives |factor| > 1: x flips and grows, the loss diverges;
* lr 0.01 gives factor 0.92: it crawls.

SGD with momentum 0.9 at lr 0.01 reaches the bottom before plain SGD at lr 0.03, but overshoots to the other side.
Every optimizer is built by ``lightning_optim.build_optimizer`` from a config dict, on a one-parameter module.

Run::

    python examples/01_learning_rate.py --out docs/images

Writes ``example_01_learning_rate.png`` (loss per iteration; the path on the curve) and prints one line per run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import parse_args, save
from matplotlib.figure import Figure
from torch import nn

from lightning_optim import build_optimizer

START = 2.0
LEARNING_RATES = {0.01: "crawls", 0.125: "one step", 0.2: "converges", 0.3: "diverges"}
MOMENTUM = {"name": "sgd", "lr": 0.01, "momentum": 0.9}
PLAIN = {"name": "sgd", "lr": 0.03}


def loss_fn(x: torch.Tensor) -> torch.Tensor:
    """y = 4x²."""
    return 4 * x**2


class Point(nn.Module):
    """One trainable coordinate x, starting at ``start``."""

    def __init__(self, start: float) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.tensor(start, dtype=torch.float64))


def descend(spec: Mapping[str, Any], steps: int) -> np.ndarray:
    """x after 0..steps optimizer steps on y = 4x², with the optimizer ``spec`` builds."""
    point = Point(START)
    optimizer = build_optimizer(point, spec)
    xs = [point.x.item()]
    for _ in range(steps):
        optimizer.zero_grad()
        loss_fn(point.x).backward()
        optimizer.step()
        xs.append(point.x.item())
    return np.array(xs)


def first_step_below(losses: np.ndarray, level: float) -> int:
    """The first step whose loss is at most ``level``."""
    return int(np.argmax(losses <= level))


def plot(paths: dict[str, np.ndarray], out: Path) -> Path:
    figure = Figure(figsize=(13, 8))
    (loss_ax, curve_ax), (mloss_ax, mcurve_ax) = figure.subplots(2, 2)
    grid = np.linspace(-4.2, 4.2, 200)
    curve_ax.plot(grid, 4 * grid**2, color="0.7", zorder=0)
    curve_ax.set(xlabel="x", ylabel="y = 4x²", xlim=(-4.2, 4.2), ylim=(-2, 70))
    mcurve_ax.axhline(0.0, color="0.5", linewidth=1)
    for (name, xs), color in zip(paths.items(), ["C0", "C1", "C2", "C3", "C4", "C5"], strict=False):
        top = (loss_ax, curve_ax) if name.startswith("lr=") else (mloss_ax, mcurve_ax)
        top[0].semilogy(range(len(xs)), np.maximum(4 * xs**2, 1e-30), marker=".", color=color, label=name)
        if name.startswith("lr="):
            shown = xs[:12]
            curve_ax.plot(shown, 4 * shown**2, marker="o", markersize=4, color=color, label=name, alpha=0.8)
        else:
            mcurve_ax.plot(range(len(xs)), xs, marker=".", color=color, label=name)
    loss_ax.set(
        xlabel="iteration", ylabel="loss (log)", title="Plain SGD: the learning rate decides", ylim=(1e-12, 1e6)
    )
    curve_ax.set(title="Path on the curve (first 12 steps)")
    mloss_ax.set(xlabel="iteration", ylabel="loss (log)", title="Momentum 0.9 at lr 0.01 vs plain SGD at lr 0.03")
    mcurve_ax.set(xlabel="iteration", ylabel="x", title="x per iteration: momentum arrives first, then overshoots")
    for ax in (loss_ax, curve_ax, mloss_ax, mcurve_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save(figure, out, "example_01_learning_rate.png")


def main(argv: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    args = parse_args(__doc__, argv)
    steps = 20 if args.quick else 60
    paths = {f"lr={lr} ({what})": descend({"name": "sgd", "lr": lr}, steps) for lr, what in LEARNING_RATES.items()}
    paths["SGD lr=0.03"] = descend(PLAIN, steps)
    paths["momentum 0.9, lr=0.01"] = descend(MOMENTUM, steps)
    for (lr, what), xs in zip(LEARNING_RATES.items(), paths.values(), strict=False):
        losses = loss_fn(torch.from_numpy(xs)).numpy()
        print(
            f"lr={lr}: x after 1 step = {xs[1]:.6e}, loss after {steps} steps = {losses[-1]:.6e} "
            f"(start {losses[0]:.1f}, {what})"
        )
    plain = loss_fn(torch.from_numpy(paths["SGD lr=0.03"])).numpy()
    momentum_xs = paths["momentum 0.9, lr=0.01"]
    momentum = loss_fn(torch.from_numpy(momentum_xs)).numpy()
    crossing = int(np.argmax(momentum_xs < 0))  # momentum's first step past the minimum
    print(
        f"momentum 0.9 lr=0.01 reaches loss {momentum[crossing]:.4f} at step {crossing}, "
        f"plain SGD lr=0.03 at step {first_step_below(plain, momentum[crossing])}; "
        f"momentum overshoots to x = {momentum_xs.min():.4f}"
    )
    print(f"wrote {plot(paths, args.out)}")
    return paths


if __name__ == "__main__":
    main()
