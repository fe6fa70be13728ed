"""``OptimMixin``: optimizers, parameter groups and LR schedulers for a LightningModule from a plain config.

Examples:
    >>> import lightning as L
    >>> import torch
    >>> class Model(OptimMixin, L.LightningModule):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.layer = torch.nn.Linear(4, 1)
    ...         self.optim_config = {
    ...             "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01},
    ...             "param_groups": [{"name": "no_decay", "params": r"\\.bias$", "weight_decay": 0.0}],
    ...             "scheduler": {"name": "warmup_cosine", "warmup_steps": 10, "total_steps": 100},
    ...         }
    >>> configured = Model().configure_optimizers()
    >>> [group["name"] for group in configured["optimizer"].param_groups]
    ['no_decay', 'default']
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from omegaconf import DictConfig
from typing_extensions import override

from lightning_optim.clipping.adaptive import clipped_sections, refuse_explicit_threshold, refuse_trainer_threshold
from lightning_optim.clipping.arithmetic import ClipResult, check_clip_threshold
from lightning_optim.clipping.step import ClipState, clip_for_step, fsdp_model
from lightning_optim.config.optim_config import OptimConfig
from lightning_optim.config.optimizer_sets import build_optimizer_set
from lightning_optim.config.validation import (
    NamedOptimSpec,
    OptimizerSetSpec,
    OptimSpec,
    clipping_specs,
    resolve_optim_config,
    spike_guard_specs,
    warn_on_zero_lr,
)
from lightning_optim.errors import OptimConfigError
from lightning_optim.fit.driver import (
    CHECKPOINT_KEY,
    FitDriver,
    OptimizerRecord,
    driver_of,
    run_length_record,
    unscaled_lr,
    write_config,
)
from lightning_optim.fit.lr_finder import config_with_lr, configured_lr, moved_lrs, warn_on_lr_before_config
from lightning_optim.fit.manual_optimization import (
    clip_arguments,
    max_steps_counts_every_optimizer,
    unapplied_frequency,
)
from lightning_optim.fit.run_length import RunLength
from lightning_optim.fit.schedule_free import forward_inputs, warn_on_decaying_schedule
from lightning_optim.internals import attached_trainer, grad_scaler, torch_optimizer
from lightning_optim.names import named_parameters
from lightning_optim.optim.build import build_optimizer
from lightning_optim.schedule.build import build_scheduler

if TYPE_CHECKING:
    import lightning as L
    from lightning.pytorch.utilities.types import OptimizerLRScheduler

    # The type checker sees the mixin as the LightningModule it is mixed into (trainer, hparams, the hooks it
    # overrides); at run time it stays a plain class: `class M(OptimMixin, L.LightningModule)` keeps its MRO.
    _LightningModule = L.LightningModule
else:
    _LightningModule = object

__all__ = ["OptimMixin"]

LR_BEFORE_CONFIG = "_lr_before_config"
"""Where a model's own ``self.lr = ...``, assigned before ``optim_config`` exists, waits for it."""


