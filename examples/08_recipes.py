"""The three recipes as Hydra experiments, with their TensorBoard runs: CNN, RNN, Transformer.

* ``experiment=cnn``: BatchNorm CNN on scikit-learn's digits, Nesterov momentum SGD, cosine decay, no weight decay on
  BatchNorm and biases.
* ``experiment=rnn``: LSTM on the adding problem (a generated sequence task with long-range dependencies), Adam,
  step decay, gradient clipping at 1.0; run a second time with ``trainer.gradient_clip_val=null`` to compare.
* ``experiment=transformer``: a tiny Transformer encoder on the adding problem, AdamW (0.9, 0.98), linear warmup
  then cosine, clipping.

The commands the script runs (``--quick`` adds ``trainer.max_epochs=1`` and fewer batches)::

    python -m lightning_optim.cli.train -m experiment=cnn,rnn,transformer +trainer.limit_train_batches=16
    python -m lightning_optim.cli.train experiment=rnn trainer.gradient_clip_val=null +trainer.limit_train_batches=16

Each run's TensorBoard logs (learning rate, gradient norm before/after clipping, BatchNorm health: the package's
dashboard) are under ``<runs>/08_recipes``. The script prints each run's validation accuracy and the largest
gradient norm it saw, and draws validation accuracy, training loss and gradient norms per run.

Run::

    python examples/08_recipes.py --out docs/images
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from _common import QUIET_OVERRIDES, parse_args, run_app, save, tb_scalars
from matplotlib.figure import Figure

EXPERIMENTS = ("cnn", "rnn", "transformer")
ACCURACY = re.compile(r"^val/acc = ([0-9.]+)$", re.MULTILINE)


def size_overrides(quick: bool) -> list[str]:
    return ["trainer.max_epochs=1", "+trainer.limit_train_batches=4"] if quick else ["+trainer.limit_train_batches=16"]


def run(runs: Path, quick: bool) -> dict[str, tuple[float, Path]]:
    """Run the sweep and the unclipped RNN; returns run name -> (validation accuracy, TensorBoard dir)."""
    base = runs / "08_recipes"
    shutil.rmtree(base, ignore_errors=True)
    common = [*size_overrides(quick), "trainer.log_every_n_steps=2", *QUIET_OVERRIDES]
    stdout = run_app(
        "lightning_optim.cli.train",
        "-m",
        "experiment=" + ",".join(EXPERIMENTS),
        *common,
        f"hydra.sweep.dir={base / 'sweep'}",
    )
    results = {
        name: (float(value), base / "sweep" / str(job) / "tensorboard")
        for job, (name, value) in enumerate(zip(EXPERIMENTS, ACCURACY.findall(stdout), strict=True))
    }
    stdout = run_app(
        "lightning_optim.cli.train",
        "experiment=rnn",
        "trainer.gradient_clip_val=null",
        *common,
        f"hydra.run.dir={base / 'rnn_no_clip'}",
    )
    results["rnn, no clipping"] = (float(ACCURACY.findall(stdout)[0]), base / "rnn_no_clip" / "tensorboard")
    return results


def plot(logs: dict[str, dict[str, list[tuple[int, float]]]], out: Path) -> Path:
    figure = Figure(figsize=(15, 4.6))
    acc_ax, loss_ax, norm_ax = figure.subplots(1, 3)
    for (name, logged), color in zip(logs.items(), ["C0", "C1", "C2", "C3"], strict=True):
        style = "--" if "no clipping" in name else "-"
        for ax, key in ((acc_ax, "val/acc"), (loss_ax, "train/loss"), (norm_ax, "grad_norm/total")):
            steps, values = np.array(logged[key]).T
            ax.plot(steps, values, style, color=color, label=name, marker="o" if key == "val/acc" else None)
    norm_ax.set_yscale("log")
    acc_ax.set(xlabel="optimizer step", ylabel="val/acc", title="Validation accuracy")
    loss_ax.set(xlabel="optimizer step", ylabel="train/loss", title="Training loss")
    norm_ax.set(xlabel="optimizer step", ylabel="grad_norm/total (log)", title="Gradient norm before clipping")
    for ax in (acc_ax, loss_ax, norm_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save(figure, out, "example_08_recipes.png")


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    args = parse_args(__doc__, argv)
    runs = run(args.runs, args.quick)
    logs = {name: tb_scalars(logdir) for name, (_, logdir) in runs.items()}
    for name, (accuracy, logdir) in runs.items():
        norms = [value for _, value in logs[name]["grad_norm/total"]]
        print(
            f"{name}: val/acc = {accuracy:.4f}, steps = {logs[name]['train/loss'][-1][0] + 1}, "
            f"max grad norm before clipping = {max(norms):.3f}, logs: {logdir}"
        )
    print(f"wrote {plot(logs, args.out)}")
    return {name: accuracy for name, (accuracy, _) in runs.items()}


if __name__ == "__main__":
    main()
