"""The run's length that a schedule sized by the run (``total_steps: null``) runs over, kept equal to it as it changes.

Lightning builds the optimizers before some of what sets the run's length has acted: ``BatchSizeFinder`` changes
the batch size in ``on_fit_start``, ``GradientAccumulationScheduler`` sets each epoch's accumulation in
``on_train_epoch_start``, a train dataloader reloaded every epoch may change its length, and a resumed run
continues from a step count. ``trainer.estimated_stepping_batches`` is recomputed at each call from the *current*
``accumulate_grad_batches`` times every epoch, so it is wrong under an accumulation schedule whenever it is read.
:func:`optimizer_steps` counts the run as Lightning will take it instead: the optimizer steps done, plus the
remaining batches of each remaining epoch under that epoch's accumulation, capped by ``max_steps``.

:class:`RunLength` keeps one scheduler's schedule on that length: it gives the length to build with (a resumed
checkpoint's where the config leaves the length to the run), and :meth:`RunLength.follow`, called at train start
and at each epoch start, gives a :class:`~lightning_optim.schedule.lr_schedulers.ClosedFormLR` a new schedule over
the new length, keeping its step count. A resume whose trainer implies another length than the checkpoint's keeps the
checkpoint's for the rest of the run and says so (:class:`ResumeConfigWarning`); a scheduler that keeps its own
length (torch's ``OneCycleLR``) says once that it cannot follow (:class:`RunLengthWarning`).

Examples:
    >>> import lightning as L
    >>> from lightning.pytorch.callbacks import GradientAccumulationScheduler
    >>> from lightning.pytorch.demos.boring_classes import BoringModel
    >>> class Expected(L.Callback):
    ...     def on_train_start(self, trainer, pl_module):
    ...         self.steps = trainer.estimated_stepping_batches, optimizer_steps(trainer)
    >>> expected = Expected()
    >>> trainer = L.Trainer(max_epochs=4, limit_train_batches=8, limit_val_batches=0, logger=False,
    ...     callbacks=[GradientAccumulationScheduler({0: 1, 2: 4}), expected], enable_checkpointing=False,
    ...     enable_progress_bar=False, enable_model_summary=False)
    >>> trainer.fit(BoringModel())
    >>> expected.steps, trainer.global_step  # 8 + 8 + 2 + 2 steps
    ((32, 20), 20)
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lightning_optim.errors import checkpoint_error
from lightning_optim.fit.resume import ResumedSchedule
from lightning_optim.internals import resumed_epoch, stepping_batches_done, swa_batchnorm_epochs
from lightning_optim.schedule.lr_schedulers import ClosedFormLR
from lightning_optim.schedule.registry import SCHEDULERS, SchedulerSpec, needs_run_length

if TYPE_CHECKING:
    import lightning as L
    from torch.optim.lr_scheduler import LRScheduler

    from lightning_optim.schedule.closed_form import Schedule

__all__ = [
    "ResumeConfigWarning",
    "RunLength",
    "RunLengthWarning",
    "check_saved_run_lengths",
    "epoch_accumulation",
    "optimizer_steps",
    "resumed_run_length",
    "run_length",
    "run_length_changed",
    "saved_run_length",
]


class ResumeConfigWarning(UserWarning):
    """The run resumes from a checkpoint made with a different ``optim_config`` or run length."""


class RunLengthWarning(UserWarning):
    """The run's length changed after the scheduler was built, and the scheduler cannot follow it."""