class OptimMixin(_LightningModule):
    """Implements ``configure_optimizers`` from ``self.optim_config``; put it first in the bases.

    ``class Model(OptimMixin, L.LightningModule)`` or, for a model that already has ``configure_optimizers``,
    ``class Model(OptimMixin, ExistingModel)``: the mixin comes first and takes over. Set ``self.optim_config``
    in ``__init__`` (a dict, a ``DictConfig`` or an :class:`~lightning_optim.config.optim_config.OptimConfig`); it is
    checked at once, so a bad name or value fails before any trainer exists.

    What it does beyond Lightning:

    * ``interval: step`` with ``frequency: n`` steps the scheduler every ``n`` optimizer steps, also under
      ``accumulate_grad_batches`` (Lightning's own ``frequency`` counts batches).
    * A schedule sized by the run (``total_steps: null``, ``warmup_ratio``) reaches its floor with the run's last
      optimizer step, also when ``GradientAccumulationScheduler``, ``BatchSizeFinder`` or a reloaded train
      dataloader change the run's length after ``configure_optimizers`` (:mod:`lightning_optim.fit.run_length`).
    * ``plateau`` steps once after each validation run of ``fit`` that logged ``monitor``, never on a stale
      value; a ``monitor`` the validation run did not log is an error listing the metrics that exist (raised
      already in Lightning's sanity check when a logged metric's name is close to it, i.e. a likely typo).
    * ``optimizer.lr_scaling: {rule: linear | sqrt, base_batch_size: 256}`` scales every group's lr to the run's
      effective batch size (train loader's batch size x world size x accumulation), following a ``BatchSizeFinder``,
      each ``GradientAccumulationScheduler`` stage and resumes; the schedule follows the scaled base lrs.
    * ``model.lr`` is ``optim_config.optimizer.lr``, which Lightning's lr finder (``Tuner.lr_find``,
      ``LearningRateFinder``) reads and sets; the run after it warms up from the found lr.
    * A ``configure_optimizers`` assigned on the instance over the mixin's (LightningCLI's ``--optimizer``) is refused
      when the fit starts: checkpoints would record an ``optim_config`` the run did not use.
    * A negative or non-finite ``Trainer(gradient_clip_val=...)`` is refused before the first step (clipping at a
      negative threshold would flip the gradients' sign).
    * Adaptive clipping: ``optim_config.clipping`` (``{name: autoclip, percentile: 10, history: 1000}`` or ``{name:
      zclip, z_threshold: 2.5, alpha: 0.97}``, :mod:`lightning_optim.clipping.adaptive`) clips by norm at a threshold
      set from the run's own norms, on the device; the history is in checkpoints. ``gradient_clip_val`` must be unset.
      Under manual optimization ``self.clip_gradients(opt)`` without a value clips that optimizer at its threshold.
    * Several optimizers: ``{"optimizers": {"generator": {"params": "^generator\\\\.", "optimizer": {...},
      "param_groups": [...], "scheduler": {...}}, "discriminator": {...}}}`` builds one optimizer per name over the
      trainable parameters whose names its ``params`` regex finds, in the config's order (``self.optimizers()``); a
      parameter in two selections or in none is an error naming it. Lightning trains several optimizers only with
      manual optimization.
    * Manual optimization (``automatic_optimization = False``): ``self.clip_gradients(opt, ...)`` clips as
      :meth:`configure_gradient_clipping` does and keeps the norm before clipping for ``GradNormMonitor``.
      Lightning steps no scheduler there: ``training_step`` calls ``self.lr_schedulers()``' ``step()``, and each
      call moves a schedule one unit, so counts in the config (``warmup_steps``, ``total_steps``) are counted in
      those calls; ``interval`` only says what ``total_steps: null`` takes from the run (training batches for
      ``step``, ``max_epochs`` for ``epoch``) and ``frequency`` is not applied (a warning says so). A scheduler not
      stepped during the first epoch is warned about (its lr would stay at warmup's 0).
    * Schedule-free optimizers (``adamw_schedulefree``, ``sgd_schedulefree``, ``radam_schedulefree``) are switched to
      their training weights before each training batch and to their evaluation weights when validation, test or
      predict starts and when training ends; a checkpoint saved during training holds the evaluation weights and the
      run goes on unchanged. ``optimizer.bn_recompute_batches: n`` recomputes BatchNorm statistics at the evaluation
      weights from ``n`` training batches before each validation (:mod:`lightning_optim.fit.schedule_free`).
    * Checkpoints hold the config (under ``"optim_config"``) and the hyperparameters as plain containers (they load
      with ``weights_only=True``, also after ``save_hyperparameters`` on a ``DictConfig``); resuming with a different
      ``optim_config`` warns naming each changed key, and a different optimizer class is refused.
    """

    fold_clipping: bool = True
    """Let a fused optimizer's step do norm clipping (one read of the gradients); False always scales them here."""

    @property
    def optim_config(self) -> dict[str, Any]:
        """The validated config as plain containers."""
        return self._spec().config

    @optim_config.setter
    def optim_config(self, config: Mapping[str, Any] | DictConfig | OptimConfig) -> None:
        spec = resolve_optim_config(config)
        warn_on_zero_lr(spec, stacklevel=2)
        warn_on_decaying_schedule(spec, stacklevel=3)
        if LR_BEFORE_CONFIG in self.__dict__:
            warn_on_lr_before_config(type(self).__name__, self.__dict__.pop(LR_BEFORE_CONFIG), spec)
        self.__dict__["_optim_spec"] = spec
        if (driver := driver_of(self)) is not None:
            driver.spec = spec
        # After save_hyperparameters(cfg) the hparams are the caller's own DictConfig (Hydra's is in struct mode,
        # where a new key raises): leave it untouched; the driver still puts optim_config in checkpoints.
        if not isinstance(self.hparams, DictConfig):
            self.hparams["optim_config"] = copy.deepcopy(spec.config)

    @property
    def lr(self) -> float:
        """``optim_config["optimizer"]["lr"]`` (the optimizer's default if unset): the lr Lightning's lr finder tunes.

        Assigning it assigns ``optim_config`` again with the new lr (checked, ``hparams`` updated); during a fit the
        built schedule goes on from the new base lr (:mod:`lightning_optim.fit.lr_finder`), and with ``lr_scaling``
        the value assigned is the lr applied at the fit's effective batch size (what Lightning's finder sweeps): the
        config gets it divided by the scaling factor. With several optimizers there is no single lr: reading or
        assigning it raises ``OptimConfigError``. Before ``optim_config`` is set, a value the model assigned to
        ``self.lr`` itself.
        """
        if "_optim_spec" not in self.__dict__ and LR_BEFORE_CONFIG in self.__dict__:
            return self.__dict__[LR_BEFORE_CONFIG]
        return configured_lr(self._spec())

    @lr.setter
    def lr(self, value: float) -> None:
        if "_optim_spec" not in self.__dict__:
            self.__dict__[LR_BEFORE_CONFIG] = value
            return
        old = configured_lr(self._spec())
        spec = self._spec()
        assert isinstance(spec, OptimSpec)  # configured_lr refused several optimizers
        trainer, driver = attached_trainer(self), driver_of(self)
        if driver is not None and trainer is not None and trainer.state.fn == "fit":
            value, scaled = unscaled_lr(spec.optimizer.lr_scaling, trainer, value)
            if scaled is not None:
                rank_zero_info(f"model.lr set during a fit (Lightning's lr finder): {scaled}")
        self.optim_config = config_with_lr(self.optim_config, value, spec)
        if driver is not None:
            new = self._spec()
            assert isinstance(new, OptimSpec)
            driver.moved_lrs = moved_lrs(trainer, new, self, old, value)

    def _spec(self) -> OptimSpec | OptimizerSetSpec:
        """The validated config resolved for the builders (optimizer class and options, compiled rules, scheduler)."""
        try:
            return self.__dict__["_optim_spec"]
        except KeyError:
            raise AttributeError(
                f"{type(self).__name__} uses OptimMixin but never set self.optim_config in __init__, e.g. "
                "self.optim_config = {'optimizer': {'name': 'adamw', 'lr': 1e-3}}."
            ) from None

    @property
    def optimizer_names(self) -> tuple[str, ...]:
        """The names of the optimizers under ``optim_config.optimizers``, in ``self.optimizers()`` order (empty for
        the single form): the monitors' keys use them (``NamesOptimizers``)."""
        spec = self._spec()
        return tuple(member.name for member in spec.members) if isinstance(spec, OptimizerSetSpec) else ()

    @override
    def configure_callbacks(self) -> Sequence[L.Callback] | L.Callback:
        """The per-fit driver (:class:`~lightning_optim.fit.driver.FitDriver`), a fresh one for each run.

        A model with callbacks of its own returns ``[*super().configure_callbacks(), *its_own]``.
        """
        trainer, previous = attached_trainer(self), driver_of(self)
        if trainer is not None and type(previous) is FitDriver:
            # The last run's driver leaves as this run's arrives (a checkpoint saved after the fit still had it).
            # Lightning would replace it too, but announce it as an override of a callback the user passed.
            trainer.callbacks = [callback for callback in trainer.callbacks if callback is not previous]  # type: ignore[attr-defined]  # set by Lightning's connector
        return [FitDriver(self._spec()).attach(self)]

    def _driver(self, trainer: L.Trainer | None) -> FitDriver:
        """The driver of this run; without a trainer, a stand-in that nothing calls."""
        driver = driver_of(self)
        if trainer is None:
            return driver or FitDriver(self._spec())
        if driver is None or not any(callback is driver for callback in trainer.callbacks):  # type: ignore[attr-defined]  # set by Lightning's connector
            raise OptimConfigError(
                f"{type(self).__name__}.configure_callbacks did not return OptimMixin's FitDriver, which runs the "
                "schedules, plateau stepping, checkpoint entries and adaptive clipping during the fit. Return "
                "[*super().configure_callbacks(), ...your callbacks] from it."
            )
        return driver

    @override
    def configure_optimizers(self) -> OptimizerLRScheduler:
        trainer = attached_trainer(self)
        check_clip_threshold(trainer)
        spec = self._spec()
        driver = self._driver(trainer)
        # On resume the checkpoint's run lengths (Lightning restores the callbacks before configure_optimizers).
        saved = driver.start(trainer)
        if isinstance(spec, OptimizerSetSpec):
            return self._configure_optimizer_set(spec, driver, trainer, saved)
        optimizer = build_optimizer(self, spec.optimizer)
        _report_split(optimizer)
        record = OptimizerRecord(optimizer, lr_scaling=spec.optimizer.lr_scaling)
        self._configure_clipping(spec, driver, trainer, [record])
        if spec.scheduler is not None:
            record.run_length = RunLength(spec.scheduler, record.where)
            length = record.run_length.at_build(trainer, run_length_record(saved, None, 0))
            record.scheduler = build_scheduler(optimizer, spec.scheduler, length)
            record.strict = spec.scheduler.config.get("strict", True)
        self._keep(driver, [record])
        if record.scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": record.scheduler.lightning_config}

    def _configure_optimizer_set(
        self, spec: OptimizerSetSpec, driver: FitDriver, trainer: L.Trainer | None, saved: list[dict[str, Any]] | None
    ) -> OptimizerLRScheduler:
        """One ``{"optimizer", "lr_scheduler"}`` per named optimizer, in the config's order (``self.optimizers()``)."""
        lengths: dict[str, RunLength] = {}

        def length(member: NamedOptimSpec) -> int | None:
            assert member.spec.scheduler is not None  # asked only for a member with a scheduler
            lengths[member.name] = RunLength(member.spec.scheduler, f"optim_config.{member.where}.scheduler")
            return lengths[member.name].at_build(trainer, run_length_record(saved, member.name, 0))

        records = [
            OptimizerRecord(
                optimizer,
                member.name,
                f"optim_config.{member.where}.scheduler",
                built,
                lengths.get(member.name) if built is not None else None,
                strict=member.spec.scheduler.config.get("strict", True) if member.spec.scheduler else True,
                lr_scaling=member.spec.optimizer.lr_scaling,
            )
            for member, (optimizer, built) in zip(spec.members, build_optimizer_set(self, spec, length), strict=True)
        ]
        for record in records:
            _report_split(record.optimizer)
        self._configure_clipping(spec, driver, trainer, records)
        self._keep(driver, records)
        sized_by_run = [
            f"optim_config.{member.where}.scheduler"
            for member in spec.members
            if member.spec.scheduler is not None and member.spec.scheduler.needs_run_length
        ]
        message = max_steps_counts_every_optimizer(trainer, len(spec.members), sized_by_run)
        if message is not None:
            warnings.warn(message, UserWarning, stacklevel=3)
        return [  # type: ignore[return-value]  # Lightning takes dicts with and without a scheduler in one list
            {"optimizer": r.optimizer, **({"lr_scheduler": r.scheduler.lightning_config} if r.scheduler else {})}
            for r in records
        ]

    def _configure_clipping(
        self,
        spec: OptimSpec | OptimizerSetSpec,
        driver: FitDriver,
        trainer: L.Trainer | None,
        records: list[OptimizerRecord],
    ) -> None:
        """Each optimizer's adaptive threshold (``clipping``), fresh for each fit, refused beside gradient_clip_val;
        and its spike guard (``spike_guard``)."""
        specs = clipping_specs(spec)
        refuse_trainer_threshold(trainer, clipped_sections(specs))
        driver.configure_clipping(trainer, specs, records)
        self.clip_state.adaptive = driver.thresholds is not None
        driver.configure_spike_guard(trainer, spike_guard_specs(spec), records)

    def _keep(self, driver: FitDriver, records: list[OptimizerRecord]) -> None:
        driver.records = records
        scheduled = [(record.where, record.scheduler) for record in records if record.scheduler is not None]
        if not self.automatic_optimization and (message := unapplied_frequency(scheduled)):
            warnings.warn(message, UserWarning, stacklevel=4)

    @override
    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        driver = driver_of(self)
        built = driver.built_for(scheduler) if driver is not None else None
        if built is None:
            super().lr_scheduler_step(scheduler, metric)
        elif built.interval == "epoch" or self.trainer.global_step % built.frequency == 0:
            built.advance()

    @functools.cached_property
    def clip_state(self) -> ClipState:
        """What clipping measured at the last step and what the monitors ask of the next (``ReportsClipping``)."""
        return ClipState()

    @override
    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: Any = None,
    ) -> None:
        """Clip as Lightning's ``gradient_clip_val``/``gradient_clip_algorithm`` ask, keeping what clipping measured.

        The total norm before clipping, the norm after it and whether it fired stay on the device in
        ``self.clip_state.last`` (a :class:`~lightning_optim.clipping.arithmetic.ClipResult`), for the monitors: no
        second
        pass over the gradients, no host sync. :func:`~lightning_optim.clipping.step.clip_for_step` decides how: a fused
        optimizer (torch's Adam, AdamW, SGD with ``fused=True``) clipping by norm does the scaling in its own step
        (set ``fold_clipping = False`` on the class to always scale the gradients here); FSDP clips through the
        wrapper's ``clip_grad_norm_``; under AMP's ``GradScaler`` the still-scaled gradients of a fused optimizer are
        measured and reported unscaled; ``GradNormMonitor(nonfinite="skip")`` (``clip_state.skip_nonfinite``) skips
        steps whose total norm is NaN/Inf, BatchNorm running statistics included. Then an optimizer with a
        ``spike_guard`` decides, on the device, whether to skip this step
        (:meth:`~lightning_optim.fit.driver.FitDriver.guard_step`).
        """
        self.clip_state.last = self._clip_for_step(optimizer, gradient_clip_val, gradient_clip_algorithm)
        if (driver := driver_of(self)) is not None and driver.guards is not None:
            driver.guard_step(attached_trainer(self), optimizer, self.clip_state.last, self)

    def spike_guard_loss(self, loss: torch.Tensor) -> None:
        """Under manual optimization, give the spike guard (``spike_guard: {on: loss}``) the loss of the coming
        ``opt.step()``: call it in ``training_step`` before the step (several calls in one step add up). Under
        automatic optimization the loss ``training_step`` returns is taken by itself.
        """
        if (driver := driver_of(self)) is not None:
            driver.spike_guard_loss(loss)

    def _adaptive_threshold(self, optimizer: Any) -> Any:
        driver = driver_of(self)
        return driver.threshold_of(torch_optimizer(optimizer)) if driver is not None else None

    def _clip_for_step(self, optimizer: Any, threshold: float | None, algorithm: Any) -> ClipResult | None:
        trainer = attached_trainer(self)
        state = self.clip_state
        return clip_for_step(
            optimizer,
            named_parameters(self),
            threshold or self._adaptive_threshold(optimizer),
            algorithm,
            sharded=fsdp_model(trainer),
            scaler=grad_scaler(trainer),
            fold=self.fold_clipping,
            group_of=state.group_of,
            skip_nonfinite=state.skip_nonfinite,
        )

    @override
    def clip_gradients(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Lightning's ``clip_gradients`` (what ``training_step`` calls under manual optimization), keeping what it
        measured as :meth:`configure_gradient_clipping` does.

        Arguments resolve as in Lightning (a None takes the Trainer's value). An optimizer with a ``clipping`` section
        clips at its adaptive threshold when no value is given (a value as well is refused). The result is
        ``clip_state.last`` and,
        under manual optimization, waits in ``clip_state.unstepped`` for that optimizer's step, where
        ``GradNormMonitor`` takes it: the logged norms are the ones before this clipping. Under a ``GradScaler``
        (``16-mixed``) with manual optimization the gradients are still scaled here (Lightning unscales inside
        ``optimizer.step``), so Lightning's own clipping runs and a warning says the norms are not measured.
        """
        trainer = attached_trainer(self)
        scaler = grad_scaler(trainer)
        if self._adaptive_threshold(optimizer) is not None:
            refuse_explicit_threshold(gradient_clip_val, scaler)
        if trainer is None or self.fabric is not None or (scaler is not None and scaler.is_enabled()):
            if scaler is not None and scaler.is_enabled() and not self.automatic_optimization:
                rank_zero_warn(
                    "OptimMixin.clip_gradients under manual optimization with a GradScaler (16-mixed): the gradients "
                    "are still scaled when training_step clips, so Lightning's own clipping runs and grad_norm/* "
                    "show the norms GradNormMonitor measures at the step, after clipping."
                )
            super().clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        threshold, algorithm = clip_arguments(trainer, gradient_clip_val, gradient_clip_algorithm)
        result = self._clip_for_step(optimizer, threshold, algorithm)
        self.clip_state.last = result
        if not self.automatic_optimization and result is not None:
            self.clip_state.unstepped[id(torch_optimizer(optimizer))] = result

    def schedule_free_forward(self, batch: Any) -> Any:
        """The forward that recomputes BatchNorm statistics for a schedule-free optimizer (``bn_recompute_batches``):
        ``self(batch[0])`` for a tuple or list batch, ``self(batch)`` otherwise. Override it for another layout."""
        return forward_inputs(self, batch)

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A weights-only checkpoint (``ModelCheckpoint(save_weights_only=True)``): Lightning calls no callback's
        ``on_save_checkpoint`` there, so the driver wrote nothing; the config and plain hyperparameters go in here."""
        super().on_save_checkpoint(checkpoint)
        if CHECKPOINT_KEY not in checkpoint:
            write_config(checkpoint, self.optim_config)


def _report_split(optimizer: torch.optim.Optimizer) -> None:
    """Print which parameters Muon and its auxiliary optimizer take (``MuonWithAux.split_summary``), once per build."""
    split_summary = getattr(optimizer, "split_summary", None)
    if split_summary is not None:
        rank_zero_info(split_summary())
