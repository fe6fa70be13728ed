"""Lightning's StochasticWeightAveraging with the mixin: the configured schedule until SWA starts, then SWA's own
SWALR alone (the mixin never steps or re-applies its schedule over it)."""

from __future__ import annotations

import warnings

import pytest
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
