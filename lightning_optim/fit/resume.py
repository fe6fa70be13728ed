"""What a fit started from a checkpoint takes from it and how its schedule goes on (``optim_config.resume``).

The section is checked in :mod:`lightning_optim.config.resume`; the driver applies it:

- ``optimizer_state: reset``: before Lightning restores the optimizers (after ``configure_optimizers``, before
  ``restore_training_state``), the checkpoint's ``optimizer_states`` are replaced by the state dicts of the optimizers
  the config just built, and each closed-form scheduler's saved ``base_lrs`` by the new ones; Lightning then loads
  those, so the optimizer is exactly the configured one (empty state, the config's options) while the weights and
  the scheduler's position come from the checkpoint.
- ``schedule`` and ``state_warmup_steps``: at train start, once Lightning restored the scheduler's step ``s``, each
  closed-form schedule is replaced by a :class:`ResumedSchedule` of it (:class:`~lightning_optim.schedule.
  closed_form.Offset`, :class:`~lightning_optim.schedule.closed_form.Rewarm`, :class:`~lightning_optim.schedule.
  closed_form.StateWarmup`: frozen dataclasses, rebuilt from plain numbers).

Checkpoints keep, under :data:`RESUME_CHECKPOINT_KEY`, the policy the run was started with and each re-based schedule
(plain numbers). A run resumed from such a checkpoint with the same ``resume`` section continues it exactly (nothing is
reset or re-based twice); another section applies afresh at the new step, and ``schedule: keep`` goes on with the
re-based schedule the checkpoint holds.

Examples:
    >>> from lightning_optim.schedule.registry import resolve_scheduler
    >>> spec = resolve_scheduler({"name": "warmup_linear", "total_steps": None})
    >>> resumed = ResumedSchedule("rewarm", resumed_at=6, rewarm_steps=2)
    >>> schedule = resumed.build(spec, 10)
    >>> [round(schedule(k), 3) for k in range(6, 11)]
    [0.0, 0.2, 0.2, 0.1, 0.0]
    >>> ResumedSchedule.from_saved(resumed.saved()) == resumed
    True
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from lightning_optim.config.resume import ResumeSpec
from lightning_optim.errors import config_error
from lightning_optim.schedule.closed_form import Offset, Rewarm, Schedule, StateWarmup
from lightning_optim.schedule.registry import SchedulerSpec

__all__ = ["RESUME_CHECKPOINT_KEY", "ResumePlan", "ResumedSchedule", "policy_line", "resume_plan", "saved_record"]

RESUME_CHECKPOINT_KEY = "optim_resume"
"""The checkpoint entry holding the ``resume`` section a run was started with and its re-based schedules."""


@dataclass(frozen=True)
class ResumedSchedule:
    """How one resumed closed-form schedule goes on from the step ``resumed_at`` it was resumed at.

    ``state_warmup_steps`` steps at factor 0 come first; the schedule goes on at ``start = resumed_at +
    state_warmup_steps``: as it was (``keep``), from its own step 0 over the steps left (``restart``), or after a linear
    warmup of ``rewarm_steps`` from 0 to its value at ``start`` (``rewarm``). Steps are in the scheduler's
    ``interval`` units.

    Examples:
        >>> ResumedSchedule("restart", resumed_at=100, state_warmup_steps=10).start
        110
    """

    schedule: str
    resumed_at: int
    state_warmup_steps: int = 0
    rewarm_steps: int | None = None

    @property
    def start(self) -> int:
        """The step from which the schedule goes on, after the state warmup."""
        return self.resumed_at + self.state_warmup_steps

    def build(self, spec: SchedulerSpec, length: int | None) -> Schedule:
        """The resumed schedule of the closed-form section ``spec`` over a run of ``length`` steps in all.

        Raises:
            OptimConfigError: ``restart`` of a schedule sized by the run with no step left after :attr:`start`.
        """
        if self.schedule == "restart":
            left = sys.maxsize if length is None else length - self.start
            if left < 1:
                raise config_error(
                    "resume.schedule",
                    "restart",
                    f"a run longer than step {self.start} to restart the schedule in (it is {length} steps long): "
                    "raise the Trainer's max_steps or max_epochs",
                )
            schedule: Schedule = Offset(schedule=spec.schedule(left), start=self.start)
        else:
            schedule = spec.schedule(sys.maxsize if length is None else length)
            if self.schedule == "rewarm":
                assert self.rewarm_steps is not None  # resolve_resume requires it with rewarm
                schedule = Rewarm(schedule=schedule, start=self.start, rewarm_steps=self.rewarm_steps)
        if self.state_warmup_steps:
            schedule = StateWarmup(schedule=schedule, start=self.resumed_at, steps=self.state_warmup_steps)
        return schedule

    def saved(self) -> dict[str, Any]:
        """Plain numbers for the checkpoint (:meth:`from_saved` reads them back)."""
        return asdict(self)

    @classmethod
    def from_saved(cls, record: Mapping[str, Any]) -> ResumedSchedule:
        """The resumed schedule a checkpoint's record describes."""
        return cls(record["schedule"], record["resumed_at"], record["state_warmup_steps"], record["rewarm_steps"])


