"""Lightning's StochasticWeightAveraging with the mixin: the configured schedule until SWA starts, then SWA's own
SWALR alone (the mixin never steps or re-applies its schedule over it)."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import StochasticWeightAveraging

from tests.models import MixinModel, loader, trainer
from tests.references import warmup_cosine

BATCHES_PER_EPOCH = 8
SWA_EPOCH_START = 2
"""Lightning counts ``swa_epoch_start`` from 1: SWA takes over at epoch index 1."""
ANNEALING_EPOCHS = 1
SWA_LR = 0.05


def test_swa_takes_over_the_lr_at_its_epoch_and_holds_its_own() -> None:
    config = {
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
        "scheduler": {"name": "warmup_cosine", "warmup_steps": 4, "min_lr_ratio": 0.1},
    }
    model = MixinModel(config)
    swa = StochasticWeightAveraging(
        swa_lrs=SWA_LR, swa_epoch_start=SWA_EPOCH_START, annealing_epochs=ANNEALING_EPOCHS, annealing_strategy="linear"
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "SWA is currently only supported every epoch", UserWarning)
        trainer(max_epochs=5, callbacks=[swa]).fit(model, loader())

    lrs = [group_lrs[0] for group_lrs in model.lrs]
    run_length = 5 * BATCHES_PER_EPOCH
    before_swa = (SWA_EPOCH_START - 1) * BATCHES_PER_EPOCH
    schedule = [warmup_cosine(k, 0.1, 4, run_length, 0.1) for k in range(before_swa + 1)]
    assert lrs[:before_swa] == pytest.approx(schedule[:before_swa])
    after_annealing = before_swa + ANNEALING_EPOCHS * BATCHES_PER_EPOCH
    # SWALR steps once per epoch: its linear annealing epoch starts from the lr the schedule had reached.
    assert lrs[before_swa:after_annealing] == pytest.approx([schedule[before_swa]] * (after_annealing - before_swa))
    assert lrs[after_annealing:] == pytest.approx([SWA_LR] * (run_length - after_annealing))


class BatchNormModel(MixinModel):
    """``MixinModel`` with a BatchNorm layer, for which Lightning's SWA adds an epoch that only updates BatchNorm."""

    def __init__(self, optim_config: dict[str, Any]) -> None:
        super().__init__(optim_config)
        self.norm = torch.nn.BatchNorm1d(8)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.encoder(inputs))))


def test_the_schedule_before_swa_ends_with_the_runs_optimizer_steps_not_swas_batchnorm_epoch() -> None:
    config = {
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
        "scheduler": {"name": "warmup_cosine", "warmup_steps": 4, "min_lr_ratio": 0.1},
    }
    model = BatchNormModel(config)
    swa = StochasticWeightAveraging(swa_lrs=SWA_LR, swa_epoch_start=3, annealing_epochs=1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "SWA is currently only supported every epoch", UserWarning)
        run = trainer(max_epochs=4, callbacks=[swa])
        run.fit(model, loader())

    # 4 epochs of 8 optimizer steps; SWA's fifth epoch only updates BatchNorm statistics.
    before_swa = 2 * BATCHES_PER_EPOCH
    lrs = [group_lrs[0] for group_lrs in model.lrs[:before_swa]]
    assert lrs == pytest.approx([warmup_cosine(k, 0.1, 4, 4 * BATCHES_PER_EPOCH, 0.1) for k in range(16)], rel=1e-12)
    assert [round(lr, 5) for lr in lrs[12:]] == [0.08306, 0.07894, 0.07452, 0.06986]
    assert run.max_epochs == 4
