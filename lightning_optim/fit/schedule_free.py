"""Schedule-free optimizers (the ``schedulefree`` package; Defazio et al. 2024) in a Lightning run.

A schedule-free optimizer keeps two points: it trains at ``y`` and is evaluated at ``x``, its running average.
``optimizer.train()`` moves the parameters to ``y``, ``optimizer.eval()`` to ``x``; the package asks for
``train()`` before training steps, ``eval()`` before any evaluation and before saving a checkpoint. The mixin calls
the functions here at its hooks:

* :func:`to_train_mode` before each training batch (so after the sanity check, each validation and a resume);
* :func:`to_eval_mode` when validation, test or predict starts and when training ends; during ``fit`` it also
  recomputes the BatchNorm running statistics at ``x`` from ``bn_recompute_batches`` training batches under
  ``no_grad`` with the module in train mode, as the package's README recommends (statistics gathered at ``y`` do
  not fit ``x``);
* :func:`save_evaluation_weights` in ``on_save_checkpoint``: a checkpoint saved during training holds the
  evaluation weights (and their BatchNorm statistics) and the optimizer state in eval mode, and the run goes on
  from the training weights it had, bit for bit, as if nothing had been saved.

A resumed run starts from the checkpoint's ``x``; the next training batch's ``train()`` recomputes
``y = x + (1 - beta1) (z - x)``, as the package's own ``eval()`` / ``train()`` pair does (equal to the uninterrupted
run's ``y`` up to rounding).

Examples:
    >>> import torch, schedulefree
    >>> layer = torch.nn.Linear(2, 1)
    >>> optimizer = schedulefree.SGDScheduleFree(layer.parameters(), lr=0.1)
    >>> is_schedule_free(optimizer), is_schedule_free(torch.optim.SGD(layer.parameters(), lr=0.1))
    (True, False)
    >>> in_train_mode(optimizer)
    False
"""

from __future__ import annotations

import contextlib
import itertools
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.utilities.seed import isolate_rng
from torch.utils.data import DataLoader

from lightning_optim.config.validation import OptimizerSetSpec, OptimSpec
from lightning_optim.errors import config_error
from lightning_optim.internals import is_batchnorm, torch_optimizer
from lightning_optim.optim.registry import SCHEDULE_FREE_SETTINGS

if TYPE_CHECKING:
    import lightning as L

__all__ = [
    "BN_RECOMPUTE_KEY",
    "forward_inputs",
    "in_train_mode",
    "is_schedule_free",
    "is_schedule_free_class",
    "recompute_batches",
    "save_evaluation_weights",
    "to_eval_mode",
    "to_train_mode",
    "warn_on_decaying_schedule",
    "warn_on_lr_logging",
]

BN_RECOMPUTE_KEY = SCHEDULE_FREE_SETTINGS[0][0]
"""The optimizer section's key: training batches run to recompute BatchNorm statistics at the evaluation weights."""

NOT_DECAYING = ("warmup_constant",)
"""Schedules that never lower the lr: nothing to warn about with a schedule-free optimizer."""

_WARNED_KEY = "_schedule_free_batchnorm_warned"

Forward = Callable[[Any], Any]


def is_schedule_free(optimizer: Any) -> bool:
    """Whether ``optimizer`` (or the torch optimizer in Lightning's wrapper) keeps schedule-free train/eval modes:
    ``train()`` and ``eval()`` methods and a ``train_mode`` flag in every parameter group."""
    optimizer = torch_optimizer(optimizer)
    return is_schedule_free_class(type(optimizer)) and all("train_mode" in group for group in optimizer.param_groups)


def in_train_mode(optimizer: torch.optim.Optimizer) -> bool:
    """Whether any parameter group of a schedule-free optimizer holds its training point ``y``."""
    return any(group["train_mode"] for group in torch_optimizer(optimizer).param_groups)


def _schedule_free(trainer: L.Trainer | None) -> list[tuple[int, torch.optim.Optimizer]]:
    """The Trainer's schedule-free optimizers with their positions in ``trainer.optimizers``."""
    if trainer is None:
        return []
    return [(index, optimizer) for index, optimizer in enumerate(trainer.optimizers) if is_schedule_free(optimizer)]


def recompute_batches(spec: OptimSpec | OptimizerSetSpec) -> int:
    """``bn_recompute_batches`` of the config (the largest among several optimizers), 0 where none sets it.

    Examples:
        >>> from lightning_optim.config.validation import resolve_optim_config
        >>> spec = resolve_optim_config({"optimizer": {"name": "sgd_schedulefree", "bn_recompute_batches": 8}})
        >>> recompute_batches(spec)
        8
    """
    specs = [member.spec for member in spec.members] if isinstance(spec, OptimizerSetSpec) else [spec]
    return max((one.optimizer.settings.get(BN_RECOMPUTE_KEY, 0) for one in specs), default=0)


