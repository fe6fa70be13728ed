"""Interrupting ``lightning-optim-train`` keeps the work: a checkpoint at the end of the optimizer step under way.

Lightning already stops at that boundary on SIGTERM: its handler sets ``trainer.received_sigterm``, the training
loop raises ``SIGTERMException`` after the step's scheduler update and logging, and every callback's
``on_exception`` runs. SIGINT (Ctrl+C) otherwise raises ``KeyboardInterrupt`` wherever the process is, possibly
between an optimizer step and its scheduler step; :class:`InterruptCheckpoint` routes it to the same handler during
training, so both signals leave the same consistent checkpoint.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

__all__ = ["InterruptCheckpoint"]


class InterruptCheckpoint(L.Callback):
    """Save ``<dirpath>/interrupted.ckpt`` when SIGTERM or SIGINT stops training, at the end of the current step.

    A second SIGINT interrupts at once, as Ctrl+C does without this callback, and saves nothing. The signal that
    stopped training is kept in ``signum`` (the app exits with ``128 + signum``). Not Lightning's
    ``OnExceptionCheckpoint``: that one saves on any exception, also inside a step, and its presence makes
    ``fit(ckpt_path=None)`` resume from the newest checkpoint it finds.

    Args:
        dirpath: The directory of the checkpoint.

    Examples:
        >>> callback = InterruptCheckpoint("checkpoints")
        >>> str(callback.ckpt_path), callback.signum
        ('checkpoints/interrupted.ckpt', None)
    """

    def __init__(self, dirpath: str | Path) -> None:
        self.ckpt_path = Path(dirpath) / "interrupted.ckpt"
        self.signum: int | None = None

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning registers its SIGTERM handler before this hook and restores the previous handlers of every
        # signal at its teardown, so these two live exactly as long as the fit.
        lightning_handler = signal.getsignal(signal.SIGTERM)
        if not callable(lightning_handler) or threading.current_thread() is not threading.main_thread():
            return

        def stop_after_this_step(signum: int, frame: FrameType | None) -> None:
            if signum == signal.SIGINT and self.signum is not None:
                raise KeyboardInterrupt
            self.signum = signum
            lightning_handler(signum, frame)

        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, stop_after_this_step)

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # Only at a step boundary: any other exception may stop inside a step, and last.ckpt stays the way back.
        if isinstance(exception, SIGTERMException):
            trainer.save_checkpoint(self.ckpt_path)