def optimizer_steps(trainer: L.Trainer, at_epoch_start: bool = False) -> int | None:
    """The optimizer steps the whole run takes, as far as the trainer can tell; None for an unbounded run.

    The steps done so far (``trainer.global_step``; batches under manual optimization, as Lightning's estimate counts
    them), plus, for the epoch under way and each later one, its batches
    (``trainer.num_training_batches``: ``limit_train_batches`` applied, the train dataloader loaded if it was not
    yet) in windows of that epoch's accumulation (a ``GradientAccumulationScheduler``'s factor for the epoch, else
    ``trainer.accumulate_grad_batches``; Lightning steps at the end of each window and at the epoch's last batch),
    capped by ``max_steps``. An iterable dataset without length, or ``max_epochs=-1``, leaves ``max_steps``.

    ``at_epoch_start`` says that ``on_train_epoch_start`` hooks are running: the epoch under way has not begun.
    Otherwise (train start) a run resumed mid-epoch goes on from the batch it stopped at, with the accumulation in
    force (Lightning skips ``on_train_epoch_start`` for a resumed epoch, so a scheduler's factor is not set again).
    """
    estimate = trainer.estimated_stepping_batches  # loads the train dataloader when it is not yet
    if math.isinf(estimate):
        return None
    batches = trainer.num_training_batches
    max_epochs = _max_epochs(trainer)
    if max_epochs is None or max_epochs == -1 or math.isinf(batches):
        return int(estimate)
    batches = int(batches)
    epoch = trainer.current_epoch
    done, accumulation = (0, None) if at_epoch_start else resumed_epoch(trainer)
    if accumulation is None:
        accumulation = epoch_accumulation(trainer, epoch)
    steps = stepping_batches_done(trainer) + _steps_in_epochs(trainer, epoch + 1, max_epochs, batches)
    if epoch < max_epochs:  # a run resumed from its very last step has no epoch under way
        steps += math.ceil(batches / accumulation) - done // accumulation
    return min(steps, trainer.max_steps) if trainer.max_steps != -1 else steps


def _max_epochs(trainer: L.Trainer) -> int | None:
    """``trainer.max_epochs`` without the epoch ``StochasticWeightAveraging`` adds to update BatchNorm statistics.

    That epoch steps no schedule (SWA's own scheduler has taken over by then) and trains nothing, so a schedule sized
    by the run ends with the last epoch the user asked for, as it would be sized before SWA's ``on_fit_start``.
    """
    max_epochs = trainer.max_epochs
    if max_epochs is None or max_epochs == -1:
        return max_epochs
    return max_epochs - swa_batchnorm_epochs(trainer)


def _accumulation_schedule(trainer: L.Trainer) -> Any:
    from lightning.pytorch.callbacks import GradientAccumulationScheduler

    return next((cb for cb in _callbacks(trainer) if isinstance(cb, GradientAccumulationScheduler)), None)


def epoch_accumulation(trainer: L.Trainer, epoch: int) -> int:
    """The gradient accumulation of ``epoch``: a ``GradientAccumulationScheduler``'s factor for it, else the Trainer's.

    Read from the schedule itself, so it holds in any hook of that epoch, whichever callback runs first.
    """
    schedule = _accumulation_schedule(trainer)
    return schedule.get_accumulate_grad_batches(epoch) if schedule is not None else trainer.accumulate_grad_batches


def _steps_in_epochs(trainer: L.Trainer, start: int, stop: int, batches: int) -> int:
    """The optimizer steps of epochs ``start`` to ``stop - 1``, ``batches`` each: one sum per accumulation factor."""
    schedule = _accumulation_schedule(trainer)
    changes = [epoch for epoch in (schedule.epochs if schedule is not None else []) if start < epoch < stop]
    bounds = [start, *changes, stop]
    return sum(
        max(end - begin, 0) * math.ceil(batches / epoch_accumulation(trainer, begin))
        for begin, end in itertools.pairwise(bounds)
    )


def run_length(trainer: Any, scheduler: Mapping[str, Any], at_epoch_start: bool = False) -> int | None:
    """The run's length in the scheduler's ``interval`` units, or None when the trainer cannot tell.

    Optimizer steps from :func:`optimizer_steps` (exact under an accumulation schedule, ``max_steps`` and
    ``limit_train_batches``); epochs from ``trainer.max_epochs``.
    """
    if trainer is None:
        return None
    if scheduler.get("interval", "step") == "epoch":
        max_epochs = _max_epochs(trainer)
        return max_epochs if max_epochs not in (None, -1) else None
    return optimizer_steps(trainer, at_epoch_start)


def saved_run_length(spec: Mapping[str, Any], length: int | None) -> dict[str, Any]:
    """What a checkpoint keeps of the run length a scheduler was built with (plain values, in ``interval`` units).

    Examples:
        >>> saved_run_length({"name": "warmup_cosine", "interval": "epoch"}, 8)
        {'interval': 'epoch', 'length': 8}
    """
    return {"interval": spec.get("interval", "step"), "length": length}


MAX_RUN_LENGTH = 2**53
"""The longest run length a checkpoint may hold: every count up to it is exact as a float, as schedules compute."""


