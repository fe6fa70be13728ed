"""Check a whole ``optim_config`` before any model or trainer is touched.

Examples:
    >>> validate_optim_config({"optimizer": {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.98]}})["optimizer"]
    {'name': 'adamw', 'lr': 0.001, 'betas': [0.9, 0.98]}
    >>> validate_optim_config({"optimizer": {"name": "adam", "lr": 1e-3, "weight_decy": 0.1}})
    Traceback (most recent call last):
    ...
    lightning_optim.errors.OptimConfigError: optim_config.optimizer.weight_decy = 0.1 is not valid. Did you mean \
'weight_decay'? Expected an argument of Adam: lr, betas, eps, weight_decay, amsgrad, foreach, maximize, capturable, \
differentiable, fused, decoupled_weight_decay.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig
from torch.optim.lr_scheduler import CyclicLR, OneCycleLR

from lightning_optim.clipping.adaptive import CLIPPING_KEY, ClippingSpec, resolve_clipping
from lightning_optim.clipping.spike_guard import SPIKE_GUARD_KEY, SpikeGuardSpec, resolve_spike_guard
from lightning_optim.config.optim_config import OPTIMIZERS_KEY, OptimConfig, to_plain_config
from lightning_optim.config.resume import RESUME_KEY, ResumeSpec, resolve_resume
from lightning_optim.errors import OptimConfigError, config_error, key_path
from lightning_optim.optim.lr_scaling import LR_SCALING_KEY
from lightning_optim.optim.param_groups import LAYER_DECAY_KEY
from lightning_optim.optim.registry import OptimizerSpec, resolve_optimizer
from lightning_optim.schedule.registry import (
    CLOSED_FORM_NAMES,
    RunsClosedForm,
    SchedulerSpec,
    TorchScheduler,
    resolve_scheduler,
)

__all__ = [
    "NamedOptimSpec",
    "OptimSpec",
    "OptimizerSetSpec",
    "clipping_specs",
    "resolve_optim_config",
    "spike_guard_specs",
    "validate_optim_config",
    "warn_on_zero_lr",
]


@dataclass(frozen=True)
class OptimSpec:
    """A checked ``optim_config``: the plain config and the resolved sections the builders take as they are.

    Attributes:
        config: the config as plain containers, values as the constructors take them (what ``hparams`` and
            checkpoints store).
        optimizer: the optimizer with its parameter-group rules.
        scheduler: the scheduler, or None for a constant lr.
        clipping: the adaptive clipping, or None (the Trainer's ``gradient_clip_val``, if any, clips).
        spike_guard: the spike guard, or None.
        resume: how a fit started from a checkpoint goes on (the defaults when the config has no ``resume``).

    Examples:
        >>> spec = resolve_optim_config({"optimizer": {"name": "adamw"}, "scheduler": {"name": "step", "step_size": 2}})
        >>> spec.optimizer.info.cls.__name__, type(spec.scheduler.info).__name__
        ('AdamW', 'ClosedForm')
    """

    config: dict[str, Any]
    optimizer: OptimizerSpec
    scheduler: SchedulerSpec | None
    clipping: ClippingSpec | None = None
    spike_guard: SpikeGuardSpec | None = None
    resume: ResumeSpec = field(default_factory=ResumeSpec)


@dataclass(frozen=True)
class NamedOptimSpec:
    """One named optimizer of the several-optimizer form: its parameters' regex and its checked sections.

    Attributes:
        name: the optimizer's key under ``optimizers``.
        params: the compiled ``params`` regex, searched in each parameter's name.
        spec: its ``optimizer``, ``param_groups`` and ``scheduler``, checked as a single-optimizer config.

    Examples:
        >>> spec = resolve_optim_config({"optimizers": {"critic": {"params": "^critic", "optimizer": {"name": "sgd"}}}})
        >>> spec.members[0].where, spec.members[0].params.pattern
        ('optimizers.critic', '^critic')
    """

    name: str
    params: re.Pattern[str]
    spec: OptimSpec

    @property
    def where(self) -> str:
        """Its key path in ``optim_config``."""
        return f"{OPTIMIZERS_KEY}.{self.name}"


@dataclass(frozen=True)
class OptimizerSetSpec:
    """A checked ``optim_config`` of the form ``{"optimizers": {name: section}}``, in the config's order.

    Attributes:
        config: the config as plain containers (what ``hparams`` and checkpoints store).
        members: each named optimizer, in the order ``configure_optimizers`` returns them.
        resume: how a fit started from a checkpoint goes on, for every optimizer.

    Examples:
        >>> spec = resolve_optim_config({"optimizers": {
        ...     "generator": {"params": "^generator[.]", "optimizer": {"name": "adam", "lr": 2e-4}},
        ...     "discriminator": {"params": "^discriminator[.]", "optimizer": {"name": "sgd", "lr": 0.1}},
        ... }})
        >>> [(m.name, m.spec.optimizer.info.cls.__name__) for m in spec.members]
        [('generator', 'Adam'), ('discriminator', 'SGD')]
    """

    config: dict[str, Any]
    members: tuple[NamedOptimSpec, ...]
    resume: ResumeSpec = field(default_factory=ResumeSpec)


def resolve_optim_config(config: Mapping[str, Any] | DictConfig | OptimConfig) -> OptimSpec | OptimizerSetSpec:
    """Check every name, key and value of ``config`` that needs no model, once, for every later build.

    The several-optimizer form checks each section as a single-optimizer config; its errors name the section's
    keys from the root (``optim_config.optimizers.generator.optimizer.lr``).

    Raises:
        OptimConfigError: naming the key, the bad value and what would work.
    """
    plain = to_plain_config(config)
    _refuse_nonfinite(plain, "")
    resume = resolve_resume(plain.pop(RESUME_KEY)) if RESUME_KEY in plain else None
    kept = {RESUME_KEY: resume.config} if resume is not None else {}
    if OPTIMIZERS_KEY not in plain:
        single = _resolve_section(plain)
        _check_resume(resume, [(single.scheduler, "scheduler")])
        return dataclasses.replace(single, config={**single.config, **kept}, resume=resume or ResumeSpec())
    members = []
    for name, section in plain[OPTIMIZERS_KEY].items():
        where = f"{OPTIMIZERS_KEY}.{name}"
        spec = _resolve_section({key: value for key, value in section.items() if key != "params"}, where)
        members.append(NamedOptimSpec(name, re.compile(section["params"]), spec))
    _check_resume(resume, [(member.spec.scheduler, f"{member.where}.scheduler") for member in members])
    validated = {
        OPTIMIZERS_KEY: {member.name: {"params": member.params.pattern, **member.spec.config} for member in members},
        **kept,
    }
    return OptimizerSetSpec(validated, tuple(members), resume or ResumeSpec())


def _check_resume(resume: ResumeSpec | None, schedulers: list[tuple[SchedulerSpec | None, str]]) -> None:
    """Refuse a policy that re-bases the schedule (restart, rewarm, a state warmup) of a schedule without a closed
    form: plateau and torch's schedulers keep their position in their own state."""
    if resume is None or not resume.rebases_schedule:
        return
    key, value = (
        ("schedule", resume.schedule)
        if resume.schedule != "keep"
        else ("state_warmup_steps", resume.state_warmup_steps)
    )
    for scheduler, where in schedulers:
        if scheduler is None or not isinstance(scheduler.info, RunsClosedForm):
            name = None if scheduler is None else scheduler.config.get("name", scheduler.config.get("_target_"))
            raise config_error(
                f"{RESUME_KEY}.{key}",
                value,
                f"{'keep' if key == 'schedule' else 0} (the schedule as the checkpoint has it): optim_config.{where} "
                f"is {name!r}, and restart, rewarm and state_warmup_steps re-base closed-form schedules only ("
                + ", ".join(CLOSED_FORM_NAMES)
                + ", sequential; for a constant lr, scheduler: {name: warmup_constant})",
            )


def _resolve_section(plain: dict[str, Any], where: str = "") -> OptimSpec:
    """Resolve one single-optimizer section, at ``where`` (a key path under ``optim_config``, empty for the top)."""
    optimizer = resolve_optimizer(plain["optimizer"], plain["param_groups"], plain.get(LAYER_DECAY_KEY), where)
    scheduler = (
        resolve_scheduler(plain["scheduler"], key_path(where, "scheduler")) if plain["scheduler"] is not None else None
    )
    clipping = (
        resolve_clipping(plain[CLIPPING_KEY], key_path(where, CLIPPING_KEY))
        if plain.get(CLIPPING_KEY) is not None
        else None
    )
    if optimizer.lr_scaling is not None and scheduler is not None and _cycles_own_lr(scheduler):
        raise config_error(
            key_path(where, f"optimizer.{LR_SCALING_KEY}"),
            plain["optimizer"][LR_SCALING_KEY],
            f"no lr_scaling with scheduler {plain['scheduler'].get('name') or plain['scheduler'].get('_target_')!r}, "
            "which sets every group's lr from its own arguments: scale those (base_lr, max_lr) instead",
        )
    scaling = {LR_SCALING_KEY: optimizer.lr_scaling.config} if optimizer.lr_scaling is not None else {}
    guard = (
        _resolve_guard(plain[SPIKE_GUARD_KEY], optimizer, key_path(where, SPIKE_GUARD_KEY))
        if plain.get(SPIKE_GUARD_KEY) is not None
        else None
    )
    validated = {
        "optimizer": {**plain["optimizer"], **optimizer.options, **scaling},
        "param_groups": list(optimizer.rules),
        "scheduler": scheduler.config if scheduler is not None else None,
        **({CLIPPING_KEY: clipping.config} if clipping is not None else {}),
        **({SPIKE_GUARD_KEY: guard.config} if guard is not None else {}),
        **({LAYER_DECAY_KEY: optimizer.layer_decay.config} if optimizer.layer_decay is not None else {}),
    }
    return OptimSpec(validated, optimizer, scheduler, clipping, guard)


def _resolve_guard(section: Any, optimizer: OptimizerSpec, where: str) -> SpikeGuardSpec:
    guard = resolve_spike_guard(section, where)
    if issubclass(optimizer.info.cls, torch.optim.LBFGS):
        raise OptimConfigError(
            f"optim_config.{where} with LBFGS is not supported: LBFGS evaluates the loss and gradients several "
            "times per step, so there is no one value per step to guard. Remove spike_guard, or use another optimizer."
        )
    return guard


def spike_guard_specs(spec: OptimSpec | OptimizerSetSpec) -> dict[str | None, SpikeGuardSpec]:
    """The ``spike_guard`` sections in use, by optimizer name (None: the single form).

    Examples:
        >>> spec = resolve_optim_config({"optimizer": {"name": "sgd"}, "spike_guard": {"on": "loss"}})
        >>> spike_guard_specs(spec)
        {None: SpikeGuardSpec(config={'on': 'loss'})}
    """
    if isinstance(spec, OptimSpec):
        return {None: spec.spike_guard} if spec.spike_guard is not None else {}
    return {member.name: member.spec.spike_guard for member in spec.members if member.spec.spike_guard is not None}


def _cycles_own_lr(scheduler: SchedulerSpec) -> bool:
    """cyclic and onecycle recompute every lr from their own ``base_lr``/``max_lr`` at each step."""
    info = scheduler.info
    return isinstance(info, TorchScheduler) and issubclass(info.scheduler_class, (CyclicLR, OneCycleLR))


def clipping_specs(spec: OptimSpec | OptimizerSetSpec) -> dict[str | None, ClippingSpec]:
    """The ``clipping`` sections in use, by optimizer name (None: the single form).

    Examples:
        >>> spec = resolve_optim_config({"optimizer": {"name": "sgd"}, "clipping": {"name": "zclip"}})
        >>> clipping_specs(spec)
        {None: ClippingSpec(config={'name': 'zclip'})}
    """
    if isinstance(spec, OptimSpec):
        return {None: spec.clipping} if spec.clipping is not None else {}
    return {member.name: member.spec.clipping for member in spec.members if member.spec.clipping is not None}


def validate_optim_config(config: Mapping[str, Any] | DictConfig | OptimConfig) -> dict[str, Any]:
    """Return ``config`` as plain containers after checking every name, key and value that needs no model.

    Values are returned as the constructors take them: an integral float for an integer key (``1e9`` from a
    command line) becomes an int. An lr (or ``lr_scale``) of 0 warns: those parameters would never change.

    Raises:
        OptimConfigError: naming the key, the bad value and what would work.
    """
    spec = resolve_optim_config(config)
    warn_on_zero_lr(spec, stacklevel=3)
    return spec.config


def _refuse_nonfinite(value: Any, key: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise config_error(key, value, "a finite number")
    if isinstance(value, dict):
        for name, item in value.items():
            _refuse_nonfinite(item, f"{key}.{name}" if key else name)
    if isinstance(value, list):
        for index, item in enumerate(value):
            _refuse_nonfinite(item, f"{key}[{index}]")


def warn_on_zero_lr(spec: OptimSpec | OptimizerSetSpec, stacklevel: int) -> None:
    """Warn for an lr (or ``lr_scale``) of 0 in a checked config: those parameters would never change."""
    if isinstance(spec, OptimizerSetSpec):
        for member in spec.members:
            _warn_on_zero_lr(member.spec, member.where, stacklevel + 1)
    else:
        _warn_on_zero_lr(spec, "", stacklevel + 1)


def _warn_on_zero_lr(spec: OptimSpec, where: str, stacklevel: int) -> None:
    # cyclic and onecycle (and a _target_ scheduler may) set the lr from their own arguments, not the groups' lr.
    if spec.scheduler is not None and spec.scheduler.info.sets_own_lr:
        return
    config = spec.config
    zeros = [(key_path(where, "optimizer.lr"), config["optimizer"].get("lr"), "the parameters")]
    for index, rule in enumerate(config["param_groups"]):
        group = f"the parameters of group {rule['name']!r}"
        zeros += [(key_path(where, f"param_groups[{index}].{key}"), rule.get(key), group) for key in ("lr", "lr_scale")]
    for key, value, whose in zeros:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
            warnings.warn(
                f"optim_config.{key} = {value!r}: {whose} will not change (every update is scaled by the lr). "
                "Use a value > 0, or freeze those parameters with requires_grad=False instead.",
                UserWarning,
                stacklevel=stacklevel,
            )
