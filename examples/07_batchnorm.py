"""BatchNorm: the feature distribution before and after a BatchNorm layer, and its running statistics in train vs
eval mode, from ``BatchNormMonitor``.

The package's ``DigitsCNN`` (conv → BatchNorm2d → ReLU, twice) trains on scikit-learn's digits with
``BatchNormMonitor(histogram_every_n=1)``: at every logging step it writes histograms of each BatchNorm layer's
input and output and scalars of its running statistics. The script reads them back from the TensorBoard event
files. At the first step (gamma = 1, beta = 0) the output is the input standardized per channel: mean 0, std 1. The
running mean and variance then follow the batches (momentum 0.1).

Train vs eval mode: in train mode the layer normalizes with the statistics of the batch in front of it; in eval
mode with its running statistics. On the validation images, after training the two agree; a fresh layer
(running mean 0, variance 1) in eval mode leaves its input as it is.

Run::

    python examples/07_batchnorm.py --out docs/images

Writes ``example_07_batchnorm.png`` and prints the input and output statistics at the first step and the output
statistics in train vs eval mode.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from _common import QUIET_TRAINER, parse_args, quiet, save, tb_histograms, tb_scalars
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure

from lightning_optim.callbacks import BatchNormMonitor
from lightning_optim.demos import DigitsCNN, DigitsDataModule

LAYER = "features.1"


def train(runs: Path, steps: int) -> tuple[DigitsCNN, DigitsDataModule, Path]:
    """Fit the CNN with the monitor writing histograms at every logging step; returns model, data, log dir."""
    L.seed_everything(0, verbose=False)
    model = DigitsCNN(width=8, optim_config={"optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}})
    data = DigitsDataModule(batch_size=64)
    shutil.rmtree(runs / "07_batchnorm", ignore_errors=True)
    logger = TensorBoardLogger(runs, name="07_batchnorm", default_hp_metric=False)
    trainer = L.Trainer(
        max_steps=steps,
        log_every_n_steps=2,
        logger=logger,
        callbacks=[BatchNormMonitor(histogram_every_n=1, report=False)],
        enable_checkpointing=False,
        limit_val_batches=0,
        **QUIET_TRAINER,
    )
    trainer.fit(model, data)
    return model, data, Path(logger.log_dir)


def moments(histogram: Any) -> tuple[float, float]:
    """Exact mean and standard deviation of the values a TensorBoard histogram summarizes."""
    mean = histogram.sum / histogram.num
    return mean, float(np.sqrt(max(histogram.sum_squares / histogram.num - mean**2, 0.0)))


def layer_outputs(model: DigitsCNN, images: torch.Tensor, train_mode: bool) -> torch.Tensor:
    """The output of the first BatchNorm layer (on a copy, so running statistics stay as they are)."""
    features = copy.deepcopy(model.features[:2])
    features.train(train_mode)
    with torch.no_grad():
        return features(images)


def channel_stats(output: torch.Tensor) -> tuple[float, float]:
    """Mean over channels of |per-channel mean| and of per-channel std."""
    per_channel = output.transpose(0, 1).flatten(1)
    return float(per_channel.mean(1).abs().mean()), float(per_channel.std(1).mean())


def draw_histogram(ax: Any, histogram: Any, label: str, color: str, bins: int = 80) -> None:
    """Re-bin TensorBoard's exponential buckets onto an even grid (through the cumulative counts) and draw them."""
    limits = np.clip(np.array(histogram.bucket_limit), histogram.min, histogram.max)
    cumulative = np.cumsum(histogram.bucket)
    grid = np.linspace(-4, 4, bins + 1)
    density = np.diff(np.interp(grid, limits, cumulative, left=0.0)) / (cumulative[-1] * (grid[1] - grid[0]))
    ax.stairs(density, grid, fill=True, alpha=0.5, color=color, label=label)


def plot(histograms: dict, scalars: dict, modes: dict[str, torch.Tensor], out: Path) -> Path:
    figure = Figure(figsize=(15, 4.6))
    hist_ax, running_ax, mode_ax = figure.subplots(1, 3)
    step, first_in = histograms[f"batchnorm/{LAYER}/input"][0]
    _, first_out = histograms[f"batchnorm/{LAYER}/output"][0]
    draw_histogram(hist_ax, first_in, "input (conv output)", "C1")
    draw_histogram(hist_ax, first_out, "output (after BatchNorm)", "C0")
    hist_ax.set(xlim=(-4, 4), xlabel="activation", ylabel="density", title=f"{LAYER} at step {step}: before / after")
    for key, color in (("running_mean_mean", "C0"), ("running_var_mean", "C1"), ("mean_drift", "C2")):
        steps, values = np.array(scalars[f"batchnorm/{LAYER}/{key}"]).T
        running_ax.plot(steps, values, color=color, label=key)
    running_ax.set(xlabel="optimizer step", title=f"{LAYER}: running statistics (mean over channels)")
    for (label, output), color in zip(modes.items(), ["C0", "C3", "C7"], strict=True):
        values = output[:, 0].flatten().numpy()
        mode_ax.hist(
            values, bins=60, range=(-4, 4), density=True, histtype="step", linewidth=1.5, color=color, label=label
        )
    mode_ax.set(xlabel="activation (channel 0)", ylabel="density", title="Validation images: train vs eval mode")
    for ax in (hist_ax, running_ax, mode_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save(figure, out, "example_07_batchnorm.png")


def main(argv: Sequence[str] | None = None) -> dict[str, tuple[float, float]]:
    args = parse_args(__doc__, argv)
    quiet()
    model, data, logdir = train(args.runs, 20 if args.quick else 150)
    torch.manual_seed(1)
    fresh = DigitsCNN(width=8)
    histograms, scalars = tb_histograms(logdir), tb_scalars(logdir)
    step, first_in = histograms[f"batchnorm/{LAYER}/input"][0]
    _, first_out = histograms[f"batchnorm/{LAYER}/output"][0]
    (in_mean, in_std), (out_mean, out_std) = moments(first_in), moments(first_out)
    print(
        f"{LAYER} at step {step}: input mean={in_mean:.4f} std={in_std:.4f}; "
        f"output mean={out_mean:.4f} std={out_std:.4f}"
    )
    images = torch.stack([image for image, _ in data.val_set])
    modes = {
        "train mode (batch statistics)": layer_outputs(model, images, train_mode=True),
        f"eval mode, after {len(scalars[f'batchnorm/{LAYER}/mean_drift'])} logged steps": layer_outputs(
            model, images, train_mode=False
        ),
        "eval mode, fresh layer (mean 0, var 1)": layer_outputs(fresh, images, train_mode=False),
    }
    stats = {label: channel_stats(output) for label, output in modes.items()}
    print(
        "validation output per channel, |mean| / std: "
        + "; ".join(f"{label}: {mean:.4f} / {std:.4f}" for label, (mean, std) in stats.items())
    )
    print(f"wrote {plot(histograms, scalars, modes, args.out)}")
    return stats


if __name__ == "__main__":
    main()
