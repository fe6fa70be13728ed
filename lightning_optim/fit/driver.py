"""``FitDriver``: what lives across one ``Trainer.fit`` of an ``OptimMixin`` model, as one Lightning ``Callback``.

The mixin builds the optimizers and schedulers in ``configure_optimizers`` and hands this driver a record per
optimizer (:class:`OptimizerRecord`: its name, its scheduler with the section's key path, the run length the schedule
follows, its adaptive clipping threshold). The driver's hooks then keep them right for the rest of the fit: the run's
length at train and epoch start, plateau stepping after each validation run, the checkpoint entries
(``optim_config``, ``optim_run_lengths``, ``optim_clipping``), the lr finder's moved lrs, the manual-optimization
checks, the lrs ``optimizer.lr_scaling`` sets from the run's effective batch size (at train start and at each epoch
start: a ``BatchSizeFinder``'s result, a ``GradientAccumulationScheduler`` stage, the world size), the resume policy
of a fit started from a checkpoint (``optim_config.resume``, :mod:`lightning_optim.fit.resume`) and, only where the
config has one, the schedule-free optimizer's train/eval switching. Parts that are not configured are never
attached: without a ``clipping`` section no :class:`AdaptiveThresholds` exists, without a schedule-free optimizer no
switch runs.

The mixin returns the driver from ``LightningModule.configure_callbacks``, which Lightning merges into
``trainer.callbacks`` at every ``fit``/``validate``/``test``/``predict``, after any tuner callback and before
``ModelCheckpoint``. A callback's hooks run before the module's, so a model's own hooks need not call ``super()``.
:class:`~lightning_optim.callbacks.LRSchedule` is the same driver over a model's own optimizer.

Examples:
    >>> import lightning as L
    >>> from lightning_optim import OptimMixin
    >>> class Model(OptimMixin, L.LightningModule):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.layer = torch.nn.Linear(2, 1)
    ...         self.optim_config = {"optimizer": {"name": "sgd", "lr": 0.1}}
    >>> [type(callback).__name__ for callback in Model().configure_callbacks()]
    ['FitDriver']
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lightning_optim.clipping.adaptive import AdaptiveThresholds, AutoClip, ZClip
from lightning_optim.clipping.arithmetic import ClipResult
from lightning_optim.clipping.skip import skip_step
from lightning_optim.clipping.spike_guard import SpikeGuards, SpikeGuardSpec, guarded_sections
from lightning_optim.clipping.step import fsdp_model
from lightning_optim.config.optim_config import OPTIMIZERS_KEY, changed_keys, plain
from lightning_optim.config.optimizer_sets import states_in_config_order
from lightning_optim.config.resume import RESUME_KEY
from lightning_optim.config.validation import OptimizerSetSpec, OptimSpec
from lightning_optim.errors import OptimConfigError
from lightning_optim.fit import schedule_free
from lightning_optim.fit.lightning_cli import refuse_dropped_lr_scheduler, refuse_replaced_configure_optimizers
from lightning_optim.fit.lr_finder import MovedLrs, move_base_lrs
from lightning_optim.fit.manual_optimization import SchedulerStepCheck
from lightning_optim.fit.mesh import warn_unplaced_mesh_dims
from lightning_optim.fit.resume import RESUME_CHECKPOINT_KEY, ResumePlan, policy_line, resume_plan, saved_record
from lightning_optim.fit.run_length import ResumeConfigWarning, RunLength, check_saved_run_lengths, epoch_accumulation
from lightning_optim.internals import attached_trainer, grad_scaler, logging_step, should_log, torch_optimizer
from lightning_optim.optim.lr_scaling import LrScaling
from lightning_optim.schedule.build import BuiltScheduler
from lightning_optim.schedule.lr_schedulers import ClosedFormLR, PlateauLR, step_plateau
from lightning_optim.stats import RunningStatsSnapshot, gradient_norms

if TYPE_CHECKING:
    from torch.optim.lr_scheduler import LRScheduler

__all__ = [
    "CHECKPOINT_KEY",
    "CLIPPING_KEY",
    "LR_SCALING_KEY",
    "RUN_LENGTHS_KEY",
    "SPIKE_GUARD_KEY",
    "FitDriver",
    "OptimizerRecord",
    "check_resumed_config",
    "driver_of",
    "effective_batch_size",
    "run_length_record",
    "unscaled_lr",
    "write_config",
]

CHECKPOINT_KEY = "optim_config"
"""The checkpoint entry holding the ``optim_config`` a run was trained with (plain containers)."""

RUN_LENGTHS_KEY = "optim_run_lengths"
"""The checkpoint entry holding, per scheduler, the run length it was built with (``{"interval", "length"}``)."""

CLIPPING_KEY = "optim_clipping"
"""The checkpoint entry holding the adaptive clipping history, per optimizer (``{"optimizer", "config", "state"}``)."""

LR_SCALING_KEY = "optim_lr_scaling"
"""The checkpoint entry holding, per optimizer with ``lr_scaling``, the factor its saved lrs hold
(``{"factor", "batch_size"}``, with ``"optimizer"`` among several)."""

SPIKE_GUARD_KEY = "optim_spike_guard"
"""The checkpoint entry holding each spike guard's statistics and skip count (``{"optimizer", "config", "state"}``)."""

