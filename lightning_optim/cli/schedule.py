"""``lightning-optim-schedule``: draw and tabulate every parameter group's learning rate over a run, without training.

Takes the same config and overrides as ``lightning-optim-train``, plus ``out=`` (the PNG's path) and ``branches=``
(cooldowns of a ``wsd`` run, drawn on the same picture). A closed-form schedule is evaluated only at the steps drawn,
so any run length previews in about a second; a stateful one (``cyclic``, ``onecycle``, ``plateau``, a
``_target_``) is stepped through, up to a million steps.

Examples (shell)::

    lightning-optim-schedule                                   # the main job's warmup + cosine
    lightning-optim-schedule scheduler=onecycle trainer.max_epochs=20 out=/tmp/onecycle.png
    lightning-optim-schedule experiment=transformer
    lightning-optim-schedule scheduler=wsd branches='[{decay_start_step: 40, total_steps: 60}]'
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from matplotlib.figure import Figure
from omegaconf import DictConfig, ListConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, DistributedSampler

from lightning_optim.cli.common import (
    CONFIG_PATH,
    apply_app_settings,
    compose_optim_config,
    count_optimizer_steps,
    instantiate_model,
)
from lightning_optim.config.preview import PREVIEW_POINTS, LearningRatePreview, sample_learning_rates
from lightning_optim.errors import OptimConfigError
from lightning_optim.optim.lr_scaling import LrScaling

__all__ = [
    "BranchPreview",
    "assumed_batch_size",
    "branch_learning_rates",
    "branch_specs",
    "branch_table",
    "group_table",
    "main",
    "plot",
    "step_learning_rates",
]


def batches_per_rank(cfg: DictConfig, datamodule: L.LightningDataModule) -> int:
    """Training batches each process sees: under DDP, Lightning's ``DistributedSampler`` splits the data by rank."""
    loader = datamodule.train_dataloader()
    devices, num_nodes = cfg.trainer.get("devices", 1), cfg.trainer.get("num_nodes", 1)
    world_size = devices * num_nodes if isinstance(devices, int) and "ddp" in str(cfg.trainer.get("strategy")) else 1
    if world_size == 1:
        return len(loader)
    sampler: DistributedSampler[Any] = DistributedSampler(
        loader.dataset, num_replicas=world_size, rank=0, shuffle=False
    )
    return len(DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler, drop_last=loader.drop_last))


def training_data(cfg: DictConfig) -> L.LightningDataModule:
    """The run's datamodule, set up for fitting (its train loader is what the previews count and scale by)."""
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    return datamodule


def assumed_batch_size(cfg: DictConfig, datamodule: L.LightningDataModule) -> int:
    """The effective batch size ``optimizer.lr_scaling`` is previewed at: ``cfg.batch_size`` when given, else the train
    loader's batch size x the DDP world size x ``trainer.accumulate_grad_batches`` (a ``BatchSizeFinder`` or
    ``GradientAccumulationScheduler`` in the run would change it; the preview cannot know that).

    Examples:
        >>> from types import SimpleNamespace
        >>> from omegaconf import OmegaConf
        >>> data = SimpleNamespace(train_dataloader=lambda: DataLoader(range(8), batch_size=4))
        >>> cfg = OmegaConf.create({"trainer": {"strategy": "ddp", "devices": 2, "accumulate_grad_batches": 3}})
        >>> assumed_batch_size(cfg, data), assumed_batch_size(OmegaConf.merge(cfg, {"batch_size": 64}), data)
        (24, 64)
    """
    if cfg.get("batch_size") is not None:
        return int(cfg.batch_size)
    devices, num_nodes = cfg.trainer.get("devices", 1), cfg.trainer.get("num_nodes", 1)
    world_size = devices * num_nodes if isinstance(devices, int) and "ddp" in str(cfg.trainer.get("strategy")) else 1
    batch_size = datamodule.train_dataloader().batch_size or 1
    return batch_size * world_size * (cfg.trainer.get("accumulate_grad_batches") or 1)


