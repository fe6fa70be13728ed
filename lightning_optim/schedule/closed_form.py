"""Pure learning-rate schedules: frozen dataclasses mapping an optimizer step to a factor of the base lr.

A schedule never sees an optimizer. ``ClosedFormLR`` (in :mod:`lightning_optim.schedule.lr_schedulers`) multiplies each
parameter group's own base lr by ``schedule(step)``. Every schedule takes ``warmup_steps``: for step
``k < warmup_steps`` the factor is ``k / warmup_steps`` (so step 0 runs at lr 0, as in Hugging Face's schedules);
afterwards the decay applies. Step counts are in units of the scheduler's ``interval`` (optimizer steps or
epochs); decays that name positions (``step_size``, ``milestones``, ``total_steps``) count from step 0 of the
run, warmup included.

Examples:
    >>> schedule = WarmupCosine(warmup_steps=2, total_steps=6, min_lr_ratio=0.1)
    >>> [round(schedule(k), 3) for k in range(8)]
    [0.0, 0.5, 1.0, 0.868, 0.55, 0.232, 0.1, 0.1]
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Literal

from typing_extensions import override

from lightning_optim.errors import did_you_mean

__all__ = [
    "MOST_STAIRS",
    "CosineRestarts",
    "ExponentialDecay",
    "InverseSqrt",
    "MultiStepDecay",
    "Offset",
    "Polynomial",
    "Rewarm",
    "Schedule",
    "Sequential",
    "StateWarmup",
    "StepDecay",
    "WarmupCosine",
    "WarmupStableDecay",
]

MOST_STAIRS = 1000
"""The most stairs of a step decay (or restarts of ``cosine_restarts``) :meth:`Schedule.boundaries` lists one by one
(a preview draws them exactly)."""

DEFAULT_DECAY_RATIO = 0.2
"""The share of the run :class:`WarmupStableDecay` decays over when neither ``decay_ratio`` nor ``decay_start_step``
is given."""

DECAY_SHAPES = ("linear", "cosine", "sqrt")
"""The shapes of :class:`WarmupStableDecay`'s decay phase."""


def _require(condition: bool, key: str, value: object, expected: str, choices: tuple[str, ...] = ()) -> None:
    if not condition:
        raise ValueError(f"{key} = {value!r} is not valid; expected {expected}.{did_you_mean(value, choices)}")


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """Linear warmup from 0 to 1 over ``warmup_steps``, then a constant factor of 1 (``warmup_constant``).

    Subclasses override :meth:`decay`, the factor from the end of warmup on.

    Examples:
        >>> [Schedule(warmup_steps=4)(k) for k in range(6)]
        [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    """

    warmup_steps: int = 0

    def __post_init__(self) -> None:
        _require(
            isinstance(self.warmup_steps, int) and self.warmup_steps >= 0,
            "warmup_steps",
            self.warmup_steps,
            "an integer >= 0",
        )

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / self.warmup_steps
        return self.decay(step)

    def decay(self, step: int) -> float:
        """The factor at ``step >= warmup_steps``."""
        return 1.0

    def boundaries(self, stop: int) -> set[int]:
        """The steps in ``(0, stop)`` where a piece of the schedule begins; between two of them it is monotone.

        A preview that evaluates the schedule only at some steps adds these (and the step before each), so that it
        draws the corners where they are and finds the exact peak and its first step.

        Examples:
            >>> sorted(WarmupCosine(warmup_steps=10, total_steps=100).boundaries(1_000_000_000))
            [10, 100]
        """
        return {step for step in {self.warmup_steps, *self.decay_boundaries(stop)} if 0 < step < stop}

    def decay_boundaries(self, stop: int) -> set[int]:
        """The steps from the end of warmup on where a piece of the decay begins (see :meth:`boundaries`)."""
        return set()


