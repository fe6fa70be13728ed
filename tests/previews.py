"""Counting how often a preview evaluates the closed-form schedules."""

from __future__ import annotations

import pytest

from lightning_optim.schedule.closed_form import Schedule


class EvaluatedTooOften(AssertionError):
    """A preview evaluated a schedule per step instead of at the steps it draws."""


def count_schedule_calls(monkeypatch: pytest.MonkeyPatch, most: int) -> list[int]:
    """The steps at which any closed-form schedule is evaluated from now on; more than ``most`` calls fail at once.

    Failing at once keeps a test of a 10⁹-step preview short even where the preview steps through every step.
    """
    calls: list[int] = []
    evaluate = Schedule.__call__

    def counted(self: Schedule, step: int) -> float:
        calls.append(step)
        if len(calls) > most:
            raise EvaluatedTooOften(f"the schedule was evaluated more than {most} times")
        return evaluate(self, step)

    monkeypatch.setattr(Schedule, "__call__", counted)
    return calls
