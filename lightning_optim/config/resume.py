"""The ``resume`` section of ``optim_config``: what a fit started from a checkpoint takes from it, and how it goes on.

``optimizer_state: keep | reset`` (reset: the optimizer as the config builds it, its state empty),
``schedule: keep | restart | rewarm`` (restart: the configured schedule from its step 0 over the steps the new run has
left; rewarm: a linear warmup of ``rewarm_steps`` from 0 to the schedule's lr at the resumed step, then the schedule)
and ``state_warmup_steps`` (that many steps at lr 0 that only fill the optimizer's state). The defaults are what a
resume without the section does: everything the checkpoint holds goes on exactly. The driver
(:mod:`lightning_optim.fit.resume`) applies the section; a fresh run ignores it.

Examples:
    >>> resolve_resume({"schedule": "rewarm", "rewarm_steps": 5e1}).config
    {'optimizer_state': 'keep', 'schedule': 'rewarm', 'rewarm_steps': 50, 'state_warmup_steps': 0}
    >>> resolve_resume({"schedule": "rewram"})
    Traceback (most recent call last):
    ...
    lightning_optim.errors.OptimConfigError: optim_config.resume.schedule = 'rewram' is not valid. Did you mean \
'rewarm'? Expected one of 'keep', 'restart', 'rewarm'.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from lightning_optim.errors import config_error
from lightning_optim.value_types import conform, expected

__all__ = ["OPTIMIZER_STATES", "RESUME_KEY", "SCHEDULE_POLICIES", "ResumeSpec", "resolve_resume"]

RESUME_KEY = "resume"
"""The top-level key of the section in ``optim_config`` (both forms: it applies to every optimizer)."""

OPTIMIZER_STATES = ("keep", "reset")
SCHEDULE_POLICIES = ("keep", "restart", "rewarm")


@dataclass(frozen=True)
class ResumeSpec:
    """A checked ``resume`` section.

    Attributes:
        optimizer_state: ``keep`` (the checkpoint's optimizer state) or ``reset`` (the optimizer as configured).
        schedule: ``keep``, ``restart`` or ``rewarm``.
        rewarm_steps: the re-warm's length with ``schedule: rewarm``, in the scheduler's ``interval`` units; else None.
        state_warmup_steps: steps at lr 0 before the schedule goes on, in the scheduler's ``interval`` units.

    Examples:
        >>> ResumeSpec().rebases_schedule, ResumeSpec(state_warmup_steps=10).rebases_schedule
        (False, True)
    """

    optimizer_state: str = "keep"
    schedule: str = "keep"
    rewarm_steps: int | None = None
    state_warmup_steps: int = 0

    @property
    def config(self) -> dict[str, Any]:
        """The section as plain values, every key present (what ``hparams`` and checkpoints store)."""
        return asdict(self)

    @property
    def rebases_schedule(self) -> bool:
        """Whether the resumed run's schedule differs from the checkpoint's (restart, rewarm or a state warmup)."""
        return self.schedule != "keep" or self.state_warmup_steps > 0


def resolve_resume(section: Any, where: str = RESUME_KEY) -> ResumeSpec:
    """Check a ``resume`` section: its keys, each value, and ``rewarm_steps`` exactly with ``schedule: rewarm``.

    Raises:
        OptimConfigError: naming the key path, the value and what works.

    Examples:
        >>> resolve_resume({"schedule": "rewarm"})
        Traceback (most recent call last):
        ...
        lightning_optim.errors.OptimConfigError: optim_config.resume.rewarm_steps = None is not valid. Expected \
an integer >= 1 with schedule: rewarm (the steps from lr 0 back to the schedule's lr), e.g. 100.
    """
    if not isinstance(section, Mapping):
        raise config_error(where, section, "a mapping such as {schedule: rewarm, rewarm_steps: 100}")
    keys = tuple(ResumeSpec().config)
    for key, value in section.items():
        if key not in keys:
            raise config_error(f"{where}.{key}", value, "one of the keys: " + ", ".join(keys), keys, unknown_key=True)
    optimizer_state = section.get("optimizer_state", "keep")
    if optimizer_state not in OPTIMIZER_STATES:
        raise config_error(f"{where}.optimizer_state", optimizer_state, _one_of(OPTIMIZER_STATES), OPTIMIZER_STATES)
    schedule = section.get("schedule", "keep")
    if schedule not in SCHEDULE_POLICIES:
        raise config_error(f"{where}.schedule", schedule, _one_of(SCHEDULE_POLICIES), SCHEDULE_POLICIES)
    rewarm_steps = conform(section.get("rewarm_steps"), expected(int | None), f"{where}.rewarm_steps")
    if schedule == "rewarm" and not (isinstance(rewarm_steps, int) and rewarm_steps >= 1):
        raise config_error(
            f"{where}.rewarm_steps",
            section.get("rewarm_steps"),
            "an integer >= 1 with schedule: rewarm (the steps from lr 0 back to the schedule's lr), e.g. 100",
        )
    if schedule != "rewarm" and rewarm_steps is not None:
        raise config_error(
            f"{where}.rewarm_steps", rewarm_steps, f"null: it is read only with schedule: rewarm (not {schedule!r})"
        )
    state_warmup_steps = conform(section.get("state_warmup_steps", 0), expected(int), f"{where}.state_warmup_steps")
    if state_warmup_steps < 0:
        raise config_error(
            f"{where}.state_warmup_steps",
            section.get("state_warmup_steps"),
            "an integer >= 0 (steps at lr 0 that fill the optimizer's state before the schedule goes on)",
        )
    return ResumeSpec(optimizer_state, schedule, rewarm_steps, state_warmup_steps)


def _one_of(choices: tuple[str, ...]) -> str:
    return "one of " + ", ".join(map(repr, choices))
