"""Gradient clipping where it decides the run: an LSTM with and without ``gradient_clip_val``, three seeds each.

An LSTM (the package's ``SequenceLSTM`` demo) learns the adding problem (sequences of 30 steps whose label depends
on two far-apart values) with SGD, momentum 0.9, at lr 3 with a cosine decay. Its recurrent weights start 3x torch's
scale and its forget gates with a bias of +1, so the backward pass through time amplifies: the gradient norm mostly
sits near its median but now and then spikes 5-16x above it (Pascanu et al. 2013's cliffs). Without clipping each
spike moves the weights by lr times that norm, amplified by momentum: the loss jumps far above chance (0.69; up to
23 and 115) and the net never leaves chance. Clipped at 0.1, every step moves the weights by at most lr x 0.1, and
the same net, seed and data learn the task.

``GradNormMonitor`` logs, at every step, the norm clipping itself computed (``grad_norm/total``), the norm after
clipping (``grad_norm/clipped``) and the threshold; the script reads them back from the TensorBoard event files.

Run::

    python examples/06_gradient_clipping.py --out docs/images

Writes ``example_06_gradient_clipping.png`` and prints, per seed and with and without clipping, the final val/acc,
the largest and median gradient norm, their ratio and the largest training loss, then the mean val/acc of each.
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

THRESHOLD = 0.1
OPTIM_CONFIG = {
    "optimizer": {"name": "sgd", "lr": 3.0, "momentum": 0.9},
    "scheduler": {"name": "cosine", "total_steps": None},
}
SEQ_LEN = 30
SEEDS = (0, 1, 2)
CHANCE = 0.69
"""Cross-entropy of a two-class guess: ln 2."""


def train(runs: Path, name: str, seed: int, clip: float | None, epochs: int, num_samples: int) -> Path:
    """Fit the LSTM with the monitor, clipped at ``clip`` (``None``: not clipped); returns the log directory."""
    L.seed_everything(seed, verbose=False)
    model = SequenceLSTM(hidden_size=32, recurrent_init_scale=3.0, forget_bias=1.0, optim_config=OPTIM_CONFIG)
    data = SequenceDataModule(num_samples=num_samples, num_val_samples=512, seq_len=SEQ_LEN, batch_size=64)
    shutil.rmtree(runs / "06_gradient_clipping" / name, ignore_errors=True)
    logger = TensorBoardLogger(runs / "06_gradient_clipping", name=name, default_hp_metric=False)
    trainer = L.Trainer(
        max_epochs=epochs,
        gradient_clip_val=clip,
        log_every_n_steps=1,
        logger=logger,
        callbacks=[GradNormMonitor()],
        enable_checkpointing=False,
        **QUIET_TRAINER,
    )
    trainer.fit(model, data)
    return Path(logger.log_dir)


def series(logged: dict[str, list[tuple[int, float]]], key: str) -> tuple[np.ndarray, np.ndarray]:
    steps, values = np.array(logged[key]).T
    return steps, values


def plot(runs: dict[tuple[str, int], dict[str, list[tuple[int, float]]]], out: Path) -> Path:
    figure = Figure(figsize=(15, 4.6))
    norm_ax, loss_ax, acc_ax = figure.subplots(1, 3, gridspec_kw={"width_ratios": [3, 2, 2]})
    seed = SEEDS[0]
    unclipped, clipped = runs["unclipped", seed], runs["clipped", seed]
    steps, norms = series(unclipped, "grad_norm/total")
    norm_ax.semilogy(steps, norms, color="C3", linewidth=0.8, label="no clipping")
    norm_ax.axhline(np.median(norms), color="C3", linestyle=":", label="no clipping: median")
    norm_ax.semilogy(*series(clipped, "grad_norm/total"), color="C0", linewidth=0.8, label="clipped: before")
    norm_ax.semilogy(*series(clipped, "grad_norm/clipped"), color="C2", linewidth=0.8, label="clipped: after")
    norm_ax.axhline(THRESHOLD, color="black", linestyle="--", label=f"threshold {THRESHOLD}")
    norm_ax.set(xlabel="optimizer step", ylabel="gradient norm (log)", title=f"Gradient norm (seed {seed})")
    window = 20
    for (kind, run_seed), logged in runs.items():
        color = "C3" if kind == "unclipped" else "C0"
        label = ("no clipping" if kind == "unclipped" else f"clipped at {THRESHOLD}") if run_seed == seed else None
        steps, loss = series(logged, "train/loss")
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        loss_ax.plot(steps[window - 1 :], smooth, color=color, linewidth=1, label=label)
        acc_ax.plot(*series(logged, "val/acc"), color=color, marker="o", markersize=3, label=label)
    loss_ax.axhline(CHANCE, color="black", linestyle=":", label="chance (ln 2)")
    loss_ax.set(xlabel="optimizer step", ylabel=f"train/loss ({window}-step mean)", title="Training loss, all seeds")
    acc_ax.axhline(0.5, color="black", linestyle=":", label="chance")
    acc_ax.set(xlabel="optimizer step", ylabel="val/acc", title="Validation accuracy, all seeds", ylim=(0.3, 1.0))
    for ax in (norm_ax, loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save(figure, out, "example_06_gradient_clipping.png")


def main(argv: Sequence[str] | None = None) -> dict[tuple[str, int], dict[str, list[tuple[int, float]]]]:
    args = parse_args(__doc__, argv)
    quiet()
    epochs, num_samples, seeds = (2, 1024, SEEDS[:1]) if args.quick else (40, 2048, SEEDS)
    runs = {}
    accuracy: dict[str, list[float]] = {"unclipped": [], "clipped": []}
    for seed in seeds:
        for kind, clip in (("unclipped", None), ("clipped", THRESHOLD)):
            logged = tb_scalars(train(args.runs, f"{kind}_seed{seed}", seed, clip, epochs, num_samples))
            runs[kind, seed] = logged
            norms = series(logged, "grad_norm/total")[1]
            after = series(logged, "grad_norm/clipped")[1]
            loss = series(logged, "train/loss")[1]
            accuracy[kind].append(logged["val/acc"][-1][1])
            print(
                f"seed={seed} {kind}: steps={len(norms)} final val/acc={accuracy[kind][-1]:.3f} "
                f"max grad norm={norms.max():.4f} median grad norm={np.median(norms):.4f} "
                f"max/median={norms.max() / np.median(norms):.1f} "
                f"max post-clip norm={after.max():.4f} max train/loss={loss.max():.3f} "
                f"last-20 train/loss={loss[-20:].mean():.3f}"
            )
    print(
        f"mean val/acc: clipped at {THRESHOLD} = {np.mean(accuracy['clipped']):.3f}, "
        f"unclipped = {np.mean(accuracy['unclipped']):.3f} (lr {OPTIM_CONFIG['optimizer']['lr']} with cosine decay, "
        f"seeds {seeds})"
    )
    print(f"wrote {plot(runs, args.out)}")
    return runs


if __name__ == "__main__":
    main()