@dataclass(frozen=True)
class ResumePlan:
    """What one resumed fit does with its checkpoint, decided when the checkpoint is loaded.

    Attributes:
        policy: the config's ``resume`` section.
        continuing: the checkpoint was saved by a run started with the same section: nothing is applied again.
        saved: the checkpoint's re-based schedules, each with its optimizer's name (None in the single form).

    Examples:
        >>> plan = resume_plan(ResumeSpec(optimizer_state="reset"), None)
        >>> plan.resets_optimizer, plan.rebases_schedule, plan.continuing
        (True, False, False)
    """

    policy: ResumeSpec
    continuing: bool = False
    saved: tuple[Mapping[str, Any], ...] = ()

    @property
    def resets_optimizer(self) -> bool:
        """Whether the checkpoint's optimizer state is replaced by the configured optimizer's."""
        return self.policy.optimizer_state == "reset" and not self.continuing

    @property
    def rebases_schedule(self) -> bool:
        """Whether each schedule is re-based at the resumed step (restart, rewarm or a state warmup)."""
        return self.policy.rebases_schedule and not self.continuing

    @property
    def follows_new_run(self) -> bool:
        """Whether each schedule runs over the new run's length (``restart``, ``rewarm``); ``keep`` keeps the
        checkpoint's length, a state warmup included, as a resume without the section does."""
        return self.policy.schedule != "keep" and not self.continuing

    def saved_schedule(self, optimizer: str | None) -> ResumedSchedule | None:
        """The checkpoint's re-based schedule of ``optimizer`` (None: the single form), which keeps going."""
        record = next((record for record in self.saved if record.get("optimizer") == optimizer), None)
        return ResumedSchedule.from_saved(record) if record is not None else None

    def schedule_at(self, optimizer: str | None, step: int) -> ResumedSchedule | None:
        """How the schedule of ``optimizer``, resumed at its step ``step``, goes on (None: as it is)."""
        if not self.rebases_schedule:
            return self.saved_schedule(optimizer)
        return ResumedSchedule(self.policy.schedule, step, self.policy.state_warmup_steps, self.policy.rewarm_steps)

    def ignored(self, key: str) -> bool:
        """Whether a changed ``optim_config`` key is one the policy asked to change (no ``ResumeConfigWarning``).

        Examples:
            >>> plan = resume_plan(ResumeSpec(schedule="restart"), None)
            >>> [plan.ignored(key) for key in ("resume.schedule", "scheduler.total_steps", "optimizer.lr")]
            [True, True, False]
        """
        parts = key.split(".")
        section = parts[2] if parts[0] == "optimizers" and len(parts) > 2 else parts[0]
        if parts[0] == "resume":
            return True
        if self.resets_optimizer and section in ("optimizer", "param_groups"):
            return True
        return self.follows_new_run and section == "scheduler"


def resume_plan(policy: ResumeSpec, saved: Mapping[str, Any] | None) -> ResumePlan:
    """The plan for a fit resumed under ``policy`` from a checkpoint whose record (:func:`saved_record`) is ``saved``.

    Examples:
        >>> saved = saved_record(ResumeSpec(optimizer_state="reset"), [])
        >>> resume_plan(ResumeSpec(optimizer_state="reset"), saved).resets_optimizer
        False
    """
    if saved is None:
        return ResumePlan(policy)
    return ResumePlan(policy, saved.get("policy") == policy.config, tuple(saved.get("schedules") or ()))