@dataclass(frozen=True, kw_only=True)
class _DecayToFloor(Schedule):
    """A decay from 1 at the end of warmup to ``min_lr_ratio`` at ``total_steps``, held there afterwards."""

    total_steps: int
    min_lr_ratio: float = 0.0

    @override
    def __post_init__(self) -> None:
        super().__post_init__()
        _require(
            isinstance(self.total_steps, int) and self.total_steps >= max(self.warmup_steps, 1),
            "total_steps",
            self.total_steps,
            f"an integer >= warmup_steps ({self.warmup_steps}) and >= 1; the warmup must fit in the run",
        )
        _require(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio", self.min_lr_ratio, "a number in [0, 1]")

    @override
    def decay_boundaries(self, stop: int) -> set[int]:
        return {self.total_steps}

    def progress(self, step: int) -> float:
        """Fraction of the decay done at ``step``: 0 at the end of warmup, 1 from ``total_steps`` on.

        With ``warmup_steps == total_steps`` the warmup takes the whole run and the decay has no steps: step
        ``total_steps`` is already at the floor, as it is for any shorter warmup.
        """
        if step >= self.total_steps:
            return 1.0
        return (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)

    @override
    def decay(self, step: int) -> float:
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * self.shape(self.progress(step))

    def shape(self, progress: float) -> float:
        """The decay's shape on ``[0, 1]``, from 1 down to 0."""
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class WarmupCosine(_DecayToFloor):
    """Warmup, then half a cosine from 1 to ``min_lr_ratio`` at ``total_steps``; the floor afterwards.

    For ``W <= k <= T``: ``m + (1 - m) * (1 + cos(pi * (k - W) / (T - W))) / 2``. With ``min_lr_ratio=0`` this is
    Hugging Face's ``get_cosine_schedule_with_warmup`` up to ``T`` (up to ``T - 1`` when ``W = T``: its step T is
    the peak, ours the floor); unlike it, the factor never climbs back after T.
    With ``warmup_steps=0`` it equals torch's ``CosineAnnealingLR(T_max=T, eta_min=m * lr)`` up to ``T``.

    Examples:
        >>> WarmupCosine(total_steps=10)(5)
        0.5
    """

    @override
    def shape(self, progress: float) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True, kw_only=True)
class Polynomial(_DecayToFloor):
    """Warmup, then ``(1 - progress) ** power`` from 1 to ``min_lr_ratio``; ``power=1`` is ``warmup_linear``.

    Examples:
        >>> Polynomial(total_steps=4, power=2.0)(2)
        0.25
    """

    power: float = 1.0

    @override
    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.power > 0, "power", self.power, "a number > 0")

    @override
    def shape(self, progress: float) -> float:
        return (1.0 - progress) ** self.power


