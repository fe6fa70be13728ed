"""``lightning-optim-schedule``: draw and tabulate every parameter group's learning rate over a run, without training.

Takes the same config and overrides as ``lightning-optim-train``, plus ``out=`` (the PNG's path). A closed-form
schedule is evaluated only at the steps drawn, so any run length previews in about a second; a stateful one
(``cyclic``, ``onecycle``, ``plateau``, a ``_target_``) is stepped through, up to a million steps.

Examples (shell)::

    lightning-optim-schedule                                   # the main job's warmup + cosine
    lightning-optim-schedule scheduler=onecycle trainer.max_epochs=20 out=/tmp/onecycle.png
    lightning-optim-schedule experiment=transformer
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from matplotlib.figure import Figure
from omegaconf import DictConfig
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
from lightning_optim.config.preview import LearningRatePreview, sample_learning_rates
from lightning_optim.optim.lr_scaling import LrScaling

__all__ = ["assumed_batch_size", "group_table", "main", "plot", "step_learning_rates"]


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
    cfg: DictConfig, first_steps: int = 0, optimizer: str | None = None
) -> tuple[LearningRatePreview, dict]:
    """Every group's lr at the optimizer steps drawn of the run ``cfg`` describes, and the ``optim_config`` used.

    The first ``first_steps`` steps, the peak and the last step are always among them
    (:func:`~lightning_optim.config.preview.sample_learning_rates`). An ``interval: epoch`` scheduler is previewed per
    epoch, and each epoch drawn by its first and last step. With several optimizers (``optimizers=gan``)
    ``optimizer`` names the one previewed; the run is counted in training batches, each scheduler stepped once per
    batch as manual optimization's ``training_step`` does. ``optimizer.lr_scaling`` is shown at
    :func:`assumed_batch_size`.
    """
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    total_steps, steps_per_epoch = count_optimizer_steps(cfg.trainer, batches_per_rank(cfg, datamodule))
    optim_config = compose_optim_config(cfg)
    model = instantiate_model(cfg.model, optim_config)
    scheduler = _section(optim_config, optimizer).get("scheduler")
    batch_size = assumed_batch_size(cfg, datamodule)
    if scheduler is None or scheduler.get("interval", "step") == "step":
        preview = sample_learning_rates(
            model, optim_config, total_steps, range(first_steps), optimizer=optimizer, batch_size=batch_size
        )
        return preview, optim_config
    epochs = -(-total_steps // steps_per_epoch)
    first_epochs = range(-(-min(first_steps, total_steps) // steps_per_epoch))
    per_epoch = sample_learning_rates(
        model, optim_config, epochs, first_epochs, optimizer=optimizer, batch_size=batch_size
    )
    return epochs_as_steps(per_epoch, steps_per_epoch, total_steps, range(first_steps)), optim_config


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


def plot(preview: LearningRatePreview, title: str, out: Path) -> None:
    """Draw each group's lr against the optimizer step into the PNG ``out``."""
    # A bare Figure renders with Agg and needs no pyplot state or display.
    figure = Figure(figsize=(8, 4.5))
    axes = figure.add_subplot()
    for name, values in preview.lrs.items():
        axes.plot(preview.steps, values, label=name)
    axes.set(xlabel="optimizer step", ylabel="learning rate", title=title)
    axes.grid(alpha=0.3)
    axes.legend(title="parameter group")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)


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


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="schedule")
def main(cfg: DictConfig) -> None:
    """Console script ``lightning-optim-schedule``: one PNG and one table per group; with several optimizers one PNG
    per optimizer (``<out stem>-<optimizer>.png``) and tables ``group <optimizer>/<group>``."""
    base = Path(cfg.out)
    if not base.is_absolute():
        base = Path(HydraConfig.get().runtime.output_dir) / base
    apply_app_settings(cfg)
    console = Console()
    for optimizer in optimizer_names(compose_optim_config(cfg)):
        preview, optim_config = step_learning_rates(cfg, cfg.first_steps, optimizer)
        section = _section(optim_config, optimizer)
        scheduler = section["scheduler"]["name"] if section["scheduler"] else "constant"
        title = f"{section['optimizer']['name']} + {scheduler}, {preview.total_steps} optimizer steps"
        out = base
        if optimizer is not None:
            title, out = f"{optimizer}: {title}", base.with_name(f"{base.stem}-{optimizer}{base.suffix}")
        if scaling := section["optimizer"].get("lr_scaling"):
            batch_size = assumed_batch_size(cfg, instantiate(cfg.data))
            line = LrScaling(**scaling).describe(batch_size, "assumed; batch_size=<B> sets it")
            console.print(f"{line} (a BatchSizeFinder in the run would change it)", markup=False, highlight=False)
        plot(preview, title, out)
        for name, values in preview.lrs.items():
            shown = f"{optimizer}/{name}" if optimizer is not None else name
            console.print(group_table(shown, preview.steps, values, cfg.first_steps))
        console.print(f"lr schedule drawn to {out.resolve()}", markup=False, highlight=False, soft_wrap=True)


if __name__ == "__main__":
    main()
