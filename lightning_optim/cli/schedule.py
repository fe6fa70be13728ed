"""``lightning-optim-schedule``: draw and tabulate every parameter group's learning rate over a run, without training.

Takes the same config and overrides as ``lightning-optim-train``, plus ``out=`` (the PNG's path).

Examples (shell)::

    lightning-optim-schedule                                   # the main job's warmup + cosine
    lightning-optim-schedule scheduler=onecycle trainer.max_epochs=20 out=/tmp/onecycle.png
    lightning-optim-schedule experiment=transformer
"""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from matplotlib.figure import Figure
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, DistributedSampler

from lightning_optim.cli.common import CONFIG_PATH, compose_optim_config, count_optimizer_steps, instantiate_model
from lightning_optim.schedulers import preview_learning_rates


def batches_per_rank(cfg: DictConfig, datamodule: L.LightningDataModule) -> int:
    """Training batches each process sees: under DDP, Lightning's ``DistributedSampler`` splits the data by rank."""
    loader = datamodule.train_dataloader()
    devices, num_nodes = cfg.trainer.get("devices", 1), cfg.trainer.get("num_nodes", 1)
    world_size = devices * num_nodes if isinstance(devices, int) and "ddp" in str(cfg.trainer.get("strategy")) else 1
    if world_size == 1:
        return len(loader)
    sampler = DistributedSampler(loader.dataset, num_replicas=world_size, rank=0, shuffle=False)
    return len(DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler, drop_last=loader.drop_last))


def step_learning_rates(cfg: DictConfig) -> tuple[dict[str, list[float]], dict]:
    """Every group's lr for each optimizer step of the run ``cfg`` describes, and the ``optim_config`` used.

    An ``interval: epoch`` scheduler is previewed per epoch, and each epoch's lr repeated for its steps.
    """
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    total_steps, steps_per_epoch = count_optimizer_steps(cfg.trainer, batches_per_rank(cfg, datamodule))
    optim_config = compose_optim_config(cfg)
    model = instantiate_model(cfg.model, optim_config)
    scheduler = optim_config["scheduler"]
    if scheduler is None or scheduler.get("interval", "step") == "step":
        return preview_learning_rates(model, optim_config, total_steps), optim_config
    epochs = -(-total_steps // steps_per_epoch)
    per_epoch = preview_learning_rates(model, optim_config, epochs)
    return {
        name: [lr for lr in lrs for _ in range(steps_per_epoch)][:total_steps] for name, lrs in per_epoch.items()
    }, optim_config


def plot(lrs: dict[str, list[float]], title: str, out: Path) -> None:
    """Draw each group's lr against the optimizer step into the PNG ``out``."""
    # A bare Figure renders with Agg and needs no pyplot state or display.
    figure = Figure(figsize=(8, 4.5))
    axes = figure.add_subplot()
    for name, values in lrs.items():
        axes.plot(range(len(values)), values, label=name)
    axes.set(xlabel="optimizer step", ylabel="learning rate", title=title)
    axes.grid(alpha=0.3)
    axes.legend(title="parameter group")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)


def group_table(name: str, values: list[float], first_steps: int) -> Table:
    """A table of the first steps' lr, the peak (value and step) and the final lr of one group."""
    table = Table(title=f"group {name}")
    table.add_column("")
    table.add_column("step", justify="right")
    table.add_column("lr", justify="right")
    for step, value in enumerate(values[:first_steps]):
        table.add_row("", str(step), f"{value:.6e}")
    peak = max(range(len(values)), key=values.__getitem__)
    table.add_row("peak", str(peak), f"{values[peak]:.6e}")
    table.add_row("final", str(len(values) - 1), f"{values[-1]:.6e}")
    return table


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="schedule")
def main(cfg: DictConfig) -> None:
    """Console script ``lightning-optim-schedule``."""
    lrs, optim_config = step_learning_rates(cfg)
    out = Path(cfg.out)
    if not out.is_absolute():
        out = Path(HydraConfig.get().runtime.output_dir) / out
    scheduler = optim_config["scheduler"]["name"] if optim_config["scheduler"] else "constant"
    steps = len(next(iter(lrs.values())))
    plot(lrs, f"{optim_config['optimizer']['name']} + {scheduler}, {steps} optimizer steps", out)
    console = Console()
    for name, values in lrs.items():
        console.print(group_table(name, values, cfg.first_steps))
    console.print(f"lr schedule drawn to {out.resolve()}", markup=False, highlight=False, soft_wrap=True)


if __name__ == "__main__":
    main()
