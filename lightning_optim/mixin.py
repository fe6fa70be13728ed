"""``OptimMixin``: optimizers, parameter groups and LR schedulers for a LightningModule from a plain config.

Example:
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
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from omegaconf import DictConfig
from typing_extensions import override

from lightning_optim.adaptive_clipping import (
    AdaptiveThresholds,
    clipped_sections,
    refuse_explicit_threshold,
    refuse_trainer_threshold,
)
from lightning_optim.clipping import ClipResult, ClipState, check_clip_threshold, clip_for_step, fsdp_model
from lightning_optim.config import OPTIMIZERS_KEY, OptimConfig, changed_keys, plain
from lightning_optim.errors import OptimConfigError
from lightning_optim.internals import attached_trainer, grad_scaler, torch_optimizer
from lightning_optim.lightning_cli import refuse_dropped_lr_scheduler, refuse_replaced_configure_optimizers
from lightning_optim.lr_finder import configured_lr, restore_moved_lrs, set_lr, warn_on_lr_before_config
from lightning_optim.lr_schedulers import ClosedFormLR, step_plateau
from lightning_optim.manual_optimization import (
    SchedulerStepCheck,
    clip_arguments,
    max_steps_counts_every_optimizer,
    unapplied_frequency,
)
from lightning_optim.names import named_parameters
from lightning_optim.optimizer_sets import build_optimizer_set
from lightning_optim.optimizers import build_optimizer
from lightning_optim.run_length import ResumeConfigWarning, RunLength
from lightning_optim.schedule_free import (
    forward_inputs,
    recompute_batches,
    save_evaluation_weights,
    to_eval_mode,
    to_train_mode,
    warn_on_decaying_schedule,
    warn_on_lr_logging,
)
from lightning_optim.scheduler_builder import BuiltScheduler, build_scheduler
from lightning_optim.validation import (
    NamedOptimSpec,
    OptimizerSetSpec,
    OptimSpec,
    clipping_specs,
    resolve_optim_config,
    warn_on_zero_lr,
)

if TYPE_CHECKING:
    import lightning as L
    from lightning.pytorch.utilities.types import OptimizerLRScheduler

    # The type checker sees the mixin as the LightningModule it is mixed into (trainer, hparams, the hooks it
    # overrides); at run time it stays a plain class: `class M(OptimMixin, L.LightningModule)` keeps its MRO.
    _LightningModule = L.LightningModule
else:
    _LightningModule = object

__all__ = ["OptimMixin"]

CHECKPOINT_KEY = "optim_config"
"""The checkpoint entry holding the ``optim_config`` a run was trained with (plain containers)."""

RUN_LENGTHS_KEY = "optim_run_lengths"
"""The checkpoint entry holding, per scheduler, the run length it was built with (``{"interval", "length"}``)."""

CLIPPING_KEY = "optim_clipping"
"""The checkpoint entry holding the adaptive clipping history, per optimizer (``{"optimizer", "config", "state"}``)."""


class OptimMixin(_LightningModule):
    """Implements ``configure_optimizers`` from ``self.optim_config``; put it first in the bases.

    ``class Model(OptimMixin, L.LightningModule)`` or, for a model that already has ``configure_optimizers``,
    ``class Model(OptimMixin, ExistingModel)``: the mixin comes first and takes over. Set ``self.optim_config``
    in ``__init__`` (a dict, a ``DictConfig`` or an :class:`~lightning_optim.config.OptimConfig`); it is
    checked at once, so a bad name or value fails before any trainer exists.

    What it does beyond Lightning:

    * ``interval: step`` with ``frequency: n`` steps the scheduler every ``n`` optimizer steps, also under
      ``accumulate_grad_batches`` (Lightning's own ``frequency`` counts batches).
    * A schedule sized by the run (``total_steps: null``, ``warmup_ratio``) reaches its floor with the run's last
      optimizer step, also when ``GradientAccumulationScheduler``, ``BatchSizeFinder`` or a reloaded train
      dataloader change the run's length after ``configure_optimizers`` (:mod:`lightning_optim.run_length`).
    * ``plateau`` steps once after each validation run of ``fit`` that logged ``monitor``, never on a stale
      value; a ``monitor`` the validation run did not log is an error listing the metrics that exist (raised
      already in Lightning's sanity check when a logged metric's name is close to it, i.e. a likely typo).
    * ``model.lr`` is ``optim_config.optimizer.lr``, which Lightning's lr finder (``Tuner.lr_find``,
      ``LearningRateFinder``) reads and sets; the run after it warms up from the found lr.
    * A ``configure_optimizers`` assigned on the instance over the mixin's (LightningCLI's ``--optimizer``) is refused
      when the fit starts: checkpoints would record an ``optim_config`` the run did not use.
    * A negative or non-finite ``Trainer(gradient_clip_val=...)`` is refused before the first step (clipping at a
      negative threshold would flip the gradients' sign).
    * Adaptive clipping: ``optim_config.clipping`` (``{name: autoclip, percentile: 10, history: 1000}`` or ``{name:
      zclip, z_threshold: 2.5, alpha: 0.97}``, :mod:`lightning_optim.adaptive_clipping`) clips by norm at a threshold
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
      weights from ``n`` training batches before each validation (:mod:`lightning_optim.schedule_free`).
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
        validated = spec.config
        warn_on_lr_before_config(self, spec)
        self.__dict__["_optim_spec"] = spec
        # After save_hyperparameters(cfg) the hparams are the caller's own DictConfig (Hydra's is in struct mode,
        # where a new key raises): leave it untouched; on_save_checkpoint still puts optim_config in checkpoints.
        if not isinstance(self.hparams, DictConfig):
            self.hparams["optim_config"] = copy.deepcopy(validated)

    @property
    def lr(self) -> float:
        """``optim_config["optimizer"]["lr"]`` (the optimizer's default if unset): the lr Lightning's lr finder tunes.

        Assigning it assigns ``optim_config`` again with the new lr (checked, ``hparams`` updated); during a fit the
        built schedule goes on from the new base lr (:mod:`lightning_optim.lr_finder`). With several optimizers
        there is no single lr: reading or assigning it raises ``OptimConfigError``.
        """
        return configured_lr(self)

    @lr.setter
    def lr(self, value: float) -> None:
        set_lr(self, value)

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
    def configure_optimizers(self) -> OptimizerLRScheduler:
        check_clip_threshold(attached_trainer(self))
        spec = self._spec()
        self.__dict__["_built_schedulers"] = []
        self.__dict__["_scheduler_sections"] = []
        # On resume the checkpoint's run length (Lightning restores the module before configure_optimizers). A tuner
        # restoring its own checkpoint (BatchSizeFinder) leaves one behind too: a fit without ckpt_path drops it.
        trainer = attached_trainer(self)
        saved = self.__dict__.pop("_saved_run_lengths", None)
        if trainer is None or not trainer.ckpt_path:
            saved = None
        if isinstance(spec, OptimizerSetSpec):
            return self._configure_optimizer_set(spec, trainer, saved)
        optimizer = build_optimizer(self, spec.optimizer)
        self._configure_clipping(spec, [(None, optimizer)])
        if spec.scheduler is None:
            return optimizer
        length = RunLength(spec.scheduler)
        built = build_scheduler(optimizer, spec.scheduler, length.at_build(trainer, saved and saved[0]))
        built.run_length = length
        self._keep_built(built, "optim_config.scheduler", spec.scheduler.config)
        return {"optimizer": optimizer, "lr_scheduler": built.lightning_config}

    def _configure_optimizer_set(
        self, spec: OptimizerSetSpec, trainer: L.Trainer | None, saved: list[dict[str, Any]] | None
    ) -> OptimizerLRScheduler:
        """One ``{"optimizer", "lr_scheduler"}`` per named optimizer, in the config's order (``self.optimizers()``)."""
        lengths: dict[str, RunLength] = {}

        def length(member: NamedOptimSpec) -> int | None:
            assert member.spec.scheduler is not None  # asked only for a member with a scheduler
            lengths[member.name] = RunLength(member.spec.scheduler, f"optim_config.{member.where}.scheduler")
            return lengths[member.name].at_build(trainer, _run_length_record(saved, member.name, 0))

        configured: list[Any] = []
        optimizers_built = build_optimizer_set(self, spec, length)
        self._configure_clipping(spec, [(m.name, o) for m, (o, _) in zip(spec.members, optimizers_built, strict=True)])
        for member, (optimizer, built) in zip(spec.members, optimizers_built, strict=True):
            if built is None:
                configured.append({"optimizer": optimizer})
                continue
            assert member.spec.scheduler is not None  # built only from a scheduler section
            built.run_length = lengths[member.name]
            where = f"optim_config.{member.where}.scheduler"
            self._keep_built(built, where, member.spec.scheduler.config, member.name)
            configured.append({"optimizer": optimizer, "lr_scheduler": built.lightning_config})
        sized_by_run = [
            f"optim_config.{member.where}.scheduler"
            for member in spec.members
            if member.spec.scheduler is not None and member.spec.scheduler.needs_run_length
        ]
        message = max_steps_counts_every_optimizer(trainer, len(spec.members), sized_by_run)
        if message is not None:
            warnings.warn(message, UserWarning, stacklevel=3)
        return configured

    def _configure_clipping(
        self, spec: OptimSpec | OptimizerSetSpec, optimizers: list[tuple[str | None, torch.optim.Optimizer]]
    ) -> None:
        """Each optimizer's adaptive threshold (``clipping``), fresh for each fit; refused beside gradient_clip_val."""
        specs = clipping_specs(spec)
        trainer = attached_trainer(self)
        refuse_trainer_threshold(trainer, clipped_sections(specs))
        thresholds = self._adaptive_thresholds()
        thresholds.configure(specs, optimizers, resuming=trainer is not None and bool(trainer.ckpt_path))
        self.clip_state.adaptive = bool(thresholds)

    def _adaptive_thresholds(self) -> AdaptiveThresholds:
        return self.__dict__.setdefault("_adaptive", AdaptiveThresholds())

    def _keep_built(
        self, built: BuiltScheduler, where: str, config: dict[str, Any], optimizer: str | None = None
    ) -> None:
        """Keep a built scheduler with its key path, its section and the name of its optimizer (several only)."""
        self.__dict__["_built_schedulers"].append(built)
        self.__dict__["_scheduler_sections"].append((where, config, optimizer))
        if not self.automatic_optimization and (message := unapplied_frequency([(where, built)])):
            warnings.warn(message, UserWarning, stacklevel=3)

    def _built_for(self, scheduler: Any) -> BuiltScheduler | None:
        return next((b for b in self.__dict__.get("_built_schedulers", []) if b.scheduler is scheduler), None)

    @override
    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        built = self._built_for(scheduler)
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
        ``self.clip_state.last`` (a :class:`~lightning_optim.clipping.ClipResult`), for the monitors: no second pass
        over the gradients, no host sync. :func:`~lightning_optim.clipping.clip_for_step` decides how: a fused
        optimizer (torch's Adam, AdamW, SGD with ``fused=True``) clipping by norm does the scaling in its own step
        (set ``fold_clipping = False`` on the class to always scale the gradients here); FSDP clips through the
        wrapper's ``clip_grad_norm_``; under AMP's ``GradScaler`` the still-scaled gradients of a fused optimizer are
        measured and reported unscaled; ``GradNormMonitor(nonfinite="skip")`` (``clip_state.skip_nonfinite``) skips
        steps whose total norm is NaN/Inf, BatchNorm running statistics included.
        """
        self.clip_state.last = self._clip_for_step(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def _clip_for_step(self, optimizer: Any, threshold: float | None, algorithm: Any) -> ClipResult | None:
        trainer = attached_trainer(self)
        state = self.clip_state
        return clip_for_step(
            optimizer,
            named_parameters(self),
            threshold or self._adaptive_thresholds().of(torch_optimizer(optimizer)),
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
        adaptive = self._adaptive_thresholds().of(torch_optimizer(optimizer))
        if adaptive is not None:
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

    @override
    def on_fit_start(self) -> None:
        super().on_fit_start()
        refuse_replaced_configure_optimizers(self)
        refuse_dropped_lr_scheduler(self)
        # Callbacks' on_fit_start ran first: a LearningRateFinder that set model.lr also set every group to its lr.
        restore_moved_lrs(self)

    @override
    def on_train_start(self) -> None:
        super().on_train_start()
        # After Lightning restored a checkpoint's lrs: the first resumed step follows a changed schedule too. Not
        # during an lr finder's search, whose own schedule is the registered one.
        registered = [config.scheduler for config in self.trainer.lr_scheduler_configs]
        for built in self.__dict__.get("_built_schedulers", []):
            if isinstance(built.scheduler, ClosedFormLR) and any(built.scheduler is s for s in registered):
                built.scheduler.apply_schedule()
        warn_on_lr_logging(self.trainer)
        # After BatchSizeFinder (on_fit_start) and the restored step count: the run's length as it will be.
        for built in self.__dict__.get("_built_schedulers", []):
            built.follow_run_length(self.trainer)
        if not self.automatic_optimization:
            built = self.__dict__.get("_built_schedulers", [])
            sections = self.__dict__.get("_scheduler_sections", [])
            schedulers = [(where, one.scheduler) for (where, _, _), one in zip(sections, built, strict=True)]
            self.__dict__["_step_check"] = SchedulerStepCheck(schedulers, self.trainer.global_step)
            self._adaptive_thresholds().start_use_check(self.trainer.global_step)

    @override
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        to_train_mode(attached_trainer(self))
        return super().on_train_batch_start(batch, batch_idx)

    @override
    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        # After every callback's hook: GradientAccumulationScheduler's factor, a reloaded train dataloader.
        for built in self.__dict__.get("_built_schedulers", []):
            built.follow_run_length(self.trainer, at_epoch_start=True)
        restore_moved_lrs(self)
        self._check_schedulers_stepped()

    @override
    def on_train_end(self) -> None:
        super().on_train_end()
        self._schedule_free_eval()
        self._check_schedulers_stepped()

    def _check_schedulers_stepped(self) -> None:
        """Under manual optimization, after the first epoch (the user's ``on_train_epoch_end`` included)."""
        check = self.__dict__.get("_step_check")
        if check is not None:
            check.check(self.trainer.global_step)
        self._adaptive_thresholds().check_used(self.trainer.global_step)

    def schedule_free_forward(self, batch: Any) -> Any:
        """The forward that recomputes BatchNorm statistics for a schedule-free optimizer (``bn_recompute_batches``):
        ``self(batch[0])`` for a tuple or list batch, ``self(batch)`` otherwise. Override it for another layout."""
        return forward_inputs(self, batch)

    def _schedule_free_eval(self) -> None:
        batches = recompute_batches(self._spec())
        to_eval_mode(self, attached_trainer(self), batches, self.schedule_free_forward)

    @override
    def on_validation_start(self) -> None:
        super().on_validation_start()
        self._schedule_free_eval()

    @override
    def on_test_start(self) -> None:
        super().on_test_start()
        self._schedule_free_eval()

    @override
    def on_predict_start(self) -> None:
        super().on_predict_start()
        self._schedule_free_eval()

    @override
    def on_validation_end(self) -> None:
        super().on_validation_end()
        trainer = self.trainer
        if trainer.state.fn != "fit":
            return
        sections = self.__dict__.get("_scheduler_sections", [])
        for built, (_, section, _) in zip(self.__dict__.get("_built_schedulers", []), sections, strict=True):
            if built.steps_on_validation:
                strict = built.lightning_config.get("strict", section.get("strict", True))
                step_plateau(built.scheduler, trainer.callback_metrics, strict, sanity_check=trainer.sanity_checking)

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        batches = recompute_batches(self._spec())
        save_evaluation_weights(self, attached_trainer(self), checkpoint, batches, self.schedule_free_forward)
        for key in [key for key in checkpoint if key.endswith("hyper_parameters")]:
            checkpoint[key] = plain(checkpoint[key])
        # Lightning stores the hparams' class (e.g. DictConfig) here, which weights_only loading refuses.
        for key in [
            key for key, value in checkpoint.items() if key.endswith("hparams_type") and isinstance(value, type)
        ]:
            del checkpoint[key]
        # Beside the hyperparameters, not inside them: a user's own config must load back without an extra key.
        checkpoint[CHECKPOINT_KEY] = copy.deepcopy(self.optim_config)
        built = self.__dict__.get("_built_schedulers", [])
        sections = self.__dict__.get("_scheduler_sections", [])
        if clipping := self._adaptive_thresholds().state_dict():
            checkpoint[CLIPPING_KEY] = clipping
        if built:
            # With several optimizers each record names its optimizer, so a resume finds it whatever the order.
            checkpoint[RUN_LENGTHS_KEY] = [
                {**one.run_length.saved(), **({"optimizer": optimizer} if optimizer else {})}
                for one, (_, _, optimizer) in zip(built, sections, strict=True)
                if one.run_length is not None
            ]

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if CLIPPING_KEY in checkpoint:
            self._adaptive_thresholds().load_state_dict(checkpoint[CLIPPING_KEY])
        trainer = attached_trainer(self)
        if trainer is not None and trainer.state.fn == "fit":
            # Lightning restores the module before configure_optimizers (Trainer._run), which reads this.
            saved = checkpoint.get(RUN_LENGTHS_KEY)
            if trainer.strategy.restore_checkpoint_after_setup:
                # FSDP, DeepSpeed: configure_optimizers already ran; on_train_start resizes the schedule.
                built = self.__dict__.get("_built_schedulers", [])
                sections = self.__dict__.get("_scheduler_sections", [])
                for index, (one, (_, _, optimizer)) in enumerate(zip(built, sections, strict=True)):
                    if one.run_length is not None:
                        one.run_length.resume(_run_length_record(saved, optimizer, index))
            else:
                self.__dict__["_saved_run_lengths"] = saved
        saved = checkpoint.get(CHECKPOINT_KEY)
        if saved is None or saved == self.optim_config:
            return
        changed = changed_keys(saved, self.optim_config)
        if _optimizers_of(saved) != _optimizers_of(self.optim_config):
            raise OptimConfigError(
                f"Cannot resume: the checkpoint's optimizer is {_describe(saved)} and optim_config now asks for "
                f"{_describe(self.optim_config)}; its state does not carry over. Resume with the same optimizer, or "
                "start a new run (load weights with load_from_checkpoint instead)."
            )
        details = ", ".join(
            f"{key} ({_lookup(saved, key)!r} -> {_lookup(self.optim_config, key)!r})" for key in changed
        )
        warnings.warn(
            f"Resuming with a changed optim_config: {details}. The checkpoint's optimizer state (each group's lr, "
            "momentum and other options) and the scheduler's step count are restored over the new values; the "
            "shape of a closed-form schedule comes from the new config.",
            ResumeConfigWarning,
            stacklevel=2,
        )


def _run_length_record(saved: list[dict[str, Any]] | None, optimizer: str | None, index: int) -> dict[str, Any] | None:
    """A checkpoint's run-length record of one scheduler: by its optimizer's name, or by position (single form)."""
    if optimizer is not None:
        return next((record for record in saved or [] if record.get("optimizer") == optimizer), None)
    return saved[index] if saved and index < len(saved) else None


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
