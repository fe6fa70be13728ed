"""The training and validation steps the demo classifiers share."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from lightning_optim.fit.mixin import OptimMixin

DEFAULT_OPTIM_CONFIG: dict[str, Any] = {
    "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True},
    "scheduler": None,
}
"""Nesterov momentum SGD at a constant lr, used when a demo model gets no ``optim_config``."""


class Classifier(OptimMixin, L.LightningModule):
    """Cross-entropy classifier logging ``train/loss``, ``val/loss`` and ``val/acc``.

    Subclasses call :meth:`save_config` from their ``__init__``, build their layers and implement
    :meth:`forward` (inputs to logits).

    Args:
        num_classes: Number of classes.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def save_config(self, optim_config: Mapping[str, Any] | None) -> None:
        """Save the caller's ``__init__`` arguments as hparams and set ``optim_config`` (``None``: the default).

        ``save_hyperparameters`` replaces ``hparams``, so it runs before the mixin stores ``optim_config`` there.
        """
        frame = inspect.currentframe()
        self.save_hyperparameters(ignore=["optim_config"], frame=frame.f_back if frame is not None else None)
        self.optim_config = optim_config if optim_config is not None else DEFAULT_OPTIM_CONFIG

    @override
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        loss = F.cross_entropy(self(inputs), targets)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    @override
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        inputs, targets = batch
        logits = self(inputs)
        self.val_acc(logits, targets)
        self.log("val/loss", F.cross_entropy(logits, targets), prog_bar=True)
        self.log("val/acc", self.val_acc, prog_bar=True)