log = logging.getLogger(__name__)

_DRIVERS: weakref.WeakKeyDictionary[torch.nn.Module, FitDriver] = weakref.WeakKeyDictionary()
"""Each mixin model's driver of its current run; weak, so that the driver is no slot in the user's ``__dict__``."""


def driver_of(module: torch.nn.Module) -> FitDriver | None:
    """The driver that ``module``'s ``configure_callbacks`` made last, or None."""
    return _DRIVERS.get(module)


@dataclass
class OptimizerRecord:
    """One optimizer of the fit and what the driver keeps for it.

    Attributes:
        optimizer: the torch optimizer.
        name: its name under ``optim_config.optimizers``; None in the single form.
        where: the key path of its ``scheduler`` section, in messages.
        scheduler: its built scheduler, or None.
        run_length: the run length its schedule follows, or None (a length given once, or no scheduler).
        threshold: its adaptive clipping threshold, or None without a ``clipping`` section.

    Examples:
        >>> optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        >>> OptimizerRecord(optimizer).saved_run_length() is None
        True
    """

    optimizer: torch.optim.Optimizer
    name: str | None = None
    where: str = "optim_config.scheduler"
    scheduler: BuiltScheduler | None = None
    run_length: RunLength | None = None
    threshold: AutoClip | ZClip | None = None
    strict: bool = True
    """The section's ``strict``: a plateau whose ``monitor`` is missing raises (else warns)."""
    lr_scaling: LrScaling | None = None
    """The section's ``optimizer.lr_scaling``, or None."""
    lr_factor: float = 1.0
    """The ``lr_scaling`` factor the optimizer's base lrs hold now (1 as built: the config's lrs)."""
    batch_size: int | None = None
    """The effective batch size ``lr_factor`` was set for."""

    def follow_batch_size(self, trainer: L.Trainer) -> None:
        """Scale the base lrs (and the lrs the schedule gives at its step) to the run's effective batch size now.

        Each group's base lr (``initial_lr``, the scheduler's ``base_lrs``) is multiplied by the ratio of the new
        factor to the one it holds, as the lr finder moves them (:func:`~lightning_optim.fit.lr_finder.move_base_lrs`),
        so the schedule goes on from the scaled lrs at its step. The factor and the batch size are printed (rank zero)
        when they change.
        """
        if self.lr_scaling is None:
            return
        where = f"optim_config.{OPTIMIZERS_KEY}.{self.name}.optimizer" if self.name else "optim_config.optimizer"
        batch_size, parts = effective_batch_size(trainer, f"{where}.lr_scaling")
        factor = self.lr_scaling.factor(batch_size)
        if batch_size == self.batch_size and factor == self.lr_factor:
            return
        scheduler = self.scheduler.scheduler if self.scheduler is not None else None
        move_base_lrs(self.optimizer, scheduler, {}, factor / self.lr_factor)
        self.lr_factor, self.batch_size = factor, batch_size
        rank_zero_info(f"{where}.{self.lr_scaling.describe(batch_size, parts)}")

    def saved_lr_scaling(self) -> dict[str, Any] | None:
        """The checkpoint's record of the factor the lrs hold, or None without ``lr_scaling``."""
        if self.lr_scaling is None:
            return None
        optimizer = {"optimizer": self.name} if self.name else {}
        return {**optimizer, "factor": self.lr_factor, "batch_size": self.batch_size}

    def follow_run_length(self, trainer: L.Trainer, at_epoch_start: bool = False) -> None:
        """Keep a schedule sized by the run on the run's length now (:meth:`RunLength.follow`)."""
        if self.run_length is not None and self.scheduler is not None:
            self.run_length.follow(trainer, self.scheduler.scheduler, at_epoch_start)

    def step_on_validation(self, trainer: L.Trainer) -> None:
        """Step a plateau scheduler on the metric of the validation run that just ended (``fit`` only)."""
        if self.scheduler is None or not isinstance(self.scheduler.scheduler, PlateauLR):
            return
        step_plateau(
            self.scheduler.scheduler,
            trainer.callback_metrics,
            self.strict,
            sanity_check=trainer.sanity_checking,
            key=f"{self.where}.monitor",
        )

    def saved_run_length(self) -> dict[str, Any] | None:
        """The checkpoint's record of the run length (with the optimizer's name among several), or None."""
        if self.run_length is None:
            return None
        return {**self.run_length.saved(), **({"optimizer": self.name} if self.name else {})}


