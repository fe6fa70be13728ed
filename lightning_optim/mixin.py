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
from omegaconf import DictConfig
from typing_extensions import override

from lightning_optim.clipping import ClipState, check_clip_threshold, clip_for_step, fsdp_model
from lightning_optim.config import OptimConfig, changed_keys, plain
from lightning_optim.errors import OptimConfigError
from lightning_optim.internals import attached_trainer, grad_scaler
from lightning_optim.lr_schedulers import ClosedFormLR, step_plateau
from lightning_optim.names import named_parameters
from lightning_optim.optimizers import build_optimizer
from lightning_optim.scheduler_builder import (
    BuiltScheduler,
    build_scheduler,
    resumed_run_length,
    run_length,
    run_length_changed,
    saved_run_length,
)
from lightning_optim.validation import OptimSpec, resolve_optim_config, warn_on_zero_lr

if TYPE_CHECKING:
    import lightning as L
    from lightning.pytorch.utilities.types import OptimizerLRScheduler

    # The type checker sees the mixin as the LightningModule it is mixed into (trainer, hparams, the hooks it
    # overrides); at run time it stays a plain class: `class M(OptimMixin, L.LightningModule)` keeps its MRO.
    _LightningModule = L.LightningModule
else:
    _LightningModule = object

__all__ = ["OptimMixin", "ResumeConfigWarning"]

CHECKPOINT_KEY = "optim_config"
"""The checkpoint entry holding the ``optim_config`` a run was trained with (plain containers)."""

RUN_LENGTHS_KEY = "optim_run_lengths"
"""The checkpoint entry holding, per scheduler, the run length it was built with (``{"interval", "length"}``)."""


class ResumeConfigWarning(UserWarning):
    """The run resumes from a checkpoint made with a different ``optim_config``."""