def check_saved_run_lengths(records: Any, key: str = "optim_run_lengths") -> list[dict[str, Any]] | None:
    """Check the run-length records a checkpoint holds (a list of :func:`saved_run_length`, each with its optimizer's
    name when there are several) before a resumed schedule is built from them.

    Args:
        records: The checkpoint's entry, or None when it has none.
        key: The entry's key, named in errors.

    Returns:
        ``records`` as they are.

    Raises:
        CheckpointError: a record of another shape or a length no run could have had, naming its key path
            (``optim_run_lengths[0].length``).

    Examples:
        >>> check_saved_run_lengths([{"interval": "step", "length": 100}])
        [{'interval': 'step', 'length': 100}]
        >>> check_saved_run_lengths([{"interval": "step", "length": -5}])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lightning_optim.errors.CheckpointError: Checkpoint entry optim_run_lengths[0].length = -5 is not valid: ...
    """
    if records is None:
        return None
    if not isinstance(records, list):
        raise checkpoint_error(key, records, "a list of {interval, length} records, one per scheduler")
    for index, record in enumerate(records):
        where = f"{key}[{index}]"
        if not isinstance(record, Mapping) or not {"interval", "length"} <= set(record):
            raise checkpoint_error(where, record, "a mapping with the keys interval and length (and optimizer)")
        if record["interval"] not in ("step", "epoch"):
            raise checkpoint_error(f"{where}.interval", record["interval"], "'step' or 'epoch'")
        length = record["length"]
        if length is not None and (type(length) is not int or not 1 <= length <= MAX_RUN_LENGTH):
            expected = f"an int in [1, {MAX_RUN_LENGTH}] (the run's length in {record['interval']}s), or None"
            raise checkpoint_error(f"{where}.length", length, expected)
        if "optimizer" in record and not isinstance(record["optimizer"], str):
            expected = "the name of one of optim_config.optimizers"
            raise checkpoint_error(f"{where}.optimizer", record["optimizer"], expected)
    return records


def resumed_run_length(spec: Mapping[str, Any], saved: Mapping[str, Any] | None, length: int | None) -> int | None:
    """The run length a resumed scheduler goes on with: the checkpoint's, where the config leaves it to the run.

    ``saved`` is what :func:`saved_run_length` stored; ``length`` is the new trainer's :func:`run_length`. The
    checkpoint's length wins when the schedule's shape depends on the run (:func:`needs_run_length`), so a run
    resumed with another ``max_epochs`` keeps the lr curve it started on. An explicit ``total_steps`` wins over it,
    and a length counted in another ``interval`` is not comparable.

    Examples:
        >>> spec = {"name": "warmup_cosine", "total_steps": None}
        >>> resumed_run_length(spec, {"interval": "step", "length": 100}, 200)
        100
        >>> resumed_run_length({**spec, "total_steps": 200}, {"interval": "step", "length": 100}, 200)
        200
    """
    if not saved or saved.get("length") is None or not needs_run_length(spec):
        return length
    return saved["length"] if saved.get("interval") == spec.get("interval", "step") else length


def run_length_changed(
    spec: Mapping[str, Any], saved: int | None, length: int | None, where: str = "optim_config.scheduler"
) -> str:
    """The warning for a resumed scheduler that keeps the checkpoint's run length ``saved`` instead of ``length``.

    Examples:
        >>> print(run_length_changed({"name": "warmup_cosine"}, 16, 32))  # doctest: +NORMALIZE_WHITESPACE
        Resuming with a different run length: the checkpoint's run was 16 steps long, this one is 32 steps. The lr
        schedule of optim_config.scheduler ('warmup_cosine') continues as it began, over 16 steps. To stretch it over
        the new run on purpose, set optim_config.scheduler.total_steps: 32 (an explicit value wins over the
        checkpoint's).
    """
    unit = f"{spec.get('interval', 'step')}s"
    new = f"{length} {unit}" if length is not None else "not bounded (no max_steps or max_epochs)"
    return (
        f"Resuming with a different run length: the checkpoint's run was {saved} {unit} long, this one is {new}. "
        f"The lr schedule of {where} ({spec.get('name')!r}) continues as it began, over {saved} {unit}. "
        f"{_stretch_hint(spec, length, where)}"
    )


def _stretch_hint(spec: Mapping[str, Any], length: int | None, where: str) -> str:
    if spec.get("name") == "onecycle":
        return (
            "torch's OneCycleLR keeps its length in its own state, so it cannot be stretched on resume: to change it, "
            "start a new run from the weights (load_from_checkpoint)."
        )
    key, value = _length_key(spec, length, where)
    shown = value if value is not None else "<the new length>"
    return (
        f"To stretch it over the new run on purpose, set {key}: {shown} (an explicit value wins over the checkpoint's)."
    )


