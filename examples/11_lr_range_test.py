"""The lr range test: Lightning's lr finder on the digits CNN with SGD and AdamW, and short runs at its suggestions.

Lightning's ``Tuner.lr_find`` trains the model for ``num_training`` optimizer steps, raising the lr exponentially
from 1e-8 to ``max_lr``, records the smoothed training loss at each, then restores the model. With ``OptimMixin``,
``model.lr`` is ``optim_config.optimizer.lr``: the search runs the configured optimizer, and Lightning's suggestion
lands in ``optim_config`` (and the hyperparameters). Lightning suggests the steepest slope of the loss against the lr
itself, which favours the small lrs of an exponential search (Lightning #21141); the package's suggestion
(``lightning_optim.stats.lr_suggestion.suggest_lr``, what ``lightning-optim-lr-find optimizer=adamw`` prints) takes the
steepest slope against log(lr), the axis the curve is drawn on.

Right panel: AdamW trained for a few epochs from the same initial weights over a small lr sweep and at both
suggestions: the log(lr) suggestion lands within a few points of the sweep's best, Lightning's well below it.

Run::

    python examples/11_lr_range_test.py --out docs/images

Writes ``example_11_lr_range_test.png`` and prints each optimizer's suggestions and the accuracy of each short run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from _common import QUIET_TRAINER, parse_args, quiet, save
from lightning.pytorch.tuner.tuning import Tuner
from matplotlib.figure import Figure

from lightning_optim.demos import DigitsCNN, DigitsDataModule
from lightning_optim.stats.lr_suggestion import suggest_lr

OPTIMIZERS: dict[str, dict[str, Any]] = {
    "sgd": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True},
    "adamw": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01},
}
MAX_LR = 10.0
SWEEP = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
"""The short AdamW runs' constant lrs, beside the two suggestions (``--quick``: every other one)."""


def model(optimizer: dict[str, Any], width: int) -> DigitsCNN:
    L.seed_everything(0, verbose=False)  # the same initial weights for every search and run
    return DigitsCNN(width=width, optim_config={"optimizer": optimizer, "scheduler": None})


def range_test(optimizer: dict[str, Any], width: int, steps: int, root: Path) -> dict[str, Any]:
    """Lightning's lr finder on the digits CNN; ``model.lr`` is set to its suggestion."""
    net = model(optimizer, width)
    trainer = L.Trainer(max_epochs=-1, max_steps=steps, logger=False, default_root_dir=root, **QUIET_TRAINER)
    finder = Tuner(trainer).lr_find(net, datamodule=DigitsDataModule(), num_training=steps, max_lr=MAX_LR)
    assert finder is not None
    suggestion = suggest_lr(finder.results["lr"], finder.results["loss"])
    assert suggestion is not None
    return {
        "lrs": np.array(finder.results["lr"]),
        "losses": np.array(finder.results["loss"]),
        "suggestion": suggestion.lr,
        "lightning": finder.suggestion(),
        "configured": net.optim_config["optimizer"]["lr"],
    }


def val_accuracy(optimizer: dict[str, Any], width: int, epochs: int, batches: int | None) -> float:
    """Validation accuracy after ``epochs`` epochs at a constant lr."""
    net = model(optimizer, width)
    trainer = L.Trainer(
        max_epochs=epochs, limit_train_batches=batches, logger=False, enable_checkpointing=False, **QUIET_TRAINER
    )
    trainer.fit(net, DigitsDataModule())
    return float(trainer.callback_metrics["val/acc"])


def plot(searches: dict[str, dict[str, Any]], runs: dict[float, float], out: Path) -> Path:
    figure = Figure(figsize=(13, 4.8))
    curve_ax, run_ax = figure.subplots(1, 2)
    for (name, search), color in zip(searches.items(), ("C0", "C1"), strict=False):
        curve_ax.plot(search["lrs"], search["losses"], color=color, label=name)
        for key, marker, label in (("suggestion", "o", "log(lr) suggestion"), ("lightning", "X", "Lightning's")):
            at = int(np.flatnonzero(search["lrs"] == search[key])[0])
            curve_ax.plot(
                search[key],
                search["losses"][at],
                marker,
                color=color,
                markeredgecolor="k",
                markersize=9,
                label=f"{name} {label}: {search[key]:.3g}",
            )
    curve_ax.set_xscale("log")
    # The last steps, where the loss diverges, would squash the rest of the curve.
    typical = np.nanmedian(np.concatenate([search["losses"] for search in searches.values()]))
    curve_ax.set_ylim(0, 2 * typical)
    curve_ax.set(
        xlabel="learning rate",
        ylabel="training loss (smoothed)",
        title=f"lr range test on the digits CNN (up to {max(len(s['lrs']) for s in searches.values())} steps)",
    )
    lrs = sorted(runs)
    run_ax.semilogx(lrs, [runs[lr] for lr in lrs], "o-", color="C1", label="AdamW, constant lr")
    adamw = searches["adamw"]
    run_ax.axvline(
        adamw["suggestion"], color="C1", linestyle=":", label=f"log(lr) suggestion {adamw['suggestion']:.3g}"
    )
    run_ax.axvline(adamw["lightning"], color="C7", linestyle="--", label=f"Lightning's {adamw['lightning']:.3g}")
    run_ax.set(
        xlabel="AdamW learning rate (constant)", ylabel="val/acc", title="Short AdamW runs: sweep and suggestions"
    )
    run_ax.set_ylim(0, 1.02)
    for ax in (curve_ax, run_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save(figure, out, "example_11_lr_range_test.png")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(__doc__, argv)
    quiet()
    width, steps, epochs, batches = (4, 20, 1, 4) if args.quick else (16, 100, 3, None)
    sweep = SWEEP[::2] if args.quick else SWEEP
    root = args.runs / "11_lr_range_test"
    searches = {name: range_test(optimizer, width, steps, root) for name, optimizer in OPTIMIZERS.items()}
    for name, search in searches.items():
        at = int(np.flatnonzero(search["lrs"] == search["suggestion"])[0])
        print(
            f"{name}: suggestion {search['suggestion']!r} (steepest descent against log(lr)), Lightning's "
            f"{search['lightning']!r}, optimizer.lr after lr_find {search['configured']!r}; smoothed loss there "
            f"{search['losses'][at]:.4f}; {len(search['lrs'])} lrs searched, {search['lrs'][0]:.3g} to "
            f"{search['lrs'][-1]:.3g}"
        )
    adamw = searches["adamw"]
    lrs = sorted({*sweep, adamw["suggestion"], adamw["lightning"]})
    runs = {lr: val_accuracy({**OPTIMIZERS["adamw"], "lr": lr}, width, epochs, batches) for lr in lrs}
    best = max(sweep, key=lambda lr: runs[lr])
    print(f"adamw, {epochs} epochs: " + ", ".join(f"lr {lr:.3g}: val/acc {runs[lr]:.4f}" for lr in lrs))
    print(
        f"adamw: suggestion lr {adamw['suggestion']:.3g} val/acc {runs[adamw['suggestion']]:.4f}; Lightning's lr "
        f"{adamw['lightning']:.3g} val/acc {runs[adamw['lightning']]:.4f}; best of the sweep lr {best:.3g} val/acc "
        f"{runs[best]:.4f}"
    )
    print(f"wrote {plot(searches, runs, args.out)}")
    return {"searches": searches, "runs": runs}


if __name__ == "__main__":
    main()