@dataclass(frozen=True, kw_only=True)
class WarmupStableDecay(_DecayToFloor):
    """Warmup-stable-decay (WSD): warmup, the peak held, then a decay to ``min_lr_ratio`` over the run's last part.

    The decay phase is the last ``decay_ratio`` of the ``total_steps`` (``T``; 0.2 when neither ``decay_ratio`` nor
    ``decay_start_step`` is given): it starts at ``D0 = T - round(decay_ratio * T)`` (Python's ``round``, half to
    even, as ``warmup_ratio`` rounds), but never before the warmup ends: when warmup and decay together exceed the
    run, the decay takes the steps after the warmup (``decay_ratio=1`` is a warmup, then a decay over the rest).
    ``decay_start_step`` instead names ``D0`` itself (between the warmup's end and ``T``): a cooldown branched from a
    stable-phase checkpoint at step ``s`` with ``decay_start_step=s, total_steps=s + D`` decays from the peak to the
    floor in exactly ``D`` steps. Give one of the two, not both. Between the warmup and ``D0`` the factor is
    1. For ``D0 <= k < T``, with ``p = (k - D0) / (T - D0)``, it is ``m + (1 - m) * shape(p)``, the shape
    ``1 - p`` (``linear``), ``(1 + cos(pi * p)) / 2`` (``cosine``) or ``1 - sqrt(p)`` (``sqrt``, the 1-sqrt
    cooldown of Hägele et al. 2024); from ``T`` on it is ``m`` (with ``decay_ratio=0`` it drops to ``m`` at ``T``).
    Hu et al. 2024 (MiniCPM) named the schedule.

    Examples:
        >>> schedule = WarmupStableDecay(warmup_steps=2, total_steps=10, decay_ratio=0.4, decay_shape="linear")
        >>> [schedule(k) for k in range(12)]
        [0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
        >>> WarmupStableDecay(total_steps=8, decay_ratio=0.5, decay_shape="sqrt", min_lr_ratio=0.1)(5)
        0.55
        >>> branch = WarmupStableDecay(warmup_steps=2, decay_start_step=600, total_steps=604, decay_shape="linear")
        >>> [branch(k) for k in range(599, 606)]
        [1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    """

    decay_ratio: float | None = None
    decay_start_step: int | None = None
    decay_shape: Literal["linear", "cosine", "sqrt"] = "sqrt"

    @override
    def __post_init__(self) -> None:
        super().__post_init__()
        _require(
            self.decay_ratio is None or self.decay_start_step is None,
            "decay_start_step",
            self.decay_start_step,
            f"either decay_ratio ({self.decay_ratio}) or decay_start_step, not both (set decay_ratio to null)",
        )
        if self.decay_start_step is not None:
            _require(
                isinstance(self.decay_start_step, int)
                and self.warmup_steps <= self.decay_start_step <= self.total_steps,
                "decay_start_step",
                self.decay_start_step,
                f"an integer step from the warmup's end ({self.warmup_steps}) to total_steps ({self.total_steps})",
            )
        _require(
            self.decay_ratio is None or 0.0 <= self.decay_ratio <= 1.0,
            "decay_ratio",
            self.decay_ratio,
            "a share of the run in [0, 1], e.g. 0.2",
        )
        _require(
            self.decay_shape in DECAY_SHAPES,
            "decay_shape",
            self.decay_shape,
            "one of " + ", ".join(map(repr, DECAY_SHAPES)),
            DECAY_SHAPES,
        )

    @property
    def decay_start(self) -> int:
        """The first step of the decay phase, ``D0``."""
        if self.decay_start_step is not None:
            return self.decay_start_step
        ratio = DEFAULT_DECAY_RATIO if self.decay_ratio is None else self.decay_ratio
        return max(self.warmup_steps, self.total_steps - round(ratio * self.total_steps))

    @override
    def decay_boundaries(self, stop: int) -> set[int]:
        return {self.decay_start, self.total_steps}

    @override
    def progress(self, step: int) -> float:
        """Fraction of the decay phase done at ``step``: 0 until ``D0``, 1 from ``total_steps`` on."""
        if step >= self.total_steps:
            return 1.0
        if step < self.decay_start:
            return 0.0
        return (step - self.decay_start) / (self.total_steps - self.decay_start)

    @override
    def shape(self, progress: float) -> float:
        if self.decay_shape == "linear":
            return 1.0 - progress
        if self.decay_shape == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - math.sqrt(progress)


@dataclass(frozen=True, kw_only=True)
class InverseSqrt(Schedule):
    """Noam's schedule: linear warmup to 1 at ``warmup_steps``, then ``sqrt(warmup_steps / step)``.

    Examples:
        >>> [InverseSqrt(warmup_steps=4)(k) for k in (2, 4, 16)]
        [0.5, 1.0, 0.5]
    """

    @override
    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.warmup_steps >= 1, "warmup_steps", self.warmup_steps, "an integer >= 1 for inverse_sqrt")

    @override
    def decay(self, step: int) -> float:
        return math.sqrt(self.warmup_steps / step)