def step_learning_rates(
    cfg: DictConfig, first_steps: int = 0, optimizer: str | None = None, include: Iterable[int] = ()
) -> tuple[LearningRatePreview, dict]:
    """Every group's lr at the optimizer steps drawn of the run ``cfg`` describes, and the ``optim_config`` used.

    The first ``first_steps`` steps, those in ``include``, the peak and the last step are always among them
    (:func:`~lightning_optim.config.preview.sample_learning_rates`). An ``interval: epoch`` scheduler is previewed per
    epoch, and each epoch drawn by its first and last step. With several optimizers (``optimizers=gan``)
    ``optimizer`` names the one previewed; the run is counted in training batches, each scheduler stepped once per
    batch as manual optimization's ``training_step`` does. ``optimizer.lr_scaling`` is shown at
    :func:`assumed_batch_size`.
    """
    datamodule = training_data(cfg)
    total_steps, steps_per_epoch = count_optimizer_steps(cfg.trainer, batches_per_rank(cfg, datamodule))
    optim_config = compose_optim_config(cfg)
    model = instantiate_model(cfg.model, optim_config)
    scheduler = _section(optim_config, optimizer).get("scheduler")
    batch_size = assumed_batch_size(cfg, datamodule)
    shown = {*range(first_steps), *include}
    if scheduler is None or scheduler.get("interval", "step") == "step":
        preview = sample_learning_rates(
            model, optim_config, total_steps, shown, optimizer=optimizer, batch_size=batch_size
        )
        return preview, optim_config
    epochs = -(-total_steps // steps_per_epoch)
    first_epochs = {step // steps_per_epoch for step in shown if step < total_steps}
    per_epoch = sample_learning_rates(
        model, optim_config, epochs, first_epochs, optimizer=optimizer, batch_size=batch_size
    )
    return epochs_as_steps(per_epoch, steps_per_epoch, total_steps, shown), optim_config


def optimizer_names(optim_config: dict[str, Any]) -> list[str | None]:
    """The optimizers to preview: each name under ``optimizers``, or None for the single optimizer.

    Examples:
        >>> optimizer_names({"optimizer": {"name": "sgd"}}), optimizer_names({"optimizers": {"g": {}, "d": {}}})
        ([None], ['g', 'd'])
    """
    return list(optim_config["optimizers"]) if "optimizers" in optim_config else [None]


def _section(optim_config: dict[str, Any], optimizer: str | None) -> dict[str, Any]:
    return optim_config["optimizers"][optimizer] if optimizer is not None else optim_config


def epochs_as_steps(
    per_epoch: LearningRatePreview, steps_per_epoch: int, total_steps: int, include: Iterable[int] = ()
) -> LearningRatePreview:
    """A per-epoch preview as steps: each epoch previewed becomes its first and last step, and those in ``include``.

    Examples:
        >>> per_epoch = LearningRatePreview(3, [0, 2], {"default": [0.1, 0.01]})
        >>> epochs_as_steps(per_epoch, 4, 10, include=[1])
        LearningRatePreview(total_steps=10, steps=[0, 1, 3, 8, 9], lrs={'default': [0.1, 0.1, 0.1, 0.01, 0.01]})
    """
    include = set(include)
    steps: list[int] = []
    lrs: dict[str, list[float]] = {name: [] for name in per_epoch.lrs}
    for index, epoch in enumerate(per_epoch.steps):
        first, end = epoch * steps_per_epoch, min((epoch + 1) * steps_per_epoch, total_steps)
        for step in sorted({first, end - 1} | {step for step in include if first <= step < end}):
            steps.append(step)
            for name, values in per_epoch.lrs.items():
                lrs[name].append(values[index])
    return LearningRatePreview(total_steps, steps, lrs)


@dataclass(frozen=True)
class BranchPreview:
    """Every parameter group's lr over a cooldown branch of a run, drawn from the step it branches at.

    Attributes:
        start: The branch point ``s``: the step of the checkpoint the branch resumes from, its first step.
        end: The branch run's length ``s + D``; the lr at ``end`` is the one its last step leaves (the floor).
        steps: The steps evaluated, from ``start`` to ``end``: every step when ``D`` is at most
            :data:`~lightning_optim.config.preview.PREVIEW_POINTS`, else as many evenly spaced and the boundaries.
        lrs: Each group's lr at each of ``steps``.
    """

    start: int
    end: int
    steps: list[int]
    lrs: dict[str, list[float]]


_BRANCH_EXAMPLE = "e.g. branches='[{decay_start_step: 400, total_steps: 500}]'"


def branch_specs(cfg: DictConfig) -> list[dict[str, Any]]:
    """``cfg.branches`` as plain mappings, each with integer ``decay_start_step`` and ``total_steps``.

    Raises:
        ValueError: ``branches`` is not a list of such mappings, naming the entry.

    Examples:
        >>> branch_specs(OmegaConf.create({"branches": [{"decay_start_step": 40, "total_steps": 60}]}))
        [{'decay_start_step': 40, 'total_steps': 60}]
        >>> branch_specs(OmegaConf.create({"branches": [{"decay_start_step": 40}]}))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: branches[0] = {'decay_start_step': 40} is not valid. Expected integer decay_start_step and ...
    """
    branches = cfg.get("branches")
    if branches is None:
        return []
    if not isinstance(branches, ListConfig) or not all(isinstance(branch, DictConfig) for branch in branches):
        raise ValueError(
            f"branches = {_plain(branches)!r} is not valid. Expected a list of {{decay_start_step: s, total_steps: "
            f"s + D}} mappings, {_BRANCH_EXAMPLE}."
        )
    specs = [_plain(branch) for branch in branches]
    for index, spec in enumerate(specs):
        if not all(isinstance(spec.get(key), int) for key in ("decay_start_step", "total_steps")):
            raise ValueError(
                f"branches[{index}] = {spec!r} is not valid. Expected integer decay_start_step and total_steps, "
                f"{_BRANCH_EXAMPLE}."
            )
    return specs


def branch_learning_rates(cfg: DictConfig, total_steps: int) -> list[BranchPreview]:
    """The lrs of each cooldown branch in ``cfg.branches`` (:func:`branch_specs`), each as ``lightning-optim-train``
    runs it.

    A branch ``{decay_start_step: s, total_steps: s + D, ...}`` is the run ``cfg`` describes (``total_steps``
    optimizer steps, a ``wsd`` schedule) resumed from its checkpoint at step ``s`` with those keys set in
    ``scheduler`` (and ``decay_ratio`` null) and ``trainer.max_steps=s + D``: a closed-form schedule, so its lr at each
    step from ``s`` on is the branch schedule's there (``schedule: keep``), and the lr its last step leaves, at
    ``s + D``, is the floor. Any other ``scheduler`` key may be set for a branch too (``decay_shape``,
    ``min_lr_ratio``).

    Raises:
        ValueError: as :func:`branch_specs`; the run has several optimizers or a scheduler other than ``wsd``
            stepped per optimizer step; a branch starts after the run's end, or its schedule is not valid (naming
            ``branches[<i>]`` and the key).
    """
    specs = branch_specs(cfg)
    if not specs:
        return []
    optim_config = compose_optim_config(cfg)
    scheduler = optim_config.get("scheduler") or {}
    if "optimizers" in optim_config or scheduler.get("name") != "wsd" or scheduler.get("interval", "step") != "step":
        found = "several optimizers" if "optimizers" in optim_config else f"scheduler = {scheduler or None}"
        raise ValueError(
            "branches draws cooldowns of a wsd schedule stepped every optimizer step (scheduler=wsd, "
            f"scheduler.interval=step) of a single optimizer; this run has {found}."
        )
    datamodule = training_data(cfg)
    batch_size = assumed_batch_size(cfg, datamodule)
    return [_branch(cfg, optim_config, index, spec, total_steps, batch_size) for index, spec in enumerate(specs)]


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value


def _branch(
    cfg: DictConfig, optim_config: dict[str, Any], index: int, spec: dict[str, Any], total_steps: int, batch_size: int
) -> BranchPreview:
    start, end = spec["decay_start_step"], spec["total_steps"]
    if start > total_steps:
        raise ValueError(
            f"branches[{index}].decay_start_step = {start} is after the run's end ({total_steps} optimizer steps): a "
            "branch resumes from a checkpoint of the run."
        )
    config = {**optim_config, "scheduler": {**optim_config["scheduler"], "decay_ratio": None, **spec}}
    try:
        model = instantiate_model(cfg.model, config)
        shown = {start + round(i * (end - start) / (PREVIEW_POINTS - 1)) for i in range(PREVIEW_POINTS)}
        preview = sample_learning_rates(model, config, end + 1, shown, points=2, batch_size=batch_size)
    except OptimConfigError as error:
        raise ValueError(f"branches[{index}]: {error}") from None
    kept = [i for i, step in enumerate(preview.steps) if step >= start]
    lrs = {name: [values[i] for i in kept] for name, values in preview.lrs.items()}
    return BranchPreview(start, end, [preview.steps[i] for i in kept], lrs)


def plot(preview: LearningRatePreview, title: str, out: Path, branches: Iterable[BranchPreview] = ()) -> Figure:
    """Draw each group's lr against the optimizer step into the PNG ``out``, and each branch's (dashed, from its
    branch point); returns the figure."""
    # A bare Figure renders with Agg and needs no pyplot state or display.
    figure = Figure(figsize=(8, 4.5))
    axes = figure.add_subplot()
    for name, values in preview.lrs.items():
        axes.plot(preview.steps, values, label=name)
    for branch in branches:
        for name, values in branch.lrs.items():
            axes.plot(branch.steps, values, linestyle="--", label=f"{name}, branch {branch.start}-{branch.end}")
    axes.set(xlabel="optimizer step", ylabel="learning rate", title=title)
    axes.grid(alpha=0.3)
    axes.legend(title="parameter group")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    return figure


def group_table(name: str, steps: list[int], values: list[float], first_steps: int) -> Table:
    """A table of one group's lr at the first steps, its peak (value and first step) and its final lr.

    ``steps`` are the steps previewed (increasing, from 0) and ``values`` the group's lr at each.
    """
    table = Table(title=f"group {name}")
    table.add_column("")
    table.add_column("step", justify="right")
    table.add_column("lr", justify="right")
    for step, value in zip(steps[:first_steps], values, strict=False):
        table.add_row("", str(step), f"{value:.6e}")
    peak = max(range(len(values)), key=values.__getitem__)
    table.add_row("peak", str(steps[peak]), f"{values[peak]:.6e}")
    table.add_row("final", str(steps[-1]), f"{values[-1]:.6e}")
    return table


def branch_table(branches: list[BranchPreview]) -> Table:
    """A table of each branch's lr at its branch point and at its end (the lr its last step leaves), per group."""
    table = Table(title="branches")
    for column in ("group", "from step", "lr", "to step", "lr at the end"):
        table.add_column(column, justify="left" if column == "group" else "right")
    for branch in branches:
        for name, values in branch.lrs.items():
            table.add_row(name, str(branch.start), f"{values[0]:.6e}", str(branch.end), f"{values[-1]:.6e}")
    return table


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="schedule")
def main(cfg: DictConfig) -> None:
    """Console script ``lightning-optim-schedule``: one PNG and one table per group; with several optimizers one PNG
    per optimizer (``<out stem>-<optimizer>.png``) and tables ``group <optimizer>/<group>``; with ``branches`` the
    branches on the same PNG and a table of them."""
    base = Path(cfg.out)
    if not base.is_absolute():
        base = Path(HydraConfig.get().runtime.output_dir) / base
    apply_app_settings(cfg)
    console = Console()
    starts = [spec["decay_start_step"] for spec in branch_specs(cfg)]
    for optimizer in optimizer_names(compose_optim_config(cfg)):
        preview, optim_config = step_learning_rates(cfg, cfg.first_steps, optimizer, include=starts)
        branches = branch_learning_rates(cfg, preview.total_steps)
        section = _section(optim_config, optimizer)
        scheduler = section["scheduler"]["name"] if section["scheduler"] else "constant"
        title = f"{section['optimizer']['name']} + {scheduler}, {preview.total_steps} optimizer steps"
        out = base
        if optimizer is not None:
            title, out = f"{optimizer}: {title}", base.with_name(f"{base.stem}-{optimizer}{base.suffix}")
        if scaling := section["optimizer"].get("lr_scaling"):
            batch_size = assumed_batch_size(cfg, training_data(cfg))
            line = LrScaling(**scaling).describe(batch_size, "assumed; batch_size=<B> sets it")
            note = f"{line} (a BatchSizeFinder in the run would change it)"
            console.print(note, markup=False, highlight=False, soft_wrap=True)
        plot(preview, title, out, branches)
        for name, values in preview.lrs.items():
            shown = f"{optimizer}/{name}" if optimizer is not None else name
            console.print(group_table(shown, preview.steps, values, cfg.first_steps))
        if branches:
            console.print(branch_table(branches))
        console.print(f"lr schedule drawn to {out.resolve()}", markup=False, highlight=False, soft_wrap=True)


if __name__ == "__main__":
    main()
