"""Gradient clipping on a real run whose gradients spike: the norm before and after clipping, with the threshold.

An LSTM (the package's ``SequenceLSTM`` demo) learns the adding problem (sequences of 32 steps whose label depends
on two far-apart values) with Adam at lr 0.01 and ``Trainer(gradient_clip_val=0.5)``. Most steps have a gradient
norm around 0.1, but now and then one jumps one or two orders of magnitude: the long-range dependencies of a
recurrent net. ``GradNormMonitor`` logs, at every step, the norm clipping itself computed (``grad_norm/total``),
the norm after clipping (``grad_norm/clipped``), the threshold and the share of steps that clipped; the script
reads them back from the TensorBoard event files.

Run::

    python examples/06_gradient_clipping.py --out docs/images

Writes ``example_06_gradient_clipping.png`` and prints the largest norm before and after clipping, the threshold
and how often clipping fired.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
from _common import QUIET_TRAINER, parse_args, quiet, save, tb_scalars
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure

from lightning_optim.callbacks import GradNormMonitor
from lightning_optim.demos import SequenceDataModule, SequenceLSTM

THRESHOLD = 0.5


def train(runs: Path, epochs: int, num_samples: int) -> Path:
    """Fit the LSTM with clipping and the monitor; returns the TensorBoard log directory."""
    L.seed_everything(0, verbose=False)
    model = SequenceLSTM(hidden_size=32, optim_config={"optimizer": {"name": "adam", "lr": 0.01}})
    data = SequenceDataModule(num_samples=num_samples, num_val_samples=256, seq_len=32, batch_size=64)
    shutil.rmtree(runs / "06_gradient_clipping", ignore_errors=True)
    logger = TensorBoardLogger(runs, name="06_gradient_clipping", default_hp_metric=False)
    trainer = L.Trainer(
        max_epochs=epochs,
        gradient_clip_val=THRESHOLD,
        log_every_n_steps=1,
        logger=logger,
        callbacks=[GradNormMonitor()],
        enable_checkpointing=False,
        **QUIET_TRAINER,
    )
    trainer.fit(model, data)
    return Path(logger.log_dir)


def plot(logged: dict[str, list[tuple[int, float]]], out: Path) -> Path:
    figure = Figure(figsize=(13, 4.8))
    norm_ax, loss_ax = figure.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    steps, before = np.array(logged["grad_norm/total"]).T
    _, after = np.array(logged["grad_norm/clipped"]).T
    norm_ax.semilogy(steps, before, color="C3", linewidth=1, label="grad_norm/total (before clipping)")
    norm_ax.semilogy(steps, after, color="C0", linewidth=1, label="grad_norm/clipped (after clipping)")
    norm_ax.axhline(THRESHOLD, color="black", linestyle="--", label=f"grad_norm/threshold = {THRESHOLD}")
    clipped = before > after
    norm_ax.plot(steps[clipped], before[clipped], "v", color="C3", markersize=5, label="clipped steps")
    norm_ax.set(xlabel="optimizer step", ylabel="gradient norm (log)", title="Gradient norm before and after clipping")
    norm_ax.legend(fontsize=8)
    loss_steps, loss = np.array(logged["train/loss"]).T
    loss_ax.plot(loss_steps, loss, color="C2", linewidth=1)
    loss_ax.set(xlabel="optimizer step", ylabel="train/loss", title="Training loss")
    for ax in (norm_ax, loss_ax):
        ax.grid(alpha=0.3)
    return save(figure, out, "example_06_gradient_clipping.png")


def main(argv: Sequence[str] | None = None) -> dict[str, list[tuple[int, float]]]:
    args = parse_args(__doc__, argv)
    quiet()
    epochs, num_samples = (2, 512) if args.quick else (6, 2048)
    logged = tb_scalars(train(args.runs, epochs, num_samples))
    before = np.array([v for _, v in logged["grad_norm/total"]])
    after = np.array([v for _, v in logged["grad_norm/clipped"]])
    threshold = logged["grad_norm/threshold"][-1][1]
    fraction = np.mean([v for _, v in logged["grad_norm/clip_fraction"]])
    print(
        f"steps={len(before)} threshold={threshold:.3f} max pre-clip norm={before.max():.4f} "
        f"max post-clip norm={after.max():.4f} median pre-clip norm={np.median(before):.4f} "
        f"clip fraction={fraction:.4f}"
    )
    print(f"wrote {plot(logged, args.out)}")
    return logged


if __name__ == "__main__":
    main()