def _length_key(spec: Mapping[str, Any], length: int | None, where: str) -> tuple[str, int | None]:
    """The key that fixes the schedule's length, and its value for a run of ``length``."""
    if spec.get("name") == "sequential":
        last = len(spec["schedulers"]) - 1
        milestones = spec.get("milestones") or [0]
        phase_length = None if length is None else length - milestones[-1]
        return _length_key(spec["schedulers"][last], phase_length, f"{where}.schedulers[{last}]")
    info = SCHEDULERS.get(spec.get("name", ""))
    if "warmup_ratio" in spec and info is not None and "total_steps" not in info.own_types():
        # A schedule with no end (cosine_restarts) follows the run only through its warmup.
        return f"{where}.warmup_steps", None if length is None else round(spec["warmup_ratio"] * length)
    return f"{where}.total_steps", length


def cannot_follow(spec: Mapping[str, Any], built_with: int, length: int, where: str) -> str:
    """The warning for a scheduler that keeps the length ``built_with`` while the run is now ``length`` long.

    Examples:
        >>> print(cannot_follow({"name": "onecycle"}, 128, 80, "optim_config.scheduler"))
        ... # doctest: +NORMALIZE_WHITESPACE
        The run is now 80 steps long, not the 128 steps optim_config.scheduler ('onecycle') was built for (the run's
        length changed after the optimizers were built: BatchSizeFinder, GradientAccumulationScheduler, a reloaded
        train dataloader). torch's OneCycleLR keeps its total_steps in its own state and cannot be resized: its lr
        cycle ends at step 128 instead of the run's end (and torch raises when it is stepped past it). Set
        optim_config.scheduler.total_steps: 80, or use a closed-form schedule such as warmup_cosine, which follows
        the run's length.
    """
    unit = f"{spec.get('interval', 'step')}s"
    key, value = _length_key(spec, length, where)
    return (
        f"The run is now {length} {unit} long, not the {built_with} {unit} {where} ({spec.get('name')!r}) was built "
        "for (the run's length changed after the optimizers were built: BatchSizeFinder, "
        "GradientAccumulationScheduler, a reloaded train dataloader). torch's OneCycleLR keeps its total_steps in its "
        f"own state and cannot be resized: its lr cycle ends at step {built_with} instead of the run's end (and torch "
        f"raises when it is stepped past it). Set {key}: {value}, or use a closed-form schedule such as "
        "warmup_cosine, which follows the run's length."
    )