def warn_on_decaying_schedule(spec: OptimSpec | OptimizerSetSpec, stacklevel: int) -> None:
    """Warn for a schedule that lowers the lr of a schedule-free optimizer: the averaging already does what a decay
    does, and the package's authors recommend no scheduler, with warmup through the optimizer's ``warmup_steps``."""
    members = [(f"{m.where}.", m.spec) for m in spec.members] if isinstance(spec, OptimizerSetSpec) else [("", spec)]
    for where, one in members:
        name = one.config["optimizer"].get("name", one.config["optimizer"].get("_target_"))
        if one.scheduler is None or not is_schedule_free_class(one.optimizer.info.cls):
            continue
        schedule = one.scheduler.config.get("name", one.scheduler.config.get("_target_"))
        if schedule in NOT_DECAYING:
            continue
        warnings.warn(
            f"optim_config.{where}scheduler.name = {schedule!r} changes the lr of the schedule-free optimizer "
            f"{name!r} over the run. Schedule-free training needs no decay: the evaluation weights are an average of "
            "the iterates, which takes the place of the schedule's annealing, and the package's authors recommend no "
            f"scheduler. Set {where}scheduler: null and warm up with the optimizer's own {where}optimizer.warmup_steps"
            " (a decay on top also lowers the late iterates' steps without changing their weight in the average).",
            UserWarning,
            stacklevel=stacklevel,
        )


def is_schedule_free_class(cls: type[torch.optim.Optimizer]) -> bool:
    """Whether the optimizer class has schedule-free ``train()`` and ``eval()`` methods (torch's have neither).

    Examples:
        >>> import schedulefree
        >>> is_schedule_free_class(schedulefree.RAdamScheduleFree), is_schedule_free_class(torch.optim.RAdam)
        (True, False)
    """
    return callable(getattr(cls, "train", None)) and callable(getattr(cls, "eval", None))


def warn_on_lr_logging(trainer: L.Trainer | None) -> None:
    """Warn when a learning-rate monitor logs a schedule-free optimizer whose step scales the lr itself.

    The monitors (Lightning's ``LearningRateMonitor``, ``LRMonitor``) log each group's ``lr``; a schedule-free step
    multiplies it by its own warmup (``warmup_steps``) or, for RAdam, the variance rectification, and keeps the
    lr it used in the group's ``scheduled_lr``.
    """
    # Lightning's callback connector assigns trainer.callbacks, so the type checker does not see the attribute.
    callbacks: list[Any] = getattr(trainer, "callbacks", [])
    if trainer is None or not any(isinstance(callback, LearningRateMonitor) for callback in callbacks):
        return
    scaled = [
        type(optimizer).__name__
        for _, optimizer in _schedule_free(trainer)
        if any(group.get("warmup_steps", 0) > 0 or "warmup_steps" not in group for group in optimizer.param_groups)
    ]
    if scaled:
        warnings.warn(
            f"The lr-* keys of {', '.join(scaled)} show each parameter group's base lr: its step scales the lr by its "
            "own warmup (warmup_steps) or RAdam's rectification, which the learning-rate monitor does not see. The "
            "lr each step used is in optimizer.param_groups[i]['scheduled_lr'].",
            UserWarning,
            stacklevel=2,
        )


def to_train_mode(trainer: L.Trainer | None) -> None:
    """``train()`` on each schedule-free optimizer of the Trainer in eval mode (the parameters move to ``y``)."""
    for _, optimizer in _schedule_free(trainer):
        if not all(group["train_mode"] for group in optimizer.param_groups):
            optimizer.train()  # type: ignore[attr-defined]  # a schedule-free optimizer's own method


def to_eval_mode(module: L.LightningModule, trainer: L.Trainer | None, batches: int, forward: Forward) -> None:
    """``eval()`` on each schedule-free optimizer in train mode (the parameters move to ``x``); during ``fit``
    (its sanity check aside) then recompute the BatchNorm statistics at ``x`` from ``batches`` training batches."""
    switched = [optimizer for _, optimizer in _schedule_free(trainer) if in_train_mode(optimizer)]
    for optimizer in switched:
        optimizer.eval()  # type: ignore[attr-defined]  # a schedule-free optimizer's own method
    if switched and trainer is not None and trainer.state.fn == "fit" and not trainer.sanity_checking:
        _recompute_batchnorm(module, trainer, batches, forward)


