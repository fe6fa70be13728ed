"""The demo data modules and models."""

from __future__ import annotations

import re
import sys

import lightning as L
import pytest
import torch

from lightning_optim.demos import (
    DigitsCNN,
    DigitsDataModule,
    SequenceDataModule,
    SequenceLSTM,
    SequenceTransformer,
    make_adding_problem,
)


def test_digits_split_is_deterministic_and_independent_of_the_global_seed():
    torch.manual_seed(1)
    first = DigitsDataModule()
    first.setup("fit")
    torch.manual_seed(2)
    second = DigitsDataModule()
    second.setup("fit")
    assert (len(first.train_set), len(first.val_set)) == (1438, 359)
    assert first.val_set.indices == second.val_set.indices
    assert not set(first.train_set.indices) & set(first.val_set.indices)
    images, labels = first.val_set[0]
    assert images.shape == (1, 8, 8) and images.min() >= 0.0 and images.max() <= 1.0 and 0 <= labels < 10


def test_digits_without_the_demos_extra_name_the_install_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # what an environment without scikit-learn raises
    with pytest.raises(
        ImportError, match=re.escape("The digits demo needs scikit-learn: pip install 'lightning-optim[demos]'")
    ):
        DigitsDataModule().setup("fit")


def test_adding_problem_labels():
    inputs, labels = make_adding_problem(100, 12, seed=3)
    values, markers = inputs[..., 0], inputs[..., 1]
    assert torch.equal(markers.sum(dim=1), torch.full((100,), 2.0))
    assert markers[:, :6].sum(dim=1).eq(1).all() and markers[:, 6:].sum(dim=1).eq(1).all()
    assert torch.equal(labels, ((values * markers).sum(dim=1) > 1).long())
    again, _ = make_adding_problem(100, 12, seed=3)
    assert torch.equal(inputs, again) and not torch.equal(inputs, make_adding_problem(100, 12, seed=4)[0])


def test_models_store_plain_optim_config_and_their_arguments():
    config = {"optimizer": {"name": "adamw", "lr": 1e-3}}
    model = SequenceTransformer(d_model=8, nhead=2, max_len=8, optim_config=config)
    assert model.hparams["d_model"] == 8
    assert model.hparams["optim_config"]["optimizer"] == {"name": "adamw", "lr": 1e-3}
    assert DigitsCNN().hparams["optim_config"]["optimizer"]["nesterov"] is True


@pytest.mark.slow
@pytest.mark.parametrize(
    "model,data",
    [
        (lambda c: DigitsCNN(width=4, hidden=16, optim_config=c), lambda: DigitsDataModule(batch_size=32)),
        (
            lambda c: SequenceLSTM(hidden_size=8, optim_config=c),
            lambda: SequenceDataModule(128, 64, seq_len=8, batch_size=32),
        ),
        (
            lambda c: SequenceTransformer(d_model=8, nhead=2, num_layers=1, max_len=8, optim_config=c),
            lambda: SequenceDataModule(128, 64, seq_len=8, batch_size=32),
        ),
    ],
)
def test_models_train_and_log_their_metrics(model, data):
    config = {"optimizer": {"name": "sgd", "lr": 0.05}, "scheduler": {"name": "step", "step_size": 1, "gamma": 0.5}}
    module = model(config)
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, data())
    metrics = trainer.callback_metrics
    assert {"train/loss", "val/loss", "val/acc"} <= set(metrics)
    assert 0.0 <= float(metrics["val/acc"]) <= 1.0 and float(metrics["val/loss"]) > 0
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.05 * 0.5**3)