class RunLength:
    """The run length one scheduler's schedule runs over, kept equal to the run's as it changes.

    Only a section that leaves its length to the run (:func:`needs_run_length`: ``total_steps: null``,
    ``warmup_ratio``, the last phase of ``sequential``, ``onecycle`` without ``total_steps``) follows the run; an
    explicit length always wins. The length goes into checkpoints (:meth:`saved`); a run resumed from one builds
    with it and compares it, at train start, with the length the new trainer implies: equal, the schedule goes on
    following the run; different (another ``max_epochs``, ...), it keeps the checkpoint's length for the rest of the
    run and warns (:class:`ResumeConfigWarning`), as the resume rule says.

    Args:
        spec: the checked ``scheduler`` section.
        where: the section's key in warnings.

    Examples:
        >>> from lightning_optim.schedule.registry import resolve_scheduler
        >>> length = RunLength(resolve_scheduler({"name": "warmup_cosine", "total_steps": None}))
        >>> length.resume({"interval": "step", "length": 100}), length.saved()
        (100, {'interval': 'step', 'length': 100})
    """

    def __init__(self, spec: SchedulerSpec, where: str = "optim_config.scheduler") -> None:
        self.spec = spec
        self.where = where
        self.length: int | None = None
        """The length the schedule runs over, in ``interval`` units (what checkpoints keep)."""
        self._built_with: int | None = None
        self._resumed = False
        self._pinned = False
        self._warned = False
        self._tuners: tuple[Any, ...] = ()
        self.resumed: ResumedSchedule | None = None
        """How a resumed schedule goes on (``optim_config.resume``), or None: the configured schedule as it is."""
        self._rebuild = False

    def at_build(self, trainer: L.Trainer | None, saved: Mapping[str, Any] | None = None) -> int | None:
        """The length to build the scheduler with: the trainer's, or a resumed checkpoint's ``saved`` record."""
        self.length = run_length(trainer, self.spec.config)
        self._tuners = _tuner_callbacks(trainer)
        self._built_with = self.resume(saved)
        return self._built_with

    def resume(self, saved: Mapping[str, Any] | None) -> int | None:
        """Go on with the checkpoint's length ``saved`` where the config leaves the length to the run.

        Called when the scheduler is built, or after, for strategies that restore a checkpoint after building the
        optimizers (FSDP, DeepSpeed); :meth:`follow` at train start resizes the schedule and decides whether the run
        keeps this length. Returns the length the schedule runs over.
        """
        kept = resumed_run_length(self.spec.config, saved, None)
        if kept is not None:
            self.length, self._resumed = kept, True
        return self.length

    def resume_with(self, resumed: ResumedSchedule | None, follows_run: bool) -> None:
        """Run the schedule as ``resumed`` says from the next :meth:`follow` on (None: the configured schedule).

        ``follows_run``: the resume policy re-bases the schedule at this resume, so it runs over the new run's length
        and a length other than the checkpoint's is what was asked for (no :class:`ResumeConfigWarning`).
        """
        self.resumed = resumed
        self._rebuild = resumed is not None
        if follows_run:
            self._resumed = self._pinned = False

    def schedule(self, length: int | None) -> Schedule:
        """The schedule over a run of ``length``: the configured one, or its resumed form (:attr:`resumed`)."""
        if self.resumed is not None:
            return self.resumed.build(self.spec, length)
        assert length is not None  # follow builds the configured schedule only over a known length
        return self.spec.schedule(length)

    def saved(self) -> dict[str, Any]:
        """The record a checkpoint keeps (:func:`saved_run_length`)."""
        return saved_run_length(self.spec.config, self.length)

    def follow(self, trainer: L.Trainer, scheduler: LRScheduler, at_epoch_start: bool = False) -> None:
        """Give the schedule the run's length now, keeping its step count; call at train start and each epoch start.

        The first call after a resume decides whether the run keeps the checkpoint's length (see the class). Calls
        during a tuner's trial runs (``BatchSizeFinder``, ``LearningRateFinder``: Lightning swaps the trainer's
        callbacks out while they run) change nothing.
        """
        if self._in_tuner_trial(trainer) or not (self.spec.needs_run_length or self._rebuild):
            return
        target = self._built_with
        if self.spec.needs_run_length:
            now = run_length(trainer, self.spec.config, at_epoch_start)
            if self._resumed:
                self._resumed = False
                self._pinned = now != self.length
                if self._pinned:
                    message = run_length_changed(self.spec.config, self.length, now, self.where)
                    warnings.warn(message, ResumeConfigWarning, stacklevel=3)
            target = self.length if self._pinned else now
        if isinstance(scheduler, ClosedFormLR):
            if (target is not None and target != self._built_with) or self._rebuild:
                scheduler.schedule = self.schedule(target)
                scheduler.apply_schedule()
                self._built_with, self._rebuild = target, False
            self.length = self._built_with
            return
        # torch's OneCycleLR keeps the length it was built with (or restored) in its own state.
        self.length = getattr(scheduler, "total_steps", self._built_with)
        if target is not None and self.length is not None and target != self.length and not self._warned:
            self._warned = True
            warnings.warn(
                cannot_follow(self.spec.config, self.length, target, self.where), RunLengthWarning, stacklevel=3
            )

    def _in_tuner_trial(self, trainer: L.Trainer) -> bool:
        return any(tuner not in _callbacks(trainer) for tuner in self._tuners)


def _tuner_callbacks(trainer: L.Trainer | None) -> tuple[Any, ...]:
    """Lightning's tuner callbacks of ``trainer``; while one runs its trials, the trainer's callbacks are others."""
    if trainer is None:
        return ()
    from lightning.pytorch.callbacks import BatchSizeFinder, LearningRateFinder

    return tuple(cb for cb in _callbacks(trainer) if isinstance(cb, BatchSizeFinder | LearningRateFinder))


def _callbacks(trainer: L.Trainer) -> list[Any]:
    # Lightning's callback connector assigns trainer.callbacks, so the type checker does not see the attribute.
    callbacks: list[Any] = getattr(trainer, "callbacks", [])
    return callbacks
