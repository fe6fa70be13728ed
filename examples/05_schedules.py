"""Learning-rate schedules compared: step, multistep, exponential, cosine, warmup+cosine, cyclic, one-cycle,
inverse-sqrt, sequential (cosine, then step), warmup-stable-decay, cosine with warm restarts, plateau driven by a
recorded metric, and per-group schedules.

Each schedule is the Hydra config ``lightning-optim-schedule scheduler=<name>`` composes (the main job: digits CNN,
Nesterov SGD at lr 0.1, 23 optimizer steps per epoch, 5 epochs = 115 steps) and its lr per optimizer step comes from
the same function the command draws with (``lightning_optim.cli.schedule.step_learning_rates``). Without
``--quick`` the script also runs the command itself once (``scheduler=sequential``) and keeps its picture.

* **plateau** acts on validation results, so it is driven by a recorded ``val/loss`` sequence (one value per
  epoch, written below) through ``lightning_optim.schedule.lr_schedulers.step_plateau``, as the mixin does after each
  validation run: patience 2, factor 0.5.
* **per group, one rule**: ``param_groups=[{name: head, params: ^head, lr_scale: 0.1}]`` with warmup+cosine: every
  group follows the same shape from its own base lr.
* **per group, own rules**: torch's ``LambdaLR`` with one function per group (warmup-then-constant for the
  features, exponential decay for the head), on the optimizer ``lightning_optim.build_optimizer`` builds. The
  package's own schedules are picklable dataclasses, so a lambda per group is plain torch here.

Run::

    python examples/05_schedules.py --out docs/images

Writes ``example_05_schedules.png`` (and ``example_05_schedule_cli.png`` without ``--quick``); prints one line per
schedule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from _common import parse_args, run_app, save
from hydra import compose, initialize_config_module
from matplotlib.figure import Figure

from lightning_optim import build_optimizer, build_scheduler
from lightning_optim.cli.schedule import step_learning_rates
from lightning_optim.demos import DigitsCNN
from lightning_optim.schedule.lr_schedulers import step_plateau

SCHEDULES: dict[str, list[str]] = {
    "step": ["scheduler=step"],
    "multistep": ["scheduler=multistep"],
    "exponential": ["scheduler=exponential"],
    "cosine": ["scheduler=cosine"],
    "warmup_cosine": ["scheduler=warmup_cosine"],
    "cyclic": ["scheduler=cyclic"],
    "onecycle": ["scheduler=onecycle"],
    "inverse_sqrt": ["scheduler=inverse_sqrt"],
    "sequential": ["scheduler=sequential"],
    "wsd": ["scheduler=wsd"],
    "cosine_restarts": ["scheduler=cosine_restarts"],
    "per group (lr_scale)": ["scheduler=warmup_cosine", "param_groups=[{name:head,params:'^head',lr_scale:0.1}]"],
}
"""Title -> the overrides of ``lightning-optim-schedule``."""

RECORDED_VAL_LOSS = [
    1.10,
    0.62,
    0.45,
    0.40,
    0.39,
    0.395,
    0.392,
    0.37,
    0.372,
    0.375,
    0.371,
    0.373,
    0.372,
    0.374,
    0.371,
    0.373,
]
"""A validation loss per epoch, as a run records it: improves, then plateaus (fixed, so the picture is too)."""
STEPS_PER_EPOCH = 23


def schedule_lrs(overrides: list[str]) -> dict[str, list[float]]:
    """Every group's lr per optimizer step of the config ``lightning-optim-schedule <overrides>`` composes."""
    with initialize_config_module(version_base="1.3", config_module="lightning_optim.conf"):
        cfg = compose(config_name="schedule", overrides=overrides)
    preview, _ = step_learning_rates(cfg)
    # A run of fewer steps than PREVIEW_POINTS: the preview holds every step (preview.steps is 0, 1, 2, ...).
    return preview.lrs


