"""Counting a run's optimizer steps as Lightning does."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_optim.cli.common import count_optimizer_steps


class _Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.estimated = None

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def configure_optimizers(self):
        self.estimated = self.trainer.estimated_stepping_batches
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(23, 1)), batch_size=2)  # 12 batches


@pytest.mark.parametrize(
    "trainer_cfg,steps_per_epoch",
    [
        ({"max_epochs": 2}, 12),
        ({"max_epochs": 3, "accumulate_grad_batches": 5}, 3),
        ({"max_epochs": 2, "limit_train_batches": 5, "accumulate_grad_batches": 2}, 3),
        ({"max_epochs": 2, "limit_train_batches": 0.5}, 6),
        ({"max_epochs": 4, "max_steps": 7}, 12),
        ({"max_epochs": -1, "max_steps": 9}, 12),
    ],
)
def test_count_matches_lightnings_estimate(trainer_cfg, steps_per_epoch):
    model = _Tiny()
    trainer = L.Trainer(
        **trainer_cfg,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(model)
    total, per_epoch = count_optimizer_steps(trainer_cfg, 12)
    assert total == model.estimated
    assert per_epoch == steps_per_epoch


def test_count_refuses_a_run_without_end():
    with pytest.raises(ValueError, match="no end"):
        count_optimizer_steps({"max_epochs": -1}, 10)
