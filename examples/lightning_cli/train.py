"""Lightning's own config system, LightningCLI, with the mixin: ``optim_config`` from a YAML file and the command line.

The one thing the model needs is the annotation ``optim_config: OptimConfig``: jsonargparse then reads the YAML's
``model.optim_config`` into it and applies dotted overrides key by key. ``auto_configure_optimizers=False`` removes
LightningCLI's ``--optimizer``/``--lr_scheduler``, which would replace the mixin's optimizer (without it, the mixin
refuses them when the fit starts).

Run::

    python examples/lightning_cli/train.py fit --config examples/lightning_cli/config.yaml
    python examples/lightning_cli/train.py fit --config examples/lightning_cli/config.yaml \\
        --model.optim_config.optimizer.lr 0.01 --model.optim_config.scheduler.warmup_steps 20
    python examples/lightning_cli/train.py fit --print_config --config examples/lightning_cli/config.yaml

Logs and checkpoints go to ``lightning_logs/`` under ``--trainer.default_root_dir`` (default: the working directory);
each checkpoint holds ``optim_config`` as run, overrides included, and ``Regressor.load_from_checkpoint`` rebuilds it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LightningCLI
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optim import OptimConfig, OptimMixin

FEATURES = 8


class Regressor(OptimMixin, L.LightningModule):
    """An MLP regressor whose optimizer, parameter groups and schedule come from ``optim_config``."""

    def __init__(self, optim_config: OptimConfig, hidden: int = 32) -> None:
        super().__init__()
        self.save_hyperparameters()  # under LightningCLI: the parsed config, for load_from_checkpoint
        self.encoder = nn.Sequential(nn.Linear(FEATURES, hidden), nn.LayerNorm(hidden), nn.ReLU())
        self.head = nn.Linear(hidden, 1)
        self.optim_config = optim_config

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(inputs))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        loss = nn.functional.mse_loss(self(inputs), targets)
        self.log("train/loss", loss)
        return loss


class SumOfSines(L.LightningDataModule):
    """Generated data: the target is the sum of the sines of the features."""

    def __init__(self, samples: int = 512, batch_size: int = 32) -> None:
        super().__init__()
        self.samples = samples
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(0)
        inputs = torch.randn(self.samples, FEATURES, generator=generator)
        targets = torch.sin(inputs).sum(dim=1, keepdim=True)
        return DataLoader(TensorDataset(inputs, targets), batch_size=self.batch_size, shuffle=True, generator=generator)


def main(args: Sequence[str] | None = None) -> LightningCLI:
    """Run the CLI on ``args`` (the command line when None); return it (``cli.model``, ``cli.trainer``)."""
    return LightningCLI(
        Regressor,
        SumOfSines,
        auto_configure_optimizers=False,
        args=list(args) if args is not None else None,
        save_config_kwargs={"overwrite": True},
    )


if __name__ == "__main__":
    main()