def plateau_lrs(recorded: Sequence[float]) -> tuple[list[float], list[int]]:
    """The lr per step of ``plateau`` fed one recorded ``val/loss`` per epoch; and the epochs after which it cut."""
    optimizer = build_optimizer(DigitsCNN(), {"name": "sgd", "lr": 0.1, "momentum": 0.9})
    spec = {"name": "plateau", "monitor": "val/loss", "patience": 2, "factor": 0.5}
    built = build_scheduler(optimizer, spec, total_steps=len(recorded) * STEPS_PER_EPOCH)
    lrs, cuts = [], []
    for epoch, value in enumerate(recorded):
        for _ in range(STEPS_PER_EPOCH):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            built.advance()
        before = optimizer.param_groups[0]["lr"]
        step_plateau(built.scheduler, {"val/loss": torch.tensor(value)})
        if optimizer.param_groups[0]["lr"] < before:
            cuts.append(epoch)
    return lrs, cuts


def lambda_lrs(total_steps: int) -> dict[str, list[float]]:
    """torch's LambdaLR with its own function per parameter group (features: warmup 10 then constant; head: decay)."""
    rules = [{"name": "head", "params": r"^head\.", "lr_scale": 0.5}]
    optimizer = build_optimizer(DigitsCNN(), {"name": "sgd", "lr": 0.1, "momentum": 0.9}, rules)
    per_group = {"head": lambda step: 0.97**step, "default": lambda step: min(1.0, (step + 1) / 10)}
    names = [group["name"] for group in optimizer.param_groups]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [per_group[name] for name in names])
    lrs: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(total_steps):
        for name, group in zip(names, optimizer.param_groups, strict=True):
            lrs[name].append(group["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def plot(panels: dict[str, dict[str, list[float]]], cuts: list[int], out: Path) -> Path:
    rows = math.ceil(len(panels) / 4)
    figure = Figure(figsize=(16, 3.3 * rows))
    axes = figure.subplots(rows, 4).ravel()
    for ax in axes[len(panels) :]:
        ax.set_axis_off()
    for ax, (title, lrs) in zip(axes, panels.items(), strict=False):
        for name, values in lrs.items():
            ax.plot(values, label=name)
        ax.set(title=title, xlabel="optimizer step", ylabel="lr")
        ax.grid(alpha=0.3)
        if len(lrs) > 1:
            ax.legend(fontsize=8, title="group", title_fontsize=8)
    plateau_ax = axes[list(panels).index("plateau (recorded val/loss)")]
    metric_ax = plateau_ax.twinx()
    epochs_end = (np.arange(len(RECORDED_VAL_LOSS)) + 1) * STEPS_PER_EPOCH
    metric_ax.plot(epochs_end, RECORDED_VAL_LOSS, "o:", color="C3", markersize=3, label="val/loss")
    metric_ax.set_ylabel("recorded val/loss", color="C3")
    for epoch in cuts:
        plateau_ax.axvline((epoch + 1) * STEPS_PER_EPOCH, color="C3", alpha=0.3)
    return save(figure, out, "example_05_schedules.png")


def summary(values: list[float]) -> str:
    peak = int(np.argmax(values))
    return f"lr[0]={values[0]:.4g} peak={values[peak]:.4g}@{peak} lr[{len(values) - 1}]={values[-1]:.4g}"


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, list[float]]]:
    args = parse_args(__doc__, argv)
    panels = {title: schedule_lrs(overrides) for title, overrides in SCHEDULES.items()}
    for title, lrs in panels.items():
        print(f"{title}: " + "; ".join(f"{group} {summary(values)}" for group, values in lrs.items()))
    plateau, cuts = plateau_lrs(RECORDED_VAL_LOSS)
    panels["plateau (recorded val/loss)"] = {"default": plateau}
    lrs_after_cuts = [plateau[(epoch + 1) * STEPS_PER_EPOCH] for epoch in cuts]
    print(f"plateau: cut after validation runs (epochs) {cuts}, lr then {[f'{lr:.4g}' for lr in lrs_after_cuts]}")
    lambdas = lambda_lrs(len(panels["step"]["default"]))
    panels["LambdaLR, a rule per group"] = lambdas
    print("LambdaLR per group: " + "; ".join(f"{group} {summary(values)}" for group, values in lambdas.items()))
    print(f"wrote {plot(panels, cuts, args.out)}")
    if not args.quick:
        cli_png = (args.out / "example_05_schedule_cli.png").resolve()
        run_app(
            "lightning_optim.cli.schedule",
            "scheduler=sequential",
            f"out={cli_png}",
            f"hydra.run.dir={args.runs / '05_schedule_cli'}",
        )
        print(f"wrote {cli_png} (lightning-optim-schedule scheduler=sequential)")
    return panels


if __name__ == "__main__":
    main()
