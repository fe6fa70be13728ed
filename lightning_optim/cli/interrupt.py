"""Interrupting ``lightning-optim-train`` keeps the work: a checkpoint at a step boundary every rank agrees on.

SIGTERM (a cluster's preemption) and SIGINT (Ctrl+C) only note the signal in the process that got it. After every
training batch and before every validation batch the ranks take the largest signal any of them noted, with one
collective every rank runs; when there is one, every rank sets Lightning's own stop flag (``received_sigterm``) at the
same point, so Lightning stops all of them where it stops a single process on SIGTERM (after the step under way, its
scheduler stepped, its validation run), and they save ``interrupted.ckpt`` together.

Lightning's SIGTERM handler is replaced while the Trainer runs because it cannot work under DDP: it broadcasts from
inside the signal handler on whichever rank the signal reaches, and rank zero's handler sends the signal on to the
other ranks, so the ranks run different numbers of collectives and wait for each other forever (one in the
checkpoint's barrier, one in the handler's broadcast). Lightning's SIGINT handling (``KeyboardInterrupt``, exit 1) can
stop between an optimizer step and its scheduler step.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from lightning_optim.internals import stop_as_on_sigterm

__all__ = ["InterruptCheckpoint"]


class InterruptCheckpoint(L.Callback):
    """Save ``<dirpath>/interrupted.ckpt`` when SIGTERM or SIGINT stops ``fit``, at a step boundary.

    The run stops where Lightning stops on SIGTERM: at the end of the training step under way (its scheduler
    stepped, and its validation run if one was due), or after the validation batch under way, also in the sanity
    check. Under DDP every rank stops at the same point, whichever ranks got the signal, at the cost of one
    all-reduce of one number per batch. A signal during a ``validate`` call stops it the same way and saves nothing
    (training is over). The stop is Lightning's ``SIGTERMException``, so every callback's ``on_exception`` runs.

    A second SIGINT interrupts at once, as Ctrl+C does without this callback, and saves nothing. The signal that
    stopped the run is kept in ``signum`` (the app exits with ``128 + signum``); a save that failed (a full disk) in
    ``save_error``. Not Lightning's ``OnExceptionCheckpoint``: that one saves on any exception, also inside a step,
    and its presence makes ``fit(ckpt_path=None)`` resume from the newest checkpoint it finds.

    Args:
        dirpath: The directory of the checkpoint.

    Examples:
        >>> callback = InterruptCheckpoint("checkpoints")
        >>> str(callback.ckpt_path), callback.signum, callback.save_error
        ('checkpoints/interrupted.ckpt', None, None)
    """

    def __init__(self, dirpath: str | Path) -> None:
        self.ckpt_path = Path(dirpath) / "interrupted.ckpt"
        self.signum: int | None = None
        self.save_error: Exception | None = None
        self._received: int | None = None

    def _listen(self) -> None:
        """Take SIGINT and SIGTERM over from Lightning, which registers its handler just before the stage runs and
        puts the earlier handlers back at its teardown: ours live exactly as long as the Trainer runs."""
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, self._note)

    def _note(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self._received is not None:
            raise KeyboardInterrupt
        self._received = self._received or signum

    def _stop_if_signalled(self, trainer: L.Trainer) -> None:
        """Stop every rank if any rank got a signal; every rank calls this at the same point."""
        signum = self._received or 0
        if trainer.world_size > 1:
            noted = torch.tensor(signum, device=trainer.strategy.root_device)
            signum = int(trainer.strategy.reduce(noted, reduce_op="max"))
        if signum:
            self.signum = signum
            stop_as_on_sigterm(trainer)

    @override
    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._listen()

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._listen()

    @override
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._listen()

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: object, batch: object, batch_idx: int
    ) -> None:
        self._stop_if_signalled(trainer)

    @override
    def on_validation_batch_start(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        batch: object,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._stop_if_signalled(trainer)

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning's evaluation loop stops only before a next batch; a validate call has nothing after its last.
        if trainer.state.fn == TrainerFn.VALIDATING and self.signum is not None:
            raise SIGTERMException

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # Only at a step boundary: any other exception may stop inside a step, and last.ckpt stays the way back.
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        try:
            trainer.save_checkpoint(self.ckpt_path)
        except Exception as error:  # a full disk must not turn a stop into a crash: the app names what survived
            self.save_error = error
            # Rank zero writes, and failed before the barrier that the other ranks are waiting in.
            trainer.strategy.barrier("Trainer.save_checkpoint")
