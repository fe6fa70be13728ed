"""Eleven torch optimizers on a narrow curved valley (Rosenbrock) and at a saddle point, side by side.

Each optimizer comes from the package's Hydra config group (``lightning_optim/conf/optimizer/<name>.yaml``: torch's
defaults written out) with the learning rate below, and is built by ``lightning_optim.build_optimizer`` over a
module holding the point (x, y):

* **Rosenbrock** f = (1 - x)² + 100·(y - x²)², from (-1.5, 2): the valley floor is flat along its length and steep
  across it. Plain SGD must keep its lr small for the steep direction and then crawls along the floor; at the same
  lr, momentum builds up speed along it, and the adaptive methods rescale each direction.
* **Saddle** f = x² + y⁴/4 - y²/2, from (1, 0.001): (0, 0) is a saddle, the minima are at y = ±1 (f = -0.25). The
  gradient along y starts tiny; SGD and momentum take it at face value and linger; methods that divide by a running
  gradient scale (Adagrad, RMSprop, Adam...) escape in a few steps.

Run::

    python examples/03_optimizers.py --out docs/images

Writes ``example_03_optimizers.png`` (paths on the contour plots, loss curves) and prints one line per surface.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import parse_args, save
from matplotlib.figure import Figure
from omegaconf import OmegaConf
from torch import nn

from lightning_optim import build_optimizer

# label: (config file in conf/optimizer, overrides). One lr per optimizer, for both surfaces; SGD and the momentum
# methods share theirs.
OPTIMIZERS: dict[str, tuple[str, dict[str, Any]]] = {
    "SGD": ("sgd", {"lr": 1e-3, "momentum": 0.0, "nesterov": False}),
    "Momentum": ("sgd", {"lr": 1e-3, "momentum": 0.9, "nesterov": False}),
    "Nesterov": ("sgd", {"lr": 1e-3, "momentum": 0.9, "nesterov": True}),
    "Adagrad": ("adagrad", {"lr": 0.5}),
    "Adadelta": ("adadelta", {"lr": 1.0}),
    "RMSprop": ("rmsprop", {"lr": 1e-2}),
    "Adam": ("adam", {"lr": 0.05}),
    "AdamW": ("adamw", {"lr": 0.05}),
    "Adamax": ("adamax", {"lr": 0.1}),
    "NAdam": ("nadam", {"lr": 0.05}),
    "RAdam": ("radam", {"lr": 0.01}),
}
ESCAPED = -0.2
"""Saddle: a run has escaped once its loss is below this (the minima are at -0.25, the saddle at 0)."""


def rosenbrock(x: Any, y: Any) -> Any:
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def saddle(x: Any, y: Any) -> Any:
    return x**2 + y**4 / 4 - y**2 / 2


SURFACES: dict[str, tuple[Callable[[Any, Any], Any], tuple[float, float]]] = {
    "rosenbrock": (rosenbrock, (-1.5, 2.0)),
    "saddle": (saddle, (1.0, 1e-3)),
}


def optimizer_config(label: str) -> dict[str, Any]:
    """The package's yaml for this optimizer with the overrides applied, as a plain dict."""
    name, overrides = OPTIMIZERS[label]
    config = OmegaConf.load(str(files("lightning_optim.conf") / "optimizer" / f"{name}.yaml"))
    return OmegaConf.to_container(OmegaConf.merge(config, overrides))


def descend(label: str, surface: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The path (steps + 1, 2) and the loss before each step (steps,) of one optimizer on one surface."""
    function, start = SURFACES[surface]
    point = nn.ParameterList([nn.Parameter(torch.tensor(start, dtype=torch.float64))])
    optimizer = build_optimizer(point, optimizer_config(label))
    path, losses = [point[0].detach().clone().numpy()], []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = function(point[0][0], point[0][1])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        path.append(point[0].detach().clone().numpy())
    return np.array(path), np.array(losses)


def plot(results: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], out: Path) -> Path:
    figure = Figure(figsize=(14, 11))
    axes = figure.subplots(2, 2)
    colors = [f"C{i}" for i in range(10)] + ["black"]
    views = {"rosenbrock": ((-2.0, 2.0), (-1.0, 3.0), (1.0, 1.0)), "saddle": ((-1.2, 1.2), (-1.5, 1.5), (0.0, 1.0))}
    for row, (surface, runs) in enumerate(results.items()):
        function, start = SURFACES[surface]
        (x0, x1), (y0, y1), best = views[surface]
        gx, gy = np.meshgrid(np.linspace(x0, x1, 300), np.linspace(y0, y1, 300))
        contour_ax, loss_ax = axes[row]
        if surface == "rosenbrock":
            contour_ax.contour(gx, gy, np.log10(function(gx, gy) + 1e-3), levels=25, cmap="Greys", alpha=0.6)
        else:
            contour_ax.contour(gx, gy, function(gx, gy), levels=25, cmap="Greys", alpha=0.6)
        for (label, (path, losses)), color in zip(runs.items(), colors, strict=True):
            inside = np.all(np.isfinite(path), axis=1)
            contour_ax.plot(path[inside, 0], path[inside, 1], color=color, linewidth=1.2, label=label)
            shown = losses + (0.25 if surface == "saddle" else 0.0)
            loss_ax.semilogy(np.maximum(shown, 1e-12), color=color, label=label)
        contour_ax.plot(*start, "ko")
        contour_ax.plot(*best, "r*", markersize=14)
        contour_ax.set(xlim=(x0, x1), ylim=(y0, y1), xlabel="x", ylabel="y", title=f"{surface}: paths")
        ylabel = "f - f_min (log)" if surface == "saddle" else "f (log)"
        loss_ax.set(xlabel="step", ylabel=ylabel, title=f"{surface}: loss")
        for ax in (contour_ax, loss_ax):
            ax.grid(alpha=0.3)
        loss_ax.legend(fontsize=8, ncol=2)
    return save(figure, out, "example_03_optimizers.png")


def escape_step(losses: np.ndarray) -> int | None:
    below = np.flatnonzero(losses < ESCAPED)
    return int(below[0]) if below.size else None


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    args = parse_args(__doc__, argv)
    steps = {"rosenbrock": 400 if args.quick else 2000, "saddle": 150 if args.quick else 400}
    results = {
        surface: {label: descend(label, surface, steps[surface]) for label in OPTIMIZERS} for surface in SURFACES
    }
    finals = ", ".join(f"{label}={losses[-1]:.2e}" for label, (_, losses) in results["rosenbrock"].items())
    print(f"rosenbrock loss after {steps['rosenbrock']} steps: {finals}")
    escapes = ", ".join(f"{label}={escape_step(losses)}" for label, (_, losses) in results["saddle"].items())
    print(f"saddle: first step with loss < {ESCAPED} (None: not in {steps['saddle']} steps): {escapes}")
    print(f"wrote {plot(results, args.out)}")
    return results


if __name__ == "__main__":
    main()