class FitDriver(L.Callback):
    """The per-fit state and hooks of :class:`~lightning_optim.OptimMixin`; the mixin's ``configure_callbacks``
    returns it (a model overriding ``configure_callbacks`` returns ``[*super().configure_callbacks(), ...]``).

    Args:
        spec: the model's resolved ``optim_config``; None for a driver over a model's own optimizer (``LRSchedule``).

    Examples:
        >>> from lightning_optim.config.validation import resolve_optim_config
        >>> driver = FitDriver(resolve_optim_config({"optimizer": {"name": "sgd", "lr": 0.1}}))
        >>> driver.records, driver.thresholds, driver.schedule_free_batches
        ([], None, None)
    """

    def __init__(self, spec: OptimSpec | OptimizerSetSpec | None = None) -> None:
        self.spec = spec
        self.records: list[OptimizerRecord] = []
        self.thresholds: AdaptiveThresholds | None = None
        """Built by :meth:`configure_clipping` only when a section asks for adaptive clipping."""
        self.moved_lrs: MovedLrs | None = None
        """The lrs ``model.lr = x`` gave a built optimizer's groups during the fit (Lightning's lr finder)."""
        self._saved_run_lengths: list[dict[str, Any]] | None = None
        self._saved_clipping: list[Mapping[str, Any]] | None = None
        self._saved_lr_scaling: list[dict[str, Any]] | None = None
        self._step_check: SchedulerStepCheck | None = None
        self._batchnorm_warned = False
        self.guards: SpikeGuards | None = None
        """Built by :meth:`configure_spike_guard` only when a section asks for a spike guard."""
        self._saved_guards: list[Mapping[str, Any]] | None = None
        self._guard_run = _GuardRun()
        self._resume: ResumePlan | None = None
        """What this fit, resumed from a checkpoint, takes from it (``optim_config.resume``); None for a fresh fit."""
        self._reset_pending: dict[str, Any] | None = None

    @property
    def schedule_free_batches(self) -> int | None:
        """``bn_recompute_batches`` when the config has a schedule-free optimizer, None otherwise (nothing switched)."""
        if self.spec is None:
            return None
        specs = (
            [member.spec for member in self.spec.members] if isinstance(self.spec, OptimizerSetSpec) else [self.spec]
        )
        if not any(schedule_free.is_schedule_free_class(one.optimizer.info.cls) for one in specs):
            return None
        return schedule_free.recompute_batches(self.spec)

    def attach(self, module: torch.nn.Module) -> FitDriver:
        """Make this the driver the mixin ``module`` builds into; returns itself."""
        _DRIVERS[module] = self
        return self

    def start(self, trainer: L.Trainer | None) -> list[dict[str, Any]] | None:
        """Forget the records of an earlier ``configure_optimizers``; return the checkpoint's run lengths on a resume.

        A tuner restoring its own checkpoint (``BatchSizeFinder``) leaves a record behind too: a fit without
        ``ckpt_path`` drops it.
        """
        self.records = []
        saved, self._saved_run_lengths = self._saved_run_lengths, None
        return saved if trainer is not None and trainer.ckpt_path else None

    def configure_clipping(
        self, trainer: L.Trainer | None, specs: Mapping[str | None, Any], records: list[OptimizerRecord]
    ) -> None:
        """Give each optimizer with a ``clipping`` section its adaptive threshold, fresh for each fit."""
        if not specs:
            self.thresholds = self._saved_clipping = None
            return
        saved, self._saved_clipping = self._saved_clipping, None
        self.thresholds = AdaptiveThresholds()
        self.thresholds.configure(specs, [(record.name, record.optimizer) for record in records])
        if saved is not None and trainer is not None and trainer.ckpt_path:
            self.thresholds.load_state_dict(saved, CLIPPING_KEY)
        for record in records:
            record.threshold = self.thresholds.of(record.optimizer)

    def threshold_of(self, optimizer: torch.optim.Optimizer) -> AutoClip | ZClip | None:
        """The adaptive threshold of ``optimizer`` (a torch optimizer), or None."""
        return self.thresholds.of(optimizer) if self.thresholds is not None else None

    def configure_spike_guard(
        self, trainer: L.Trainer | None, specs: Mapping[str | None, SpikeGuardSpec], records: list[OptimizerRecord]
    ) -> None:
        """Give each optimizer with a ``spike_guard`` section its guard, fresh for each fit (continued on a resume).

        Raises:
            OptimConfigError: under a ``GradScaler`` (``16-mixed``), whose own ``found_inf`` replaces the guard's.
        """
        saved, self._saved_guards = self._saved_guards, None
        if not specs:
            self.guards = None
            return
        scaler = grad_scaler(trainer)
        if scaler is not None and scaler.is_enabled():
            raise OptimConfigError(
                f"{guarded_sections(specs)[0]} with precision='16-mixed' is not supported: AMP's GradScaler sets the "
                "step's found_inf itself, which replaces the guard's decision. Use bf16-mixed or 32-bit precision."
            )
        self.guards = SpikeGuards()
        if saved is not None and trainer is not None and trainer.ckpt_path:
            self.guards.load_state_dict(saved)
        self.guards.configure(specs, [(record.name, record.optimizer) for record in records])

    def spike_guard_loss(self, loss: torch.Tensor) -> None:
        """Add ``loss`` (this batch's, detached) to the loss of the coming optimizer step, for ``on: loss``."""
        if self.guards is not None and self.guards.watch_loss:
            self._guard_run.add_loss(loss)

    def guard_step(
        self, trainer: L.Trainer | None, optimizer: Any, clipped: ClipResult | None, module: torch.nn.Module
    ) -> None:
        """Decide on the device whether ``optimizer``'s coming step is a spike, and make it skip itself if so.

        ``clipped`` is what clipping measured for this step (its total norm before clipping is the guard's
        ``grad_norm``), or None when nothing clipped: the norm is measured here.
        """
        optimizer = torch_optimizer(optimizer)
        guard = self.guards.of(optimizer) if self.guards is not None else None
        if guard is None or trainer is None:
            return
        parameters = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if guard.on == "loss":
            value = self._guard_run.take_loss(trainer)
            if value is None:
                return  # training_step returned None: Lightning skips the step itself
        elif clipped is not None and clipped.total is not None:
            value = clipped.total
        elif (sharded := fsdp_model(trainer)) is not None:
            value = sharded.clip_grad_norm_(math.inf)
        else:
            value = gradient_norms([("", p) for p in parameters], None).total
        spike, z = guard(value)
        assert self._guard_run.snapshot is not None  # on_train_start made it
        skip_step(optimizer, parameters, spike, self._guard_run.snapshot)
        assert self.guards is not None  # a guard was found above
        self._guard_run.pending.append((trainer.global_step, self.guards.name_of(optimizer), spike, z))

    def spike_guard_report(self, trainer: L.Trainer) -> tuple[dict[str, torch.Tensor], Any] | None:
        """The guard's values since the last report, for the monitors' collector (one host sync for all): the keys
        ``spike_guard/skipped`` and ``spike_guard/z`` (``spike_guard/<optimizer>/...`` among several), and a function
        that turns them, made numbers, into the metrics and writes the log line of the skipped steps (rank zero)."""
        if self.guards is None or not self._guard_run.pending:
            return None
        return self._guard_run.report(self.guards, trainer.is_global_zero)

    def _report_spike_guard(self, trainer: L.Trainer) -> None:
        """Report on the driver's own (one host read) what no collector took."""
        report = self.spike_guard_report(trainer)
        if report is None:
            return
        values, finish = report
        with torch.no_grad():
            numbers = torch.stack([value.double() for value in values.values()]).tolist()
        metrics = finish(dict(zip(values, numbers, strict=True)))
        if metrics and trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, logging_step(trainer))

    dashboard_category = "Spike guard"

    def dashboard_charts(self) -> dict[str, list[str]]:
        """The dashboard's charts of the spike guard (none without one): skipped steps and the z-score."""
        if self.guards is None:
            return {}
        return {"Skipped steps": ["spike_guard/(?:[^/]+/)?skipped$"], "z-score": ["spike_guard/(?:[^/]+/)?z$"]}

    def built_for(self, scheduler: LRScheduler) -> BuiltScheduler | None:
        """The built scheduler whose torch scheduler is ``scheduler``, or None (one the driver did not build)."""
        return next((r.scheduler for r in self.records if r.scheduler and r.scheduler.scheduler is scheduler), None)

    def _schedulers(self) -> list[OptimizerRecord]:
        return [record for record in self.records if record.scheduler is not None]

    # ------------------------------------------------------------------------------------------ hooks

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        warn_unplaced_mesh_dims(trainer, pl_module)
        if self.spec is not None:
            refuse_replaced_configure_optimizers(pl_module, self.spec.config)
            refuse_dropped_lr_scheduler(trainer, pl_module, self.spec.config)
        # Tuner callbacks run first: a LearningRateFinder that set model.lr also set every group to its lr.
        self._restore_moved_lrs(trainer)
        # After configure_optimizers, before Lightning restores the optimizers from the same checkpoint dict.
        if self._reset_pending is not None:
            self._reset_optimizer_states(self._reset_pending)

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        schedules = self._resume_schedules() if self._resume is not None else None
        # After Lightning restored a checkpoint's lrs: the first resumed step follows a changed schedule too.
        for record in self._schedulers():
            assert record.scheduler is not None  # _schedulers keeps records with one
            if isinstance(record.scheduler.scheduler, ClosedFormLR):
                record.scheduler.scheduler.apply_schedule()
        if self.schedule_free_batches is not None:
            schedule_free.warn_on_lr_logging(trainer)
        # After BatchSizeFinder (on_fit_start) and the restored step count: the run's length as it will be.
        for record in self.records:
            record.follow_run_length(trainer)
        self._restore_lr_factors()
        for record in self.records:
            record.follow_batch_size(trainer)
        if self.guards is not None:
            self._guard_run.start(pl_module)
        if self._resume is not None and schedules is not None:
            optimizers = [type(record.optimizer).__name__ for record in self.records]
            rank_zero_info(policy_line(self._resume, trainer.global_step, optimizers, schedules))
        if self.spec is not None and not pl_module.automatic_optimization:
            schedulers = [(r.where, r.scheduler.scheduler) for r in self.records if r.scheduler is not None]
            self._step_check = SchedulerStepCheck(schedulers, trainer.global_step)
            if self.thresholds is not None:
                self.thresholds.start_use_check(trainer.global_step)

    @override
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.schedule_free_batches is not None:
            schedule_free.to_train_mode(trainer)
        if self.guards is not None:
            # Under manual optimization every batch is a step of its own (global_step counts every optimizer).
            self._guard_run.step_starts(None if not pl_module.automatic_optimization else trainer.global_step)

    @override
    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        # The closure's loss, already divided by accumulate_grad_batches: the step's loss is the sum of its batches'.
        if pl_module.automatic_optimization:
            self.spike_guard_loss(loss)

    @override
    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        # Automatic optimization decides in the mixin's configure_gradient_clipping (after this hook), on its norm.
        if self.guards is not None and not pl_module.automatic_optimization:
            self.guard_step(trainer, optimizer, None, pl_module)

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        # The monitors' collector, if any, took the report at its flush (their hooks run before this one).
        if self.guards is not None and should_log(trainer):
            self._report_spike_guard(trainer)

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The epoch's accumulation comes from GradientAccumulationScheduler itself, whichever callback runs first.
        for record in self.records:
            record.follow_run_length(trainer, at_epoch_start=True)
        self._restore_moved_lrs(trainer)
        for record in self.records:
            record.follow_batch_size(trainer)
        self._check_stepped(trainer)

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._to_eval_mode(trainer, pl_module)
        self._check_stepped(trainer)
        if self.guards is not None:
            self._report_spike_guard(trainer)
            self._guard_run.snapshot = None

    @override
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._to_eval_mode(trainer, pl_module)

    @override
    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._to_eval_mode(trainer, pl_module)

    @override
    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._to_eval_mode(trainer, pl_module)

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn != "fit":
            return
        for record in self.records:
            record.step_on_validation(trainer)

    @override
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self.spec is None:
            return
        if (batches := self.schedule_free_batches) is not None:
            schedule_free.save_evaluation_weights(pl_module, trainer, checkpoint, batches, self._forward(pl_module))
        write_config(checkpoint, self.spec.config)
        if self.thresholds is not None and (clipping := self.thresholds.state_dict()):
            checkpoint[CLIPPING_KEY] = clipping
        if scaled := [saved for record in self.records if (saved := record.saved_lr_scaling()) is not None]:
            checkpoint[LR_SCALING_KEY] = scaled
        if self.guards is not None:
            checkpoint[SPIKE_GUARD_KEY] = self.guards.state_dict()
        if self._schedulers():
            # With several optimizers each record names its optimizer, so a resume finds it whatever the order.
            lengths = [record.saved_run_length() for record in self._schedulers()]
            checkpoint[RUN_LENGTHS_KEY] = [length for length in lengths if length is not None]
        resumed = [
            (record.name, record.run_length.resumed)
            for record in self._schedulers()
            if record.run_length is not None and record.run_length.resumed is not None
        ]
        if resumed or RESUME_KEY in self.spec.config:
            checkpoint[RESUME_CHECKPOINT_KEY] = saved_record(self.spec.resume, resumed)

    @override
    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self.spec is None:
            return
        if CLIPPING_KEY in checkpoint:
            if self.thresholds is not None:
                self.thresholds.load_state_dict(checkpoint[CLIPPING_KEY], CLIPPING_KEY)
            else:  # configure_optimizers has not run yet: it restores the history into the thresholds it builds
                self._saved_clipping = checkpoint[CLIPPING_KEY]
        # The optimizer states restored with it hold these factors; on_train_start scales from them.
        self._saved_lr_scaling = checkpoint.get(LR_SCALING_KEY)
        if SPIKE_GUARD_KEY in checkpoint:
            if self.guards is not None:
                self.guards.load_state_dict(checkpoint[SPIKE_GUARD_KEY])
            else:
                self._saved_guards = checkpoint[SPIKE_GUARD_KEY]
        plan = None
        if trainer.state.fn == "fit":
            plan = self._resume = resume_plan(self.spec.resume, checkpoint.get(RESUME_CHECKPOINT_KEY))
            # Lightning restores the callbacks before configure_optimizers (Trainer._run), which reads this.
            saved = check_saved_run_lengths(checkpoint.get(RUN_LENGTHS_KEY), RUN_LENGTHS_KEY)
            if trainer.strategy.restore_checkpoint_after_setup:
                # FSDP, DeepSpeed: configure_optimizers already ran; on_train_start resizes the schedule.
                for index, record in enumerate(self._schedulers()):
                    if record.run_length is not None:
                        record.run_length.resume(run_length_record(saved, record.name, index))
            else:
                self._saved_run_lengths = saved
        checkpoint.update(states_in_config_order(checkpoint, CHECKPOINT_KEY, self.spec.config))
        check_resumed_config(checkpoint.get(CHECKPOINT_KEY), self.spec.config, plan)
        if plan is not None and plan.resets_optimizer:
            # After the reorder by name: the states become the fresh optimizers', in the config's order.
            if self.records:  # FSDP, DeepSpeed: configure_optimizers already ran
                self._reset_optimizer_states(checkpoint)
            else:
                self._reset_pending = checkpoint

    # ------------------------------------------------------------------------------------------ parts

    def _restore_lr_factors(self) -> None:
        """Give each record the ``lr_scaling`` factor that a checkpoint's optimizer state (loaded into it) holds."""
        saved, self._saved_lr_scaling = self._saved_lr_scaling, None
        scaled = [record for record in self.records if record.lr_scaling is not None]
        for index, record in enumerate(scaled):
            entry = run_length_record(saved, record.name, index)
            if entry is not None:
                record.lr_factor, record.batch_size = float(entry["factor"]), entry.get("batch_size")

    def _reset_optimizer_states(self, checkpoint: dict[str, Any]) -> None:
        """``optimizer_state: reset``: what Lightning restores becomes the state of the optimizers just built.

        Lightning loads ``checkpoint["optimizer_states"]`` into the optimizers and ``checkpoint["lr_schedulers"]``
        into the schedulers after this; a closed-form scheduler's ``base_lrs`` are the configured optimizer's too,
        while its step count (the schedule's position) stays the checkpoint's.
        """
        self._reset_pending = None
        checkpoint["optimizer_states"] = [copy.deepcopy(record.optimizer.state_dict()) for record in self.records]
        for state, record in zip(checkpoint.get("lr_schedulers", []), self._schedulers(), strict=False):
            assert record.scheduler is not None  # _schedulers keeps records with one
            if isinstance(record.scheduler.scheduler, ClosedFormLR):
                state["base_lrs"] = list(record.scheduler.scheduler.base_lrs)

    def _resume_schedules(self) -> list[tuple[str | None, Any, int | None]]:
        """Give each closed-form schedule its resumed form at the restored step; return what the policy line shows."""
        assert self._resume is not None  # called only on a resumed fit
        shown: list[tuple[str | None, Any, int | None]] = []
        for record in self._schedulers():
            assert record.scheduler is not None  # _schedulers keeps records with one
            scheduler = record.scheduler.scheduler
            if not isinstance(scheduler, ClosedFormLR) or record.run_length is None:
                shown.append((record.name, None, None))
                continue
            resumed = self._resume.schedule_at(record.name, scheduler.last_epoch)
            record.run_length.resume_with(resumed, follows_run=self._resume.follows_new_run)
            shown.append((record.name, resumed, scheduler.last_epoch))
        return shown

    def _restore_moved_lrs(self, trainer: L.Trainer) -> None:
        moved, self.moved_lrs = self.moved_lrs, None
        if moved is not None:
            moved.restore(trainer)

    def _check_stepped(self, trainer: L.Trainer) -> None:
        """Under manual optimization, after the first epoch (the user's ``on_train_epoch_end`` included)."""
        if self._step_check is not None:
            self._step_check.check(trainer.global_step)
        if self.thresholds is not None:
            self.thresholds.check_used(trainer.global_step)

    def _to_eval_mode(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (batches := self.schedule_free_batches) is not None:
            schedule_free.to_eval_mode(pl_module, attached_trainer(pl_module), batches, self._forward(pl_module))

    @staticmethod
    def _forward(pl_module: L.LightningModule) -> schedule_free.Forward:
        forward = getattr(pl_module, "schedule_free_forward", None)
        return forward if callable(forward) else lambda batch: schedule_free.forward_inputs(pl_module, batch)


def effective_batch_size(trainer: L.Trainer, key: str = "optim_config.optimizer.lr_scaling") -> tuple[int, str]:
    """The run's effective batch size now: the train loader's batch size x world size x this epoch's accumulation.

    Returns:
        The batch size and how it is made up (``"32 per device x 2 devices x accumulation 2"``).

    Raises:
        OptimConfigError: the train loader's batch size is unknown (several loaders, or a loader that batches
            itself), naming ``key``.

    Examples:
        >>> from types import SimpleNamespace
        >>> loader = torch.utils.data.DataLoader(range(8), batch_size=4)
        >>> trainer = SimpleNamespace(train_dataloader=loader, callbacks=[], accumulate_grad_batches=2, current_epoch=0,
        ...     world_size=2)
        >>> effective_batch_size(trainer)
        (16, '4 per device x 2 devices x accumulation 2')
    """
    loader = trainer.train_dataloader
    per_device = getattr(loader, "batch_size", None)
    if per_device is None:
        per_device = getattr(getattr(loader, "batch_sampler", None), "batch_size", None)
    if not isinstance(per_device, int):
        raise OptimConfigError(
            f"{key} needs the train dataloader's batch size, and {type(loader).__name__} gives none (one "
            "torch DataLoader with batch_size or a batch_sampler with a batch_size attribute is read). Remove "
            "lr_scaling and set the lr for the run's batch size."
        )
    accumulation = epoch_accumulation(trainer, trainer.current_epoch)
    world = trainer.world_size
    devices = "device" if world == 1 else "devices"
    return (
        per_device * world * accumulation,
        f"{per_device} per device x {world} {devices} x accumulation {accumulation}",
    )


def unscaled_lr(scaling: LrScaling | None, trainer: L.Trainer, applied_lr: float) -> tuple[float, str | None]:
    """The configured lr (the lr at ``base_batch_size``) under which ``scaling`` applies ``applied_lr`` at the run's
    effective batch size, and a line saying so (None without ``lr_scaling``).

    Lightning's lr finder sweeps the lrs the optimizer applies, so its suggestion is an applied lr: written to
    ``optimizer.lr`` as it is, ``lr_scaling`` would scale it a second time.

    Examples:
        >>> from types import SimpleNamespace
        >>> loader = torch.utils.data.DataLoader(range(8), batch_size=8)
        >>> trainer = SimpleNamespace(train_dataloader=loader, callbacks=[], accumulate_grad_batches=1, current_epoch=0,
        ...     world_size=1)
        >>> unscaled_lr(LrScaling("linear", 4), trainer, 0.1)
        (0.05, 'lr 0.1 applied at effective batch size 8 (8 per device x 1 device x accumulation 1) is optimizer.lr 0.05 at lr_scaling.base_batch_size 4 (linear: lr x 2)')
    """  # noqa: E501
    if scaling is None:
        return applied_lr, None
    batch_size, parts = effective_batch_size(trainer)
    factor = scaling.factor(batch_size)
    lr = applied_lr / factor
    return lr, (
        f"lr {applied_lr:.6g} applied at effective batch size {batch_size} ({parts}) is optimizer.lr {lr:.6g} at "
        f"lr_scaling.base_batch_size {scaling.base_batch_size} ({scaling.rule}: lr x {factor:.6g})"
    )


class _GuardRun:
    """What the spike guards need across the steps of one fit: the BatchNorm snapshot, the loss of the step under
    way, and each step's decision (device tensors) until the next report."""

    def __init__(self) -> None:
        self.snapshot: RunningStatsSnapshot | None = None
        self.pending: list[tuple[int, str | None, torch.Tensor, torch.Tensor]] = []
        self._step_at: int | None = None
        self._loss: torch.Tensor | None = None

    def start(self, module: torch.nn.Module) -> None:
        self.snapshot, self._step_at, self._loss, self.pending = RunningStatsSnapshot(module), None, None, []

    def step_starts(self, step: int | None) -> None:
        """At each training batch: the first batch of an optimizer step (``step`` changed, or None: always) takes the
        BatchNorm snapshot and starts the step's loss."""
        if step is None or step != self._step_at:
            if self.snapshot is not None:
                self.snapshot.take()
            self._step_at, self._loss = step, None

    def add_loss(self, loss: torch.Tensor) -> None:
        loss = loss.detach()
        self._loss = loss if self._loss is None else self._loss + loss

    def take_loss(self, trainer: L.Trainer) -> torch.Tensor | None:
        """The step's loss, the same on every rank (averaged over the data-parallel ranks: one all-reduce)."""
        loss, self._loss = self._loss, None
        if loss is not None and trainer.world_size > 1:
            loss = trainer.strategy.reduce(loss, reduce_op="mean")
        return loss

    def report(self, guards: SpikeGuards, rank_zero: bool) -> tuple[dict[str, torch.Tensor], Any]:
        pending, self.pending = self.pending, []
        values: dict[str, torch.Tensor] = {}
        for name, (_, guard) in guards.built.items():
            prefix = _guard_prefix(name)
            values[f"{prefix}skipped"] = guard.skipped
            last_z = [z for _, of, _, z in pending if of == name]
            if last_z:
                values[f"{prefix}z"] = last_z[-1]
        flags = {f"\0spike{i}": spike for i, (_, _, spike, _) in enumerate(pending)}
        zs = {f"\0z{i}": z for i, (_, _, _, z) in enumerate(pending)}

        def finish(numbers: dict[str, float]) -> dict[str, float]:
            skipped = [
                (step, name, numbers[f"\0z{i}"])
                for i, (step, name, _, _) in enumerate(pending)
                if numbers[f"\0spike{i}"]
            ]
            if skipped and rank_zero:
                log.warning("spike_guard skipped %s", _describe_skips(skipped, guards))
            return {key: value for key, value in numbers.items() if not key.startswith("\0") and math.isfinite(value)}

        return {**values, **flags, **zs}, finish


def _guard_prefix(name: str | None) -> str:
    return f"spike_guard/{name}/" if name else "spike_guard/"


def _describe_skips(skipped: list[tuple[int, str | None, float]], guards: SpikeGuards) -> str:
    """``step 12 (z = 9.26 > 6.0), step 17 (...)``, naming the optimizer among several."""
    parts = []
    for step, name, z in skipped:
        threshold = guards.built[name][1].z_threshold
        parts.append(f"{f'{name} ' if name else ''}step {step} (z = {z:.3g} > {threshold:g})")
    return ", ".join(parts)


def write_config(checkpoint: dict[str, Any], config: Mapping[str, Any]) -> None:
    """Put ``config`` (the plain ``optim_config``) in ``checkpoint`` and make its hyperparameters plain containers.

    Examples:
        >>> checkpoint = {"hyper_parameters": {"n": 1}, "hparams_type": dict}
        >>> write_config(checkpoint, {"optimizer": {"name": "sgd"}}); checkpoint
        {'hyper_parameters': {'n': 1}, 'optim_config': {'optimizer': {'name': 'sgd'}}}
    """
    for key in [key for key in checkpoint if key.endswith("hyper_parameters")]:
        checkpoint[key] = plain(checkpoint[key])
    # Lightning stores the hparams' class (e.g. DictConfig) here, which weights_only loading refuses.
    for key in [k for k, value in checkpoint.items() if k.endswith("hparams_type") and isinstance(value, type)]:
        del checkpoint[key]
    # Beside the hyperparameters, not inside them: a user's own config must load back without an extra key.
    checkpoint[CHECKPOINT_KEY] = copy.deepcopy(dict(config))


def run_length_record(saved: list[dict[str, Any]] | None, optimizer: str | None, index: int) -> dict[str, Any] | None:
    """A checkpoint's run-length record of one scheduler: by its optimizer's name, or by position (single form).

    Examples:
        >>> run_length_record([{"optimizer": "g", "length": 4}], "g", 0), run_length_record(None, None, 0)
        ({'optimizer': 'g', 'length': 4}, None)
    """
    if optimizer is not None:
        return next((record for record in saved or [] if record.get("optimizer") == optimizer), None)
    return saved[index] if saved and index < len(saved) else None


def check_resumed_config(
    saved: Mapping[str, Any] | None, config: Mapping[str, Any], plan: ResumePlan | None = None
) -> None:
    """Warn for each key a resumed run's ``optim_config`` changed; refuse another optimizer class.

    The ``resume`` section itself, and the keys the fit's resume ``plan`` asked to change (the optimizer's under
    ``optimizer_state: reset``, the scheduler's when the schedule is re-based), are not warned about; under reset
    another optimizer class is fine too (its state is not loaded).

    Raises:
        OptimConfigError: the checkpoint's optimizer (or one of several) is another class than the config's.

    Examples:
        >>> check_resumed_config({"optimizer": {"name": "sgd"}}, {"optimizer": {"name": "adam"}})
        Traceback (most recent call last):
        ...
        lightning_optim.errors.OptimConfigError: Cannot resume: the checkpoint's optimizer is 'sgd' and optim_config \
now asks for 'adam'; its state does not carry over. Resume with the same optimizer, or start a new run (load weights \
with load_from_checkpoint instead).
    """
    if saved is None or saved == config:
        return
    changed = [
        key
        for key in changed_keys(saved, config)
        if key.split(".")[0] != RESUME_KEY and (plan is None or not plan.ignored(key))
    ]
    resets = plan is not None and plan.resets_optimizer
    if [(name, None if resets else cls) for name, cls in _optimizers_of(saved)] != [
        (name, None if resets else cls) for name, cls in _optimizers_of(config)
    ]:
        raise OptimConfigError(
            f"Cannot resume: the checkpoint's optimizer is {_describe(saved)} and optim_config now asks for "
            f"{_describe(config)}; its state does not carry over. Resume with the same optimizer, or "
            "start a new run (load weights with load_from_checkpoint instead)."
        )
    if not changed:
        return
    details = ", ".join(f"{key} ({_lookup(saved, key)!r} -> {_lookup(config, key)!r})" for key in changed)
    warnings.warn(
        f"Resuming with a changed optim_config: {details}. The checkpoint's optimizer state (each group's lr, "
        "momentum and other options) and the scheduler's step count are restored over the new values; the "
        "shape of a closed-form schedule comes from the new config.",
        ResumeConfigWarning,
        stacklevel=2,
    )


def _optimizers_of(config: Mapping[str, Any]) -> list[tuple[str | None, Any]]:
    """Each optimizer's name under ``optimizers`` (None in the single form) and class name, in order."""
    sections = config[OPTIMIZERS_KEY].items() if OPTIMIZERS_KEY in config else [(None, config)]
    return [
        (name, section["optimizer"].get("_target_") or section["optimizer"].get("name")) for name, section in sections
    ]


def _describe(config: Mapping[str, Any]) -> str:
    optimizers = _optimizers_of(config)
    if optimizers[0][0] is None:
        return repr(optimizers[0][1])
    return ", ".join(f"{name}: {optimizer!r}" for name, optimizer in optimizers)


def _lookup(config: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        config = config.get(key) if isinstance(config, dict) else None
    return config