def save_evaluation_weights(
    module: L.LightningModule, trainer: L.Trainer | None, checkpoint: dict[str, Any], batches: int, forward: Forward
) -> None:
    """Put the evaluation weights (and their BatchNorm statistics) and eval-mode optimizer states in ``checkpoint``
    when it is saved during training, then give the run back exactly the training weights and statistics it had.

    Lightning gathers the state dict and the optimizer states before ``on_save_checkpoint``; they are taken again
    here, in eval mode, through the same strategy calls.
    """
    switched = [(index, optimizer) for index, optimizer in _schedule_free(trainer) if in_train_mode(optimizer)]
    if not switched or trainer is None:
        return
    parameters = [p for _, optimizer in switched for group in optimizer.param_groups for p in group["params"]]
    training_weights = [p.detach().clone() for p in parameters]
    statistics = [(b, b.clone()) for layer in module.modules() if is_batchnorm(layer) for b in layer.buffers()]
    modes = [(group, group["train_mode"]) for _, optimizer in switched for group in optimizer.param_groups]
    try:
        to_eval_mode(module, trainer, batches, forward)
        if "state_dict" in checkpoint:
            # Only the entries already there: a callback's on_save_checkpoint (run before the module's) may drop some.
            fresh = trainer.strategy.lightning_module_state_dict()
            state = checkpoint["state_dict"]
            for key in [key for key in state if key in fresh and torch.is_tensor(fresh[key])]:
                state[key] = fresh[key].clone()
        if "optimizer_states" in checkpoint:
            for index, optimizer in switched:
                checkpoint["optimizer_states"][index] = trainer.strategy.optimizer_state(optimizer)
    finally:
        with torch.no_grad():
            for parameter, weights in zip(parameters, training_weights, strict=True):
                parameter.copy_(weights)
            for buffer, saved in statistics:
                buffer.copy_(saved)
        for group, mode in modes:
            group["train_mode"] = mode


def forward_inputs(module: torch.nn.Module, batch: Any) -> Any:
    """The forward of the BatchNorm recompute: ``module(batch[0])`` for a tuple or list batch (inputs first),
    ``module(batch)`` otherwise."""
    return module(batch[0] if isinstance(batch, (tuple, list)) else batch)


def _recompute_batchnorm(module: L.LightningModule, trainer: L.Trainer, batches: int, forward: Forward) -> None:
    """Run ``batches`` training batches through ``forward`` under ``no_grad`` with every module in train mode, so
    the BatchNorm running statistics are those of the current weights; modes, random state and loader generators
    are put back."""
    if not any(is_batchnorm(layer) for layer in module.modules()):
        return
    if batches == 0:
        if not module.__dict__.get(_WARNED_KEY):
            module.__dict__[_WARNED_KEY] = True
            warnings.warn(
                "A schedule-free optimizer evaluates at its averaged weights, but the model's BatchNorm running "
                "statistics were gathered at the training weights, so validation uses statistics that do not fit "
                f"the weights it evaluates. Set optim_config.optimizer.{BN_RECOMPUTE_KEY} to a number of training "
                "batches (the schedulefree authors use 50) to recompute them before each validation.",
                UserWarning,
                stacklevel=2,
            )
        return
    loader = trainer.train_dataloader
    if loader is None:
        return
    if isinstance(loader, DataLoader) and loader.persistent_workers and loader.num_workers > 0:
        raise config_error(
            f"optimizer.{BN_RECOMPUTE_KEY}",
            batches,
            "0 with a train DataLoader(persistent_workers=True): a second pass over it would reset the iterator the "
            "epoch is reading. Use persistent_workers=False to recompute the BatchNorm statistics",
        )
    modes = [(layer, layer.training) for layer in module.modules()]
    module.train()
    try:
        with isolate_rng(), _loader_generators_kept(loader), torch.no_grad():
            for batch in itertools.islice(iter(loader), batches):
                with trainer.precision_plugin.train_step_context():
                    forward(trainer.strategy.batch_to_device(batch))
    finally:
        for layer, training in modes:
            layer.training = training


@contextlib.contextmanager
def _loader_generators_kept(loader: Any) -> Iterator[None]:
    """Put back the state of a loader's own ``torch.Generator`` (its shuffling): the extra pass must not change the
    order of the run's later epochs."""
    candidates = [getattr(loader, "generator", None), getattr(getattr(loader, "sampler", None), "generator", None)]
    generators = list({id(g): g for g in candidates if isinstance(g, torch.Generator)}.values())
    states = [generator.get_state() for generator in generators]
    try:
        yield
    finally:
        for generator, state in zip(generators, states, strict=True):
            generator.set_state(state)
