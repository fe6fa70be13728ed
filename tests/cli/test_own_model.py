"""``lightning-optim-train`` on a user's own LightningModule: a ``model/`` file in the user's conf folder (added with
``hydra.searchpath``) or ``model._target_`` on the command line; a model without ``validation_step`` reports the metric
training logged last.

The models below are the user's: the app runs in a subprocess with the repository on ``PYTHONPATH``, so it imports
them as ``tests.cli.test_own_model.<name>``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.demos.boring_classes import BoringModel
from torch import nn

from lightning_optim import OptimMixin
from lightning_optim.config.preview import preview_learning_rates
from tests import tb
from tests.cli.apps import TINY, run_app, run_app_expecting_failure

TRAIN = "lightning_optim.cli.train"
MODULE = "tests.cli.test_own_model"


class BoringRegressor(OptimMixin, BoringModel):
    """Lightning's ``BoringModel`` (32 inputs) with ``out_features`` outputs, logging its losses, optimized by the
    mixin (first in the bases, so it replaces ``BoringModel.configure_optimizers``)."""

    def __init__(self, optim_config: Mapping[str, Any], out_features: int = 2) -> None:
        super().__init__()
        self.layer = nn.Linear(32, out_features)
        self.optim_config = optim_config

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self.step(batch)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log("val/loss", self.step(batch))


class TrainingOnlyDigitsMLP(OptimMixin, L.LightningModule):
    """An MLP on the flattened 8x8 digits with hidden layers of ``width`` and ``hidden`` units: the arguments of the
    app's ``model=digits_cnn``, which ``model._target_`` keeps. It has no ``validation_step``."""

    def __init__(self, optim_config: Mapping[str, Any], width: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, width), nn.ReLU(), nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, 10)
        )
        self.optim_config = optim_config

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        loss = F.cross_entropy(self.net(images.flatten(1)), labels)
        self.log("train/loss", loss)
        return loss


def printed_metric(stdout: str, metric: str) -> str:
    """The value of the app's final ``<metric> = <value>`` line, as printed."""
    (value,) = re.findall(rf"^{re.escape(metric)} = (\S+)$", stdout, re.M)
    return value


def logged(run_dir: Path) -> dict[str, dict[int, float]]:
    return {tag: dict(points) for tag, points in tb.scalars(run_dir / "tensorboard").items()}


def test_a_model_file_in_the_users_conf_folder_trains_with_the_scheduled_lr(tmp_path):
    conf = tmp_path / "my conf"
    (conf / "model").mkdir(parents=True)
    (conf / "data").mkdir()
    (conf / "model" / "my_model.yaml").write_text(f"_target_: {MODULE}.BoringRegressor\nout_features: 3\n")
    (conf / "data" / "boring.yaml").write_text("_target_: lightning.pytorch.demos.boring_classes.BoringDataModule\n")
    run_dir = tmp_path / "run"
    stdout = run_app(
        TRAIN,
        *TINY,
        f"hydra.searchpath=[file://{conf}]",
        "model=my_model",
        "data=boring",
        "metric=val/loss",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    scalars = logged(run_dir)
    optim_config = {
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True},
        "scheduler": {"name": "warmup_cosine", "warmup_ratio": 0.1, "total_steps": None, "min_lr_ratio": 0.0},
    }
    expected = preview_learning_rates(BoringRegressor(optim_config, out_features=3), optim_config, 3)["default"]
    assert [scalars["lr-SGD/default"][step] for step in range(3)] == pytest.approx(expected)
    assert expected == pytest.approx([0.1, 0.075, 0.025])
    assert printed_metric(stdout, "val/loss") == f"{scalars['val/loss'][2]:.4f}"


@pytest.fixture(scope="module")
def training_only_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("own") / "run"
    stdout = run_app(
        TRAIN,
        *TINY,
        f"model._target_={MODULE}.TrainingOnlyDigitsMLP",
        "optimizer=adamw",
        "optimizer.lr=0.01",
        "scheduler=step",
        "scheduler.step_size=2",
        "scheduler.gamma=0.5",
        "metric=train/loss",
        f"hydra.run.dir={run_dir}",
        cwd=run_dir.parent,
    )
    return run_dir, stdout


def test_model_target_on_the_command_line_keeps_the_model_files_arguments(training_only_run):
    run_dir, _ = training_only_run
    scalars = logged(run_dir)
    optim_config = {
        "optimizer": {"name": "adamw", "lr": 0.01},
        "scheduler": {"name": "step", "step_size": 2, "gamma": 0.5},
    }
    expected = preview_learning_rates(TrainingOnlyDigitsMLP(optim_config, width=16, hidden=64), optim_config, 3)
    assert [scalars["lr-AdamW/default"][step] for step in range(3)] == pytest.approx(expected["default"])
    assert expected["default"] == pytest.approx([0.01, 0.01, 0.005])


def test_a_model_without_validation_step_reports_the_last_logged_training_metric(training_only_run):
    run_dir, stdout = training_only_run
    scalars = logged(run_dir)
    assert sorted(scalars["train/loss"]) == [0, 1, 2]
    assert not any(tag.startswith("val/") for tag in scalars)
    assert printed_metric(stdout, "train/loss") == f"{scalars['train/loss'][2]:.4f}"


def test_a_metric_training_did_not_log_names_it_and_what_was_logged(tmp_path):
    result = run_app_expecting_failure(
        TRAIN,
        *TINY,
        f"model._target_={MODULE}.TrainingOnlyDigitsMLP",
        "~callbacks",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert (
        "KeyError: \"metric='val/acc' was not logged by training (no validation_step or val_dataloader, so no "
        "validation); logged: ['train/loss']\""
    ) in result.stderr