@dataclass(frozen=True, kw_only=True)
class CosineRestarts(Schedule):
    """Warmup, then cosine cycles that each restart at a peak: SGDR (Loshchilov & Hutter 2017).

    The cycles start at the end of warmup. Cycle ``i`` (from 0) is ``T_i = cycle_steps * cycle_mult ** i`` steps long
    (``cycle_mult`` an integer >= 1, as torch's ``T_mult``, so every restart falls on a step); at its step ``t``
    (``0 <= t < T_i``) the factor is ``m + (p_i - m) * (1 + cos(pi * t / T_i)) / 2``, with the cycle's peak
    ``p_i = max(cycle_decay ** i, m)`` (``cycle_decay`` as timm's, its peak never below the floor ``m``). A cycle
    never reaches ``m`` itself: that step is the next restart. With no warmup and ``cycle_decay=1`` this is torch's
    ``CosineAnnealingWarmRestarts(T_0=cycle_steps, T_mult=cycle_mult, eta_min=m * lr)``.

    Examples:
        >>> schedule = CosineRestarts(cycle_steps=2, cycle_mult=2)
        >>> [round(schedule(k), 3) for k in range(8)]
        [1.0, 0.5, 1.0, 0.854, 0.5, 0.146, 1.0, 0.962]
        >>> sorted(CosineRestarts(warmup_steps=3, cycle_steps=2, cycle_mult=2).boundaries(20))
        [3, 5, 9, 17]
    """

    cycle_steps: int
    cycle_mult: int = 1
    cycle_decay: float = 1.0
    min_lr_ratio: float = 0.0

    @override
    def __post_init__(self) -> None:
        super().__post_init__()
        _require(
            isinstance(self.cycle_steps, int) and self.cycle_steps >= 1, "cycle_steps", self.cycle_steps, "an int >= 1"
        )
        _require(
            isinstance(self.cycle_mult, int) and self.cycle_mult >= 1,
            "cycle_mult",
            self.cycle_mult,
            "an int >= 1 (each cycle that many times longer than the one before, as torch's T_mult)",
        )
        _require(
            0.0 < self.cycle_decay <= 1.0,
            "cycle_decay",
            self.cycle_decay,
            "a number in (0, 1]: each cycle's peak times the one before (1: no decay)",
        )
        _require(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio", self.min_lr_ratio, "a number in [0, 1]")

    def cycle(self, step: int) -> tuple[int, int, int]:
        """The cycle ``step >= warmup_steps`` falls in: its index, first step and length.

        Examples:
            >>> CosineRestarts(warmup_steps=1, cycle_steps=2, cycle_mult=3).cycle(4)
            (1, 3, 6)
        """
        since = step - self.warmup_steps
        if self.cycle_mult == 1:
            index = since // self.cycle_steps
            return index, self.warmup_steps + index * self.cycle_steps, self.cycle_steps
        index, start, length = 0, 0, self.cycle_steps
        while since >= start + length:
            index, start, length = index + 1, start + length, length * self.cycle_mult
        return index, self.warmup_steps + start, length

    @override
    def decay(self, step: int) -> float:
        index, start, length = self.cycle(step)
        peak = max(self.cycle_decay**index, self.min_lr_ratio)
        return self.min_lr_ratio + (peak - self.min_lr_ratio) * (1 + math.cos(math.pi * (step - start) / length)) / 2

    @override
    def decay_boundaries(self, stop: int) -> set[int]:
        last_index, last, _ = self.cycle(max(stop - 1, self.warmup_steps))
        if last_index >= MOST_STAIRS:
            # Too many restarts to list each: the first and the last one still bound the peak (cycle_decay <= 1).
            return {self.warmup_steps, last}
        restarts, start, length = set(), self.warmup_steps, self.cycle_steps
        while start <= last:
            restarts.add(start)
            start, length = start + length, length * self.cycle_mult
        return restarts


@dataclass(frozen=True, kw_only=True)
class StepDecay(Schedule):
    """Multiply by ``gamma`` every ``step_size`` steps; with no warmup, torch's ``StepLR``.

    Examples:
        >>> [StepDecay(step_size=2, gamma=0.5)(k) for k in range(5)]
        [1.0, 1.0, 0.5, 0.5, 0.25]
    """

    step_size: int
    gamma: float = 0.1

    @override
    def __post_init__(self) -> None:
        super().__post_init__()
        _require(
            isinstance(self.step_size, int) and self.step_size >= 1,
            "step_size",
            self.step_size,
            "an int >= 1",
        )
        _require(self.gamma > 0, "gamma", self.gamma, "a number > 0")

    @override
    def decay(self, step: int) -> float:
        return self.gamma ** (step // self.step_size)

    @override
    def decay_boundaries(self, stop: int) -> set[int]:
        first = -(-self.warmup_steps // self.step_size) * self.step_size
        last = (stop - 1) // self.step_size * self.step_size
        if (last - first) // self.step_size < MOST_STAIRS:
            return set(range(first, last + 1, self.step_size))
        # Too many stairs to draw each: the first and the last one still bound the peak.
        return {first, last}


@dataclass(frozen=True, kw_only=True)
class MultiStepDecay(Schedule):
    """Multiply by ``gamma`` at each milestone; with no warmup, torch's ``MultiStepLR``.

    Examples:
        >>> [MultiStepDecay(milestones=(1, 3), gamma=0.5)(k) for k in range(4)]
        [1.0, 0.5, 0.5, 0.25]
    """

    milestones: tuple[int, ...]
    gamma: float = 0.1

    @override
    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "milestones", tuple(self.milestones))
        _require(
            list(self.milestones) == sorted(self.milestones),
            "milestones",
            self.milestones,
            "increasing steps",
        )
        _require(self.gamma > 0, "gamma", self.gamma, "a number > 0")

    @override
    def decay(self, step: int) -> float:
        return self.gamma ** bisect.bisect_right(self.milestones, step)

    @override
    def decay_boundaries(self, stop: int) -> set[int]:
        return set(self.milestones)


@dataclass(frozen=True, kw_only=True)
class ExponentialDecay(Schedule):
    """Multiply by ``gamma`` every step; with no warmup, torch's ``ExponentialLR``.

    Examples:
        >>> ExponentialDecay(gamma=0.5)(3)
        0.125
    """

    gamma: float

    @override
    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.gamma > 0, "gamma", self.gamma, "a number > 0")

    @override
    def decay(self, step: int) -> float:
        return self.gamma**step


@dataclass(frozen=True, kw_only=True)
class Sequential(Schedule):
    """One schedule until the first milestone, the next one until the second, and so on.

    Each schedule counts its steps from its own start, as torch's ``SequentialLR`` does.

    Examples:
        >>> schedule = Sequential(
        ...     schedules=(WarmupCosine(total_steps=4), StepDecay(step_size=2, gamma=0.5)), milestones=(4,)
        ... )
        >>> [schedule(k) for k in range(8)]
        [1.0, 0.8535533905932737, 0.5, 0.14644660940672627, 1.0, 1.0, 0.5, 0.5]
    """

    schedules: tuple[Schedule, ...]
    milestones: tuple[int, ...]

    @override
    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "schedules", tuple(self.schedules))
        object.__setattr__(self, "milestones", tuple(self.milestones))
        _require(
            len(self.milestones) == len(self.schedules) - 1,
            "milestones",
            self.milestones,
            f"{len(self.schedules) - 1} step(s), one fewer than the schedules",
        )
        _require(
            list(self.milestones) == sorted(self.milestones) and all(m > 0 for m in self.milestones),
            "milestones",
            self.milestones,
            "increasing steps > 0",
        )

    @override
    def decay(self, step: int) -> float:
        phase = bisect.bisect_right(self.milestones, step)
        start = self.milestones[phase - 1] if phase else 0
        return self.schedules[phase](step - start)

    @override
    def decay_boundaries(self, stop: int) -> set[int]:
        starts = (0, *self.milestones)
        ends = (*self.milestones, stop)
        return set(self.milestones) | {
            start + step
            for schedule, start, end in zip(self.schedules, starts, ends, strict=True)
            for step in schedule.boundaries(min(end, stop) - start)
        }


