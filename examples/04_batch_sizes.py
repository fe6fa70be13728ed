"""Batch vs stochastic vs mini-batch gradient descent on y = 0.3x² + noise, as a Hydra multirun of the train app.

One ``lightning-optim-train -m`` sweep over ``data.batch_size`` (``null`` = the whole training set, i.e. batch
gradient descent; 1 = stochastic; 128 = mini-batch) trains the package's ``QuadraticMLP`` demo with plain SGD at the
same lr and the same number of optimizer steps, logging every step to TensorBoard. The loss curves are read back
from the event files (``train/loss`` per step). Full batch descends smoothly, batch size 1 zig-zags, 128 sits in
between; per sample seen, the small batches get much further.

The command the script runs (``--quick`` shortens it)::

    python -m lightning_optim.cli.train -m model=quadratic_mlp data=quadratic metric=val/loss \\
        optimizer=sgd optimizer.lr=0.05 optimizer.momentum=0 optimizer.nesterov=false scheduler=none \\
        trainer.gradient_clip_val=null +trainer.max_steps=400 trainer.max_epochs=-1 trainer.log_every_n_steps=1 \\
        ~callbacks.model_checkpoint ~callbacks.batchnorm_monitor data.batch_size=null,1,128

Run::

    python examples/04_batch_sizes.py --out docs/images

Writes ``example_04_batch_sizes.png`` and prints one line per batch size (final validation loss and the
step-to-step jitter of the training loss over the second half of the run).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from _common import QUIET_OVERRIDES, parse_args, run_app, save, tb_scalars
from matplotlib.figure import Figure

BATCH_SIZES = {"null": "batch (all 512)", "1": "stochastic (1)", "128": "mini-batch (128)"}
NUM_SAMPLES = 512


def sweep(runs: Path, steps: int) -> Path:
    """Run the multirun; returns the sweep directory (one numbered job folder per batch size, in order)."""
    sweep_dir = runs / "04_batch_sizes"
    shutil.rmtree(sweep_dir, ignore_errors=True)  # the event files read back must be this run's only
    run_app(
        "lightning_optim.cli.train",
        "-m",
        "model=quadratic_mlp",
        "data=quadratic",
        f"data.num_samples={NUM_SAMPLES}",
        "metric=val/loss",
        "optimizer=sgd",
        "optimizer.lr=0.05",
        "optimizer.momentum=0",
        "optimizer.nesterov=false",
        "scheduler=none",
        "trainer.gradient_clip_val=null",
        f"+trainer.max_steps={steps}",
        "trainer.max_epochs=-1",
        "trainer.log_every_n_steps=1",
        # Validate once, after training (the app's final trainer.validate), not after each of the many epochs.
        "+trainer.check_val_every_n_epoch=100000",
        "+trainer.num_sanity_val_steps=0",
        "~callbacks.model_checkpoint",
        "~callbacks.batchnorm_monitor",
        *QUIET_OVERRIDES,
        f"hydra.sweep.dir={sweep_dir}",
        "data.batch_size=" + ",".join(BATCH_SIZES),
    )
    return sweep_dir


def jitter(losses: np.ndarray) -> float:
    """Mean |loss_{t+1} - loss_t| over the second half of the run: how much the training loss zig-zags."""
    half = losses[len(losses) // 2 :]
    return float(np.abs(np.diff(half)).mean())


def plot(curves: dict[str, np.ndarray], batch_sizes: dict[str, int], out: Path) -> Path:
    figure = Figure(figsize=(13, 4.8))
    step_ax, sample_ax = figure.subplots(1, 2)
    colors = dict(zip(curves, ["C0", "C1", "C2"], strict=False))
    # The noisy single-sample curve first, so the others stay visible on top of it.
    for label in sorted(curves, key=lambda name: batch_sizes[name]):
        losses, color = curves[label], colors[label]
        steps = np.arange(1, len(losses) + 1)
        alpha = 0.35 if batch_sizes[label] == 1 else 0.9
        step_ax.plot(steps, losses, label=label, linewidth=1, alpha=alpha, color=color)
        epochs = steps * batch_sizes[label] / NUM_SAMPLES
        if batch_sizes[label] == 1:
            window = 50
            smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
            step_ax.plot(steps[window - 1 :], smooth, color=color, linewidth=2, label=f"{label}, mean of {window}")
            sample_ax.semilogy(
                epochs[window - 1 :], smooth, color=color, linewidth=2, label=f"{label}, mean of {window}"
            )
        else:
            sample_ax.semilogy(epochs, losses, label=label, linewidth=1, color=color)
    step_ax.set(
        xlabel="optimizer step", ylabel="train/loss (MSE)", title="Loss per optimizer step (same lr)", ylim=(0, 2.0)
    )
    sample_ax.set(
        xlabel="epochs (samples seen / 512)",
        ylabel="train/loss (MSE, log)",
        title="Loss per sample seen (small batches: more steps per epoch)",
    )
    sample_ax.set_xscale("log")
    for ax in (step_ax, sample_ax):
        ax.axhline(0.09, color="0.4", linestyle=":", label="noise floor (0.3²)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save(figure, out, "example_04_batch_sizes.png")


def main(argv: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    args = parse_args(__doc__, argv)
    steps = 60 if args.quick else 400
    sweep_dir = sweep(args.runs, steps)
    curves, sizes = {}, {}
    for job, (value, label) in enumerate(BATCH_SIZES.items()):
        logged = tb_scalars(sweep_dir / str(job) / "tensorboard")
        losses = np.array([v for _, v in logged["train/loss"]])
        curves[label] = losses
        sizes[label] = NUM_SAMPLES if value == "null" else int(value)
        val_loss = logged["val/loss"][-1][1]
        print(
            f"batch_size={value} ({label}): {len(losses)} steps, final val/loss = {val_loss:.4f}, "
            f"train-loss jitter = {jitter(losses):.4f}"
        )
    print(f"wrote {plot(curves, sizes, args.out)}")
    return curves


if __name__ == "__main__":
    main()
