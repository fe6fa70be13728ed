"""``LRSchedule``: the package's schedules for a model that keeps its own ``configure_optimizers``.

Examples:
    >>> import lightning as L
    >>> callback = LRSchedule({"name": "warmup_cosine", "warmup_steps": 100, "min_lr_ratio": 0.1})
    >>> trainer = L.Trainer(callbacks=[callback], max_steps=1000, logger=False)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
from omegaconf import DictConfig
from typing_extensions import override

from lightning_optim.config.optim_config import plain
from lightning_optim.errors import OptimConfigError
from lightning_optim.fit.run_length import RunLength
from lightning_optim.internals import ends_epoch
from lightning_optim.schedule.build import BuiltScheduler, build_scheduler
from lightning_optim.schedule.lr_schedulers import ClosedFormLR, PlateauLR, step_plateau
from lightning_optim.schedule.registry import SchedulerSpec, resolve_scheduler

__all__ = ["LRSchedule"]


class LRSchedule(L.Callback):
    """Drive the lr of the model's optimizer step by step with a ``scheduler`` config.

    Same schedules and semantics as :class:`~lightning_optim.OptimMixin`: counts in optimizer steps (also under
    gradient accumulation and with ``frequency``), ``total_steps: null`` over the run's actual length (also when
    ``GradientAccumulationScheduler``, ``BatchSizeFinder`` or a reloaded train dataloader change it after the
    optimizers were built: :mod:`lightning_optim.fit.run_length`), each parameter group
    with its own base lr (groups added during training included), ``plateau`` stepped once after each
    validation run that logged ``monitor``. Its state goes into checkpoints, so a resumed run continues the
    same lr sequence, also with another ``max_epochs``: the schedule keeps the run length it was built with
    (with a ``ResumeConfigWarning``) unless the config sets ``total_steps``. It refuses to run beside a scheduler
    the model already returns.

    Args:
        scheduler: the ``scheduler`` section of ``optim_config`` (dict or ``DictConfig``), e.g.
            ``{"name": "warmup_cosine", "warmup_steps": 100}``.
        optimizer_index: which of ``trainer.optimizers`` to drive.
    """

    def __init__(self, scheduler: Mapping[str, Any] | DictConfig, optimizer_index: int = 0) -> None:
        self.spec: SchedulerSpec = resolve_scheduler(plain(scheduler))
        self.optimizer_index = optimizer_index
        self.built: BuiltScheduler | None = None
        self._restored_state: dict[str, Any] | None = None
        self._restored_run_length: dict[str, Any] | None = None
        self._build_on_load: L.Trainer | None = None
        self._stepped_at = 0

    @property
    def config(self) -> dict[str, Any]:
        """The checked ``scheduler`` section as plain containers."""
        return self.spec.config

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(optimizer_index=self.optimizer_index)

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.lr_scheduler_configs:
            schedulers = [type(config.scheduler).__name__ for config in trainer.lr_scheduler_configs]
            raise OptimConfigError(
                f"LRSchedule({self.config.get('name')!r}) cannot run beside the scheduler(s) {schedulers} that "
                f"{type(pl_module).__name__}.configure_optimizers returns: two schedulers would both set the lr. "
                "Return only the optimizer, or drop the LRSchedule callback."
            )
        self._build(trainer)

    def _build(self, trainer: L.Trainer) -> None:
        optimizer = trainer.optimizers[self.optimizer_index]
        length = RunLength(self.spec, "LRSchedule scheduler")
        self.built = build_scheduler(optimizer, self.spec, length.at_build(trainer, self._restored_run_length))
        self.built.run_length = length
        if self._restored_state is not None:
            self.built.scheduler.load_state_dict(self._restored_state)

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stepped_at = trainer.global_step
        # After Lightning restored a checkpoint's lrs: the first resumed step follows a changed schedule too.
        if self.built is not None and isinstance(self.built.scheduler, ClosedFormLR):
            self.built.scheduler.apply_schedule()
        # After BatchSizeFinder and the restored step count: the run's length as it will be.
        if self.built is not None:
            self.built.follow_run_length(trainer)

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The epoch's accumulation comes from GradientAccumulationScheduler itself, whichever callback runs first.
        if self.built is not None:
            self.built.follow_run_length(trainer, at_epoch_start=True)

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.built is not None and self.built.interval == "epoch":
            # At the epoch's last batch, where Lightning steps its own epoch schedulers, not in on_train_epoch_end:
            # a checkpoint written at that batch (every_n_train_steps) must hold the stepped schedule, because a
            # run resumed from it starts the next epoch without ending this one again.
            if ends_epoch(trainer) and (trainer.current_epoch + 1) % self.built.frequency == 0:
                self.built.advance()
            return
        # global_step counts optimizer steps, so batches that only accumulate gradients leave it unchanged.
        if self.built is None or trainer.global_step == self._stepped_at:
            return
        self._stepped_at = trainer.global_step
        if trainer.global_step % self.built.frequency == 0:
            self.built.advance()

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.built is None or not self.built.steps_on_validation or trainer.state.fn != "fit":
            return
        scheduler = self.built.scheduler
        assert isinstance(scheduler, PlateauLR)  # the one scheduler that steps on validation
        step_plateau(
            scheduler,
            trainer.callback_metrics,
            self.config.get("strict", True),
            sanity_check=trainer.sanity_checking,
            key="LRSchedule monitor",
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        if self.built is None:
            restored = {"scheduler": self._restored_state, "run_length": self._restored_run_length}
            return {key: value for key, value in restored.items() if value}
        run_length = self.built.run_length.saved() if self.built.run_length is not None else None
        return {"scheduler": self.built.scheduler.state_dict(), "run_length": run_length}

    @override
    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # Strategies that restore callbacks after their setup (FSDP, DeepSpeed) do it after on_fit_start built the
        # scheduler: build it again from the state about to be loaded.
        self._build_on_load = trainer if trainer.strategy.restore_checkpoint_after_setup else None

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored_state = state_dict.get("scheduler")
        self._restored_run_length = state_dict.get("run_length")
        trainer, self._build_on_load = self._build_on_load, None
        if trainer is not None and self.built is not None:
            self._build(trainer)