@dataclass(frozen=True, kw_only=True)
class Offset(Schedule):
    """``schedule`` started again from its own step 0 at step ``start``: ``schedule(k - start)`` from ``start`` on.

    A resumed run with ``resume.schedule: restart`` runs the configured schedule over the steps it has left. Steps
    before ``start`` (the run that came before) read the schedule's step 0.

    Examples:
        >>> [Offset(schedule=Schedule(warmup_steps=2), start=3)(k) for k in (3, 4, 5, 6)]
        [0.0, 0.5, 1.0, 1.0]
    """

    schedule: Schedule
    start: int

    @override
    def __post_init__(self) -> None:
        super().__post_init__()
        _require(isinstance(self.start, int) and self.start >= 0, "start", self.start, "an integer >= 0")

    @override
    def decay(self, step: int) -> float:
        return self.schedule(max(step - self.start, 0))

    @override
    def decay_boundaries(self, stop: int) -> set[int]:
        return {self.start} | {self.start + step for step in self.schedule.boundaries(max(stop - self.start, 0))}


@dataclass(frozen=True, kw_only=True)
class Rewarm(Schedule):
    """A linear warmup of ``rewarm_steps`` from 0 at ``start`` to ``schedule(start)``, then ``schedule`` itself.

    For ``start <= k < start + rewarm_steps`` the factor is ``schedule(start) * (k - start) / rewarm_steps`` (the
    first step at 0, as every warmup here); elsewhere ``schedule(k)``. The schedule is not delayed: it ends where it
    would have, so at ``start + rewarm_steps`` it goes on with its own value there.

    Examples:
        >>> schedule = Rewarm(schedule=Polynomial(total_steps=10), start=4, rewarm_steps=3)
        >>> [round(schedule(k), 3) for k in range(3, 9)]
        [0.7, 0.0, 0.2, 0.4, 0.3, 0.2]
    """

    schedule: Schedule
    start: int
    rewarm_steps: int

    @override
    def __post_init__(self) -> None:
        super().__post_init__()
        _require(isinstance(self.start, int) and self.start >= 0, "start", self.start, "an integer >= 0")
        _require(
            isinstance(self.rewarm_steps, int) and self.rewarm_steps >= 1,
            "rewarm_steps",
            self.rewarm_steps,
            "an integer >= 1",
        )

    @override
    def decay(self, step: int) -> float:
        if self.start <= step < self.start + self.rewarm_steps:
            return self.schedule(self.start) * (step - self.start) / self.rewarm_steps
        return self.schedule(step)

    @override
    def decay_boundaries(self, stop: int) -> set[int]:
        return {self.start, self.start + self.rewarm_steps} | self.schedule.boundaries(stop)


@dataclass(frozen=True, kw_only=True)
class StateWarmup(Schedule):
    """``steps`` steps at factor 0 from ``start``, which only fill the optimizer's state; ``schedule`` elsewhere.

    The schedule is not delayed: those steps are taken from it, so it still ends where it would have.

    Examples:
        >>> [StateWarmup(schedule=Schedule(), start=2, steps=2)(k) for k in range(5)]
        [1.0, 1.0, 0.0, 0.0, 1.0]
    """

    schedule: Schedule
    start: int
    steps: int

    @override
    def __post_init__(self) -> None:
        super().__post_init__()
        _require(isinstance(self.start, int) and self.start >= 0, "start", self.start, "an integer >= 0")
        _require(isinstance(self.steps, int) and self.steps >= 0, "steps", self.steps, "an integer >= 0")

    @override
    def decay(self, step: int) -> float:
        if self.start <= step < self.start + self.steps:
            return 0.0
        return self.schedule(step)

    @override
    def decay_boundaries(self, stop: int) -> set[int]:
        return {self.start, self.start + self.steps} | self.schedule.boundaries(stop)
