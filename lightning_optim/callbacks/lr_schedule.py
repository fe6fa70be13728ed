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
from lightning_optim.fit.driver import FitDriver, OptimizerRecord
from lightning_optim.fit.run_length import RunLength
from lightning_optim.internals import ends_epoch
from lightning_optim.schedule.build import BuiltScheduler, build_scheduler
from lightning_optim.schedule.registry import SchedulerSpec, resolve_scheduler

__all__ = ["LRSchedule"]


class LRSchedule(FitDriver):
    """Drive the lr of the model's optimizer step by step with a ``scheduler`` config.

    Same schedules and semantics as :class:`~lightning_optim.OptimMixin`, through the same driver
    (:class:`~lightning_optim.fit.driver.FitDriver`): counts in optimizer steps (also under gradient accumulation
    and with ``frequency``), ``total_steps: null`` over the run's actual length (also when
    ``GradientAccumulationScheduler``, ``BatchSizeFinder`` or a reloaded train dataloader change it after the
    optimizers were built:
    :mod:`lightning_optim.fit.run_length`), each parameter group with its own base lr (groups added during training
    included), ``plateau`` stepped once after each validation run that logged ``monitor``. Its state goes into
    checkpoints, so a resumed run continues the same lr sequence, also with another ``max_epochs``: the schedule keeps
    the run length it was built with (with a ``ResumeConfigWarning``) unless the config sets ``total_steps``. It
    refuses to run beside a scheduler the model already returns.

    What it adds to the driver: it builds the scheduler when the fit starts (over the optimizer the model built), steps
    it itself after each optimizer step (Lightning does not know it), and keeps its state in the callback's own
    checkpoint entry.

    Args:
        scheduler: the ``scheduler`` section of ``optim_config`` (dict or ``DictConfig``), e.g.
            ``{"name": "warmup_cosine", "warmup_steps": 100}``.
        optimizer_index: which of ``trainer.optimizers`` to drive.
    """

    def __init__(self, scheduler: Mapping[str, Any] | DictConfig, optimizer_index: int = 0) -> None:
        super().__init__()
        self.scheduler_spec: SchedulerSpec = resolve_scheduler(plain(scheduler))
        self.optimizer_index = optimizer_index
        self._restored_state: dict[str, Any] | None = None
        self._restored_run_length: dict[str, Any] | None = None
        self._build_on_load: L.Trainer | None = None
        self._stepped_at = 0

    @property
    def config(self) -> dict[str, Any]:
        """The checked ``scheduler`` section as plain containers."""
        return self.scheduler_spec.config

    @property
    def built(self) -> BuiltScheduler | None:
        """The scheduler it built for this fit, or None before the fit starts."""
        return self.records[0].scheduler if self.records else None

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
        record = OptimizerRecord(trainer.optimizers[self.optimizer_index], where="LRSchedule scheduler")
        record.run_length = RunLength(self.scheduler_spec, record.where)
        length = record.run_length.at_build(trainer, self._restored_run_length)
        record.scheduler = build_scheduler(record.optimizer, self.scheduler_spec, length)
        record.strict = self.config.get("strict", True)
        if self._restored_state is not None:
            record.scheduler.scheduler.load_state_dict(self._restored_state)
        self.records = [record]

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stepped_at = trainer.global_step
        super().on_train_start(trainer, pl_module)

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        built = self.built
        if built is not None and built.interval == "epoch":
            # At the epoch's last batch, where Lightning steps its own epoch schedulers, not in on_train_epoch_end:
            # a checkpoint written at that batch (every_n_train_steps) must hold the stepped schedule, because a
            # run resumed from it starts the next epoch without ending this one again.
            if ends_epoch(trainer) and (trainer.current_epoch + 1) % built.frequency == 0:
                built.advance()
            return
        # global_step counts optimizer steps, so batches that only accumulate gradients leave it unchanged.
        if built is None or trainer.global_step == self._stepped_at:
            return
        self._stepped_at = trainer.global_step
        if trainer.global_step % built.frequency == 0:
            built.advance()

    @override
    def state_dict(self) -> dict[str, Any]:
        if not self.records:
            restored = {"scheduler": self._restored_state, "run_length": self._restored_run_length}
            return {key: value for key, value in restored.items() if value}
        record = self.records[0]
        assert record.scheduler is not None  # _build gives its record a scheduler
        return {"scheduler": record.scheduler.scheduler.state_dict(), "run_length": record.saved_run_length()}

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
        if trainer is not None and self.records:
            self._build(trainer)
