"""Saving and restoring optimizer and scheduler state: stop a run, resume it from its checkpoint, and the learning
rate goes on exactly as in a run that was never interrupted.

The package's ``DigitsCNN`` trains with Nesterov SGD and warmup + cosine over 4 epochs (``total_steps: null``,
i.e. ``trainer.estimated_stepping_batches``). Three runs, each logging the lr of every step with ``LRMonitor`` to
TensorBoard:

1. uninterrupted: 4 epochs;
2. the same Trainer, stopped after epoch 2 (``trainer.should_stop``, as a preempted job), with ``ModelCheckpoint``
   writing ``last.ckpt``;
3. resumed: ``trainer.fit(model, ckpt_path=last.ckpt)`` on a new model and Trainer, to the end.

The optimizer state (momentum buffers) and the scheduler's step count come back from the checkpoint, so the lr
curves of 2 + 3 and of 1 are the same numbers.

Run::

    python examples/10_resume.py --out docs/images

Writes ``example_10_resume.png`` and prints where the run stopped and the largest difference between the curves.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
from _common import QUIET_TRAINER, parse_args, quiet, save, tb_scalars
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure

from lightning_optim.callbacks import LRMonitor
from lightning_optim.demos import DigitsCNN, DigitsDataModule

OPTIM_CONFIG = {
    "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True},
    "scheduler": {"name": "warmup_cosine", "warmup_ratio": 0.2, "total_steps": None},
}
EPOCHS = 4
LR_KEY = "lr-SGD/default"


class StopAfterEpoch(L.Callback):
    """Stop training at the end of epoch ``epoch`` (0-based), like a job whose time ran out."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


def fit(runs: Path, name: str, batches: int, stop_after: int | None = None, ckpt_path: Path | None = None) -> Path:
    """One run of ``EPOCHS`` epochs; returns its TensorBoard log dir (checkpoints go beside it)."""
    L.seed_everything(0, verbose=False)
    logger = TensorBoardLogger(runs / "10_resume", name=name, version=0, default_hp_metric=False)
    callbacks: list[L.Callback] = [
        LRMonitor(),
        ModelCheckpoint(dirpath=runs / "10_resume" / "checkpoints", save_last=True),
    ]
    if stop_after is not None:
        callbacks.append(StopAfterEpoch(stop_after))
    trainer = L.Trainer(
        max_epochs=EPOCHS,
        limit_train_batches=batches,
        limit_val_batches=2,
        log_every_n_steps=1,
        logger=logger,
        callbacks=callbacks,
        **QUIET_TRAINER,
    )
    trainer.fit(DigitsCNN(width=8, optim_config=OPTIM_CONFIG), DigitsDataModule(batch_size=64), ckpt_path=ckpt_path)
    return Path(logger.log_dir)


def plot(curves: dict[str, list[tuple[int, float]]], stop_step: int, out: Path) -> Path:
    figure = Figure(figsize=(9, 4.5))
    ax = figure.subplots()
    styles = {"uninterrupted": ("-", 5, 0.35), "stopped": ("-", 1.5, 1.0), "resumed": ("--", 1.5, 1.0)}
    for name, points in curves.items():
        steps, values = np.array(points).T
        style, width, alpha = styles[name]
        ax.plot(steps, values, style, linewidth=width, alpha=alpha, label=name)
    ax.axvline(stop_step, color="0.4", linestyle=":", label=f"stop / resume at step {stop_step}")
    ax.set(xlabel="optimizer step", ylabel=LR_KEY, title="Warmup + cosine across a stop and resume")
    ax.grid(alpha=0.3)
    ax.legend()
    return save(figure, out, "example_10_resume.png")


def main(argv: Sequence[str] | None = None) -> dict[str, list[tuple[int, float]]]:
    args = parse_args(__doc__, argv)
    quiet()
    batches = 4 if args.quick else 23
    shutil.rmtree(args.runs / "10_resume", ignore_errors=True)
    full = fit(args.runs, "uninterrupted", batches)
    shutil.rmtree(args.runs / "10_resume" / "checkpoints")
    stopped = fit(args.runs, "stopped", batches, stop_after=EPOCHS // 2 - 1)
    last = args.runs / "10_resume" / "checkpoints" / "last.ckpt"
    resumed = fit(args.runs, "resumed", batches, ckpt_path=last)
    curves = {
        name: tb_scalars(logdir)[LR_KEY]
        for name, logdir in (("uninterrupted", full), ("stopped", stopped), ("resumed", resumed))
    }
    stop_step = curves["resumed"][0][0]
    joined = dict(curves["stopped"]) | dict(curves["resumed"])
    reference = dict(curves["uninterrupted"])
    difference = max(abs(joined[step] - reference[step]) for step in reference)
    print(
        f"stopped after step {curves['stopped'][-1][0]}, resumed from step {stop_step}; "
        f"{len(joined)} of {len(reference)} steps logged; max |lr resumed - lr uninterrupted| = {difference:.3e}"
    )
    print(f"wrote {plot(curves, stop_step, args.out)}")
    return curves


if __name__ == "__main__":
    main()
