"""Callbacks the interruption tests add to the train app: the process signals itself at a chosen moment, as a
scheduler or Ctrl+C would, and a disk that is full for one checkpoint."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch


class SignalAtStep(L.Callback):
    """Send ``signum`` to this process at a moment of the run.

    Args:
        step: During training, signal once ``trainer.global_step`` reaches it.
        signum: The signal.
        during: ``"training"``, ``"sanity_check"`` (the first sanity-check batch) or ``"final_validation"`` (the first
            batch of the app's validation after ``fit``).
        rank: Only this global rank signals itself; every rank when None.
        stamp: A file that gets the time of each signal sent, one line each.
    """

    def __init__(
        self, step: int, signum: int, during: str = "training", rank: int | None = None, stamp: str | None = None
    ) -> None:
        self.step = step
        self.signum = signum
        self.during = during
        self.rank = rank
        self.stamp = stamp

    def _signal(self, trainer: L.Trainer) -> None:
        if self.rank is not None and trainer.global_rank != self.rank:
            return
        if self.stamp is not None:
            with open(self.stamp, "a") as file:
                file.write(f"{time.time()}\n")
        os.kill(os.getpid(), self.signum)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.during == "training" and trainer.global_step == self.step:
            self._signal(trainer)

    def on_validation_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        sanity_check = self.during == "sanity_check" and trainer.sanity_checking
        final_validation = self.during == "final_validation" and trainer.state.fn == "validate"
        if (sanity_check or final_validation) and batch_idx == 0:
            self._signal(trainer)


class FullDisk(L.Callback):
    """Make every save of a checkpoint named ``name`` fail as a full disk does, after writing a few bytes."""

    def __init__(self, name: str) -> None:
        self.name = name

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        save = torch.save

        def save_to_a_full_disk(obj: Any, file: Any, *args: Any, **kwargs: Any) -> None:
            if self.name in Path(getattr(file, "name", str(file))).name:
                file.write(b"PK\x03\x04")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            save(obj, file, *args, **kwargs)

        torch.save = save_to_a_full_disk
