"""A callback the interruption tests add to the train app: the process signals itself after one optimizer step."""

from __future__ import annotations

import os
from typing import Any

import lightning as L


class SignalAtStep(L.Callback):
    """Send ``signum`` to this process once ``trainer.global_step`` reaches ``step``, as a scheduler or Ctrl+C would."""

    def __init__(self, step: int, signum: int) -> None:
        self.step = step
        self.signum = signum

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)