class OptimMixin(_LightningModule):
    """Implements ``configure_optimizers`` from ``self.optim_config``; put it first in the bases.

    ``class Model(OptimMixin, L.LightningModule)`` or, for a model that already has ``configure_optimizers``,
    ``class Model(OptimMixin, ExistingModel)``: the mixin comes first and takes over. Set ``self.optim_config``
    in ``__init__`` (a dict, a ``DictConfig`` or an :class:`~lightning_optim.config.OptimConfig`); it is
    checked at once, so a bad name or value fails before any trainer exists.

    What it does beyond Lightning:

    * ``interval: step`` with ``frequency: n`` steps the scheduler every ``n`` optimizer steps, also under
      ``accumulate_grad_batches`` (Lightning's own ``frequency`` counts batches).
    * ``plateau`` steps once after each validation run of ``fit`` that logged ``monitor``, never on a stale
      value; a ``monitor`` the validation run did not log is an error listing the metrics that exist (raised
      already in Lightning's sanity check when a logged metric's name is close to it, i.e. a likely typo).
    * A negative or non-finite ``Trainer(gradient_clip_val=...)`` is refused before the first step (clipping at a
      negative threshold would flip the gradients' sign).
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
        validated = spec.config
        self.__dict__["_optim_spec"] = spec
        # After save_hyperparameters(cfg) the hparams are the caller's own DictConfig (Hydra's is in struct mode,
        # where a new key raises): leave it untouched; on_save_checkpoint still puts optim_config in checkpoints.
        if not isinstance(self.hparams, DictConfig):
            self.hparams["optim_config"] = copy.deepcopy(validated)

    def _spec(self) -> OptimSpec:
        """The validated config resolved for the builders (optimizer class and options, compiled rules, scheduler)."""
        try:
            return self.__dict__["_optim_spec"]
        except KeyError:
            raise AttributeError(
                f"{type(self).__name__} uses OptimMixin but never set self.optim_config in __init__, e.g. "
                "self.optim_config = {'optimizer': {'name': 'adamw', 'lr': 1e-3}}."
            ) from None

    @override
    def configure_optimizers(self) -> OptimizerLRScheduler:
        check_clip_threshold(attached_trainer(self))
        spec = self._spec()
        optimizer = build_optimizer(self, spec.optimizer)
        self.__dict__["_built_schedulers"] = []
        self.__dict__["_run_lengths"] = []
        if spec.scheduler is None:
            return optimizer
        built = build_scheduler(optimizer, spec.scheduler, self._scheduler_run_length(spec.scheduler.config))
        self.__dict__["_built_schedulers"] = [built]
        return {"optimizer": optimizer, "lr_scheduler": built.lightning_config}

    def _scheduler_run_length(self, spec: dict[str, Any]) -> int | None:
        """The trainer's run length, or on resume the checkpoint's where the config leaves the length to the run."""
        length = run_length(attached_trainer(self), spec)
        saved = self.__dict__.pop("_saved_run_lengths", None)
        kept = resumed_run_length(spec, saved[0] if saved else None, length)
        if kept != length:
            warnings.warn(run_length_changed(spec, kept, length), ResumeConfigWarning, stacklevel=3)
        self.__dict__["_run_lengths"] = [saved_run_length(spec, kept)]
        return kept

    def _continue_saved_run_lengths(self) -> None:
        """Give the schedule the checkpoint's run length after configure_optimizers already built it.

        Strategies that restore the module after their setup (FSDP, DeepSpeed) build the optimizers first.
        """
        built = self.__dict__.get("_built_schedulers")
        spec = self._spec().scheduler
        if not built or spec is None:
            return
        built_with = self.__dict__["_run_lengths"][0]["length"]
        kept = self._scheduler_run_length(spec.config)
        if kept is not None and kept != built_with and isinstance(built[0].scheduler, ClosedFormLR):
            built[0].scheduler.schedule = spec.schedule(kept)

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
        trainer = attached_trainer(self)
        state = self.clip_state
        state.last = clip_for_step(
            optimizer,
            named_parameters(self),
            gradient_clip_val,
            gradient_clip_algorithm,
            sharded=fsdp_model(trainer),
            scaler=grad_scaler(trainer),
            fold=self.fold_clipping,
            group_of=state.group_of,
            skip_nonfinite=state.skip_nonfinite,
        )

    @override
    def on_train_start(self) -> None:
        super().on_train_start()
        # After Lightning restored a checkpoint's lrs: the first resumed step follows a changed schedule too.
        for built in self.__dict__.get("_built_schedulers", []):
            if isinstance(built.scheduler, ClosedFormLR):
                built.scheduler.apply_schedule()

    @override
    def on_validation_end(self) -> None:
        super().on_validation_end()
        trainer = self.trainer
        if trainer.state.fn != "fit":
            return
        for built in self.__dict__.get("_built_schedulers", []):
            if built.steps_on_validation:
                strict = built.lightning_config.get("strict", self.optim_config["scheduler"].get("strict", True))
                step_plateau(built.scheduler, trainer.callback_metrics, strict, sanity_check=trainer.sanity_checking)

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        for key in [key for key in checkpoint if key.endswith("hyper_parameters")]:
            checkpoint[key] = plain(checkpoint[key])
        # Lightning stores the hparams' class (e.g. DictConfig) here, which weights_only loading refuses.
        for key in [
            key for key, value in checkpoint.items() if key.endswith("hparams_type") and isinstance(value, type)
        ]:
            del checkpoint[key]
        # Beside the hyperparameters, not inside them: a user's own config must load back without an extra key.
        checkpoint[CHECKPOINT_KEY] = copy.deepcopy(self.optim_config)
        if self.__dict__.get("_run_lengths"):
            checkpoint[RUN_LENGTHS_KEY] = copy.deepcopy(self.__dict__["_run_lengths"])

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        trainer = attached_trainer(self)
        if trainer is not None and trainer.state.fn == "fit":
            # Lightning restores the module before configure_optimizers (Trainer._run), which reads this.
            self.__dict__["_saved_run_lengths"] = checkpoint.get(RUN_LENGTHS_KEY)
            if trainer.strategy.restore_checkpoint_after_setup:
                self._continue_saved_run_lengths()
        saved = checkpoint.get(CHECKPOINT_KEY)
        if saved is None or saved == self.optim_config:
            return
        changed = changed_keys(saved, self.optim_config)
        optimizer_identity = [key for key in changed if key in ("optimizer.name", "optimizer._target_")]
        if optimizer_identity:
            raise OptimConfigError(
                f"Cannot resume: the checkpoint's optimizer is {_describe(saved['optimizer'])} and optim_config now "
                f"asks for {_describe(self.optim_config['optimizer'])}; its state does not carry over. Resume with "
                "the same optimizer, or start a new run (load weights with load_from_checkpoint instead)."
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


def _describe(optimizer: Mapping[str, Any]) -> str:
    return repr(optimizer.get("_target_") or optimizer.get("name"))


def _lookup(config: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        config = config.get(key) if isinstance(config, dict) else None
    return config
