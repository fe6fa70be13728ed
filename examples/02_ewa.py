"""Exponentially weighted averages: how much weight each past step gets, for beta in {0.8, 0.9, 0.95, 0.98}.

v_t = beta·v_{t-1} + (1 - beta)·g_t gives the value k steps back the weight (1 - beta)·beta^k: the newest value
gets 1 - beta, and the weights fall to 1/e of that after about 1/(1 - beta) steps, the "window" of the average.
This is the first moment of Adam, momentum SGD (without the 1 - beta factor) and RMSprop's second moment: the script
checks that Adam's ``exp_avg``, built through ``lightning_optim.build_optimizer``, is exactly this average.

Run::

    python examples/02_ewa.py --out docs/images

Writes ``example_02_ewa.png`` (weights per past step; a noisy series smoothed with bias correction) and prints
one line per beta.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from _common import parse_args, save
from matplotlib.figure import Figure
from torch import nn

from lightning_optim import build_optimizer

BETAS = (0.8, 0.9, 0.95, 0.98)


def weights(beta: float, history: int) -> np.ndarray:
    """The weight of the value k = 0..history-1 steps back in v_t (for t far from the start)."""
    return (1 - beta) * beta ** np.arange(history)


def ewa(values: np.ndarray, beta: float, bias_correction: bool = True) -> np.ndarray:
    """The running average v_t of ``values``, divided by 1 - beta^t when ``bias_correction``."""
    averages, v = [], 0.0
    for t, value in enumerate(values, start=1):
        v = beta * v + (1 - beta) * value
        averages.append(v / (1 - beta**t) if bias_correction else v)
    return np.array(averages)


def adam_first_moment(gradients: np.ndarray, beta: float) -> np.ndarray:
    """Adam's ``exp_avg`` after each step when it is fed ``gradients`` (the optimizer built from a config)."""
    parameter = nn.ParameterList([nn.Parameter(torch.zeros((), dtype=torch.float64))])
    optimizer = build_optimizer(parameter, {"name": "adam", "lr": 0.0, "betas": [beta, 0.999]})
    moments = []
    for gradient in gradients:
        parameter[0].grad = torch.tensor(gradient, dtype=torch.float64)
        optimizer.step()
        moments.append(optimizer.state[parameter[0]]["exp_avg"].item())
    return np.array(moments)


def noisy_series(length: int) -> np.ndarray:
    """A slow seasonal signal plus noise (like daily temperatures), fixed by its seed."""
    rng = np.random.default_rng(0)
    days = np.arange(length)
    return 10 + 8 * np.sin(2 * np.pi * days / length) + rng.normal(0, 3, length)


def plot(history: int, series: np.ndarray, out: Path) -> Path:
    figure = Figure(figsize=(13, 4.8))
    weight_ax, smooth_ax = figure.subplots(1, 2)
    steps_back = np.arange(history)
    for beta in BETAS:
        (line,) = weight_ax.plot(steps_back, weights(beta, history), marker=".", markersize=3, label=f"beta={beta}")
        window = 1 / (1 - beta)
        weight_ax.axvline(window, color=line.get_color(), linestyle=":", alpha=0.7)
    weight_ax.set(
        xlabel="steps back (k)",
        ylabel="weight (1 - beta)·beta^k",
        title="Weight of each past step (dotted: 1/(1 - beta) steps)",
    )
    smooth_ax.plot(series, ".", color="0.6", markersize=3, label="noisy values")
    for beta in BETAS:
        smooth_ax.plot(ewa(series, beta), label=f"beta={beta}")
    smooth_ax.plot(ewa(series, 0.98, bias_correction=False), "--", color="C3", alpha=0.6, label="0.98, no bias corr.")
    smooth_ax.set(xlabel="step", ylabel="value", title="Averages with bias correction: larger beta, smoother, later")
    for ax in (weight_ax, smooth_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save(figure, out, "example_02_ewa.png")


def main(argv: Sequence[str] | None = None) -> dict[float, np.ndarray]:
    args = parse_args(__doc__, argv)
    history = 60 if args.quick else 150
    series = noisy_series(history * 2)
    result = {}
    for beta in BETAS:
        w = weights(beta, 10_000)
        window = round(1 / (1 - beta))
        adam = adam_first_moment(series, beta)
        plain = ewa(series, beta, bias_correction=False)
        print(
            f"beta={beta}: weight of newest = {w[0]:.4f}, of {window} steps back = {w[window]:.4f} "
            f"(ratio {w[window] / w[0]:.3f} ~ 1/e), last {window} steps hold {w[:window].sum():.3f} of the total "
            f"{w.sum():.6f}; Adam exp_avg max |diff| = {np.abs(adam - plain).max():.1e}"
        )
        result[beta] = w[:history]
    print(f"wrote {plot(history, series, args.out)}")
    return result


if __name__ == "__main__":
    main()