def saved_record(policy: ResumeSpec, schedules: Sequence[tuple[str | None, ResumedSchedule]]) -> dict[str, Any]:
    """The checkpoint's record: the policy the run was started with and each re-based schedule by optimizer name.

    Examples:
        >>> saved_record(ResumeSpec(), [(None, ResumedSchedule("restart", 8))])["schedules"]
        [{'schedule': 'restart', 'resumed_at': 8, 'state_warmup_steps': 0, 'rewarm_steps': None, 'optimizer': None}]
    """
    return {
        "policy": policy.config,
        "schedules": [{**resumed.saved(), "optimizer": name} for name, resumed in schedules],
    }


def policy_line(
    plan: ResumePlan,
    step: int,
    optimizers: Sequence[str],
    schedules: Sequence[tuple[str | None, ResumedSchedule | None, int | None]],
) -> str:
    """The line printed once when a resumed fit starts: each choice, what was loaded and what was not.

    Args:
        plan: the fit's plan.
        step: the optimizer step the run resumes at (``trainer.global_step``).
        optimizers: each optimizer's class name, in order.
        schedules: per scheduler, its optimizer's name (None in the single form), how its schedule goes on (None: as
            the checkpoint has it) and its step count when resumed.

    Examples:
        >>> plan = resume_plan(ResumeSpec(optimizer_state="reset", schedule="rewarm", rewarm_steps=4), None)
        >>> print(policy_line(plan, 8, ["Adam"], [(None, plan.schedule_at(None, 8), 8)]))
        ... # doctest: +NORMALIZE_WHITESPACE
        Resuming at step 8 with optim_config.resume: optimizer_state=reset, schedule=rewarm (rewarm_steps=4),
        state_warmup_steps=0. Loaded: the weights, the loops' position, the schedule's step (8). Not loaded: the
        optimizer state (Adam as optim_config builds it: empty state, the config's options). Schedule: a warmup from
        lr 0 at step 8 to the schedule's lr at step 8, over 4 steps, then the schedule.
    """
    policy = plan.policy
    choices = (
        f"optimizer_state={policy.optimizer_state}, schedule={policy.schedule}"
        + (f" (rewarm_steps={policy.rewarm_steps})" if policy.schedule == "rewarm" else "")
        + f", state_warmup_steps={policy.state_warmup_steps}"
    )
    positions = ", ".join(str(position) for _, _, position in schedules if position is not None)
    loaded = ["the weights", "the loops' position"]
    not_loaded = []
    if plan.resets_optimizer:
        built = ", ".join(optimizers)
        not_loaded.append(f"the optimizer state ({built} as optim_config builds it: empty state, the config's options)")
    else:
        loaded.append("the optimizer state (moments, step counts, each group's options)")
    if positions:
        loaded.append(f"the schedule's step ({positions})")
    text = (
        f"Resuming at step {step} with optim_config.resume: {choices}"
        + (" (the policy this run was started with, continued as it was)" if plan.continuing else "")
        + f". Loaded: {', '.join(loaded)}. Not loaded: {', '.join(not_loaded) or 'nothing'}."
    )
    described = [_describe(name, resumed) for name, resumed, _ in schedules]
    if described:
        text += " Schedule: " + "; ".join(described) + "."
    return text


def _describe(name: str | None, resumed: ResumedSchedule | None) -> str:
    prefix = f"{name}: " if name is not None else ""
    if resumed is None:
        return prefix + "as the checkpoint has it"
    parts = []
    if resumed.state_warmup_steps:
        parts.append(
            f"lr 0 for {resumed.state_warmup_steps} steps from step {resumed.resumed_at} (they only fill the "
            "optimizer's state)"
        )
    if resumed.schedule == "restart":
        parts.append(f"the schedule from its step 0 at step {resumed.start}, over the steps left")
    elif resumed.schedule == "rewarm":
        parts.append(
            f"a warmup from lr 0 at step {resumed.start} to the schedule's lr at step {resumed.start}, over "
            f"{resumed.rewarm_steps} steps, then the schedule"
        )
    else:
        parts.append(f"the schedule from step {resumed.start} on")
    return prefix + ", then ".join(parts)
