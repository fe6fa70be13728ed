"""Pure learning-rate schedules: frozen dataclasses mapping an optimizer step to a factor of the base lr.

A schedule never sees an optimizer. ``ClosedFormLR`` (in :mod:`lightning_optim.lr_schedulers`) multiplies each
parameter group's own base lr by ``schedule(step)``. Every schedule takes ``warmup_steps``: for step
``k < warmup_steps`` the factor is ``k / warmup_steps`` (so step 0 runs at lr 0, as in Hugging Face's schedules);
afterwards the decay applies. Step counts are in units of the scheduler's ``interval`` (optimizer steps or
epochs); decays that name positions (``step_size``, ``milestones``, ``total_steps``) count from step 0 of the
run, warmup included.

Example:
    >>> schedule = WarmupCosine(warmup_steps=2, total_steps=6, min_lr_ratio=0.1)
    >>> [round(schedule(k), 3) for k in range(8)]
    [0.0, 0.5, 1.0, 0.868, 0.55, 0.232, 0.1, 0.1]
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from typing_extensions import override

__all__ = [
    "MOST_STAIRS",
    "ExponentialDecay",
    "InverseSqrt",
    "MultiStepDecay",
    "Polynomial",
    "Schedule",
    "Sequential",
    "StepDecay",
    "WarmupCosine",
]

MOST_STAIRS = 1000
"""The most stairs of a step decay :meth:`Schedule.boundaries` lists one by one (a preview draws them exactly)."""


def _require(condition: bool, key: str, value: object, expected: str) -> None:
    if not condition:
        raise ValueError(f"{key} = {value!r} is not valid; expected {expected}.")


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """Linear warmup from 0 to 1 over ``warmup_steps``, then a constant factor of 1 (``warmup_constant``).

    Subclasses override :meth:`decay`, the factor from the end of warmup on.

    Example:
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

        Example:
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
        """Fraction of the decay done at ``step``: 0 at the end of warmup, 1 at ``total_steps``."""
        return min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))

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
    Hugging Face's ``get_cosine_schedule_with_warmup`` up to ``T``; unlike it, the factor never climbs back after T.
    With ``warmup_steps=0`` it equals torch's ``CosineAnnealingLR(T_max=T, eta_min=m * lr)`` up to ``T``.

    Example:
        >>> WarmupCosine(total_steps=10)(5)
        0.5
    """

    @override
    def shape(self, progress: float) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True, kw_only=True)
class Polynomial(_DecayToFloor):
    """Warmup, then ``(1 - progress) ** power`` from 1 to ``min_lr_ratio``; ``power=1`` is ``warmup_linear``.

    Example:
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
class InverseSqrt(Schedule):
    """Noam's schedule: linear warmup to 1 at ``warmup_steps``, then ``sqrt(warmup_steps / step)``.

    Example:
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
class StepDecay(Schedule):
    """Multiply by ``gamma`` every ``step_size`` steps; with no warmup, torch's ``StepLR``.

    Example:
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

    Example:
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

    Example:
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

    Example:
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
