"""``sample_learning_rates``: a preview at a bounded number of steps, equal to stepping through every step."""

from __future__ import annotations

from typing import Any

import pytest

from lightning_optim import OptimConfigError
from lightning_optim.config import preview as preview_module
from lightning_optim.config.preview import PREVIEW_POINTS, preview_learning_rates, sample_learning_rates
from lightning_optim.schedule.closed_form import MOST_STAIRS
from tests.models import RecordingModel
from tests.previews import count_schedule_calls
from tests.references import sgdr, warmup_cosine

SGD = {"name": "sgd", "lr": 0.5}
HEAD = [{"name": "head", "params": r"^head\.", "lr_scale": 0.1}]
STEPS = 61  # evaluated at 7 evenly spaced steps: 0, 10, ..., 60

CLOSED_FORM = {
    "warmup_cosine": {"name": "warmup_cosine", "warmup_steps": 5, "min_lr_ratio": 0.1},
    "cosine-explicit-total": {"name": "cosine", "total_steps": 33},
    "warmup_linear-ratio": {"name": "warmup_linear", "warmup_ratio": 0.2},
    "polynomial": {"name": "polynomial", "power": 2.0, "warmup_steps": 3, "total_steps": 40, "min_lr_ratio": 0.2},
    "warmup_constant": {"name": "warmup_constant", "warmup_steps": 7},
    "inverse_sqrt": {"name": "inverse_sqrt", "warmup_steps": 4},
    "step": {"name": "step", "step_size": 7, "gamma": 0.5},
    "step-growing": {"name": "step", "step_size": 7, "gamma": 1.5, "warmup_steps": 3},
    "multistep": {"name": "multistep", "milestones": [13, 27], "gamma": 0.3},
    "exponential": {"name": "exponential", "gamma": 0.95, "warmup_steps": 3},
    "exponential-growing": {"name": "exponential", "gamma": 1.02},
    "sequential": {
        "name": "sequential",
        "schedulers": [{"name": "warmup_cosine", "warmup_steps": 3}, {"name": "step", "step_size": 4, "gamma": 0.5}],
        "milestones": [23],
    },
    "wsd": {"name": "wsd", "warmup_steps": 5, "decay_ratio": 0.3, "decay_shape": "sqrt", "min_lr_ratio": 0.1},
    "wsd-linear-ratio": {"name": "wsd", "warmup_ratio": 0.1, "decay_ratio": 0.2, "decay_shape": "linear"},
    "cosine_restarts": {"name": "cosine_restarts", "cycle_steps": 6, "cycle_mult": 2, "cycle_decay": 0.7},
    "cosine_restarts-warmup": {"name": "cosine_restarts", "cycle_steps": 9, "warmup_ratio": 0.1, "min_lr_ratio": 0.2},
    "warmup_cosine-frequency": {"name": "warmup_cosine", "warmup_steps": 5, "frequency": 3},
    "wsd-frequency": {"name": "wsd", "warmup_steps": 4, "decay_shape": "cosine", "frequency": 3},
    "step-growing-frequency": {"name": "step", "step_size": 7, "gamma": 1.5, "frequency": 4},
    "constant": None,
}
STATEFUL = {
    "onecycle": {"name": "onecycle", "max_lr": 1.0},
    "cyclic": {"name": "cyclic", "base_lr": 0.1, "max_lr": 1.0, "step_size_up": 9},
    "plateau": {"name": "plateau", "monitor": "val/loss", "warmup_steps": 6},
    "target": {"_target_": "torch.optim.lr_scheduler.StepLR", "step_size": 11, "gamma": 0.5},
}


def config(scheduler: dict[str, Any] | None) -> dict[str, Any]:
    return {"optimizer": SGD, "param_groups": HEAD, "scheduler": scheduler}


def first_peak(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


@pytest.mark.parametrize("scheduler", [*CLOSED_FORM.values(), *STATEFUL.values()], ids=[*CLOSED_FORM, *STATEFUL])
def test_sampled_preview_equals_stepping_through_at_its_steps(scheduler):
    full = preview_learning_rates(RecordingModel(), config(scheduler), STEPS)
    preview = sample_learning_rates(RecordingModel(), config(scheduler), STEPS, include=range(3), points=7)
    assert preview.total_steps == STEPS
    assert set(preview.lrs) == set(full) == {"head", "default"}
    assert {0, 1, 2, 10, 20, 30, 40, 50, 60} <= set(preview.steps)
    assert preview.steps == sorted(set(preview.steps))
    for name, values in preview.lrs.items():
        assert values == [full[name][step] for step in preview.steps]  # exactly, not approximately
        # The peak and its first step are among the steps evaluated: the app's table reports them exactly.
        peak = first_peak(full[name])
        assert preview.steps[first_peak(values)] == peak
        assert max(values) == full[name][peak]
    assert len(set(preview.lrs["default"])) > 1 or scheduler is None


@pytest.mark.parametrize(
    ("scheduler", "corners"),
    [
        (CLOSED_FORM["warmup_cosine"], {4, 5}),
        (CLOSED_FORM["multistep"], {12, 13, 26, 27}),
        (CLOSED_FORM["sequential"], {2, 3, 22, 23, 27}),  # the warmup, the milestone, the step decay's stairs
        (CLOSED_FORM["step-growing-frequency"], {4, 8, 12, 56}),  # lr held 4 steps: the stairs' first held steps
        (CLOSED_FORM["wsd"], {4, 5, 42, 43}),  # the warmup, the decay's start: 61 - round(0.3 * 61)
        (CLOSED_FORM["cosine_restarts"], {5, 6, 17, 18, 41, 42}),  # each restart and the step before it
        (CLOSED_FORM["cosine_restarts-warmup"], {5, 6, 14, 15, 23, 24, 32, 33, 59, 60}),  # warmup: 6 of 61 steps
    ],
    ids=["warmup_cosine", "multistep", "sequential", "step-growing-frequency", "wsd", "restarts", "restarts-warmup"],
)
def test_closed_form_preview_has_the_corners(scheduler, corners):
    preview = sample_learning_rates(RecordingModel(), config(scheduler), STEPS, points=2)
    assert corners <= set(preview.steps)


def test_a_billion_steps_evaluate_the_schedule_a_bounded_number_of_times(monkeypatch):
    schedule_calls = count_schedule_calls(monkeypatch, most=3 * PREVIEW_POINTS)
    scheduler = {"name": "warmup_cosine", "warmup_steps": 1000, "min_lr_ratio": 0.1}
    preview = sample_learning_rates(RecordingModel(), config(scheduler), 10**9, include=range(5))
    # 1000 evenly spaced steps, the first 5, the warmup's end and the step before it; nothing per step.
    assert len(preview.steps) <= PREVIEW_POINTS + 8
    assert len(schedule_calls) <= 2 * len(preview.steps)  # building the scheduler evaluates it at step 0 too
    values = preview.lrs["default"]
    assert preview.steps[:5] == [0, 1, 2, 3, 4]
    assert values[:5] == [0.5 * k / 1000 for k in range(5)]
    assert (preview.steps[first_peak(values)], max(values)) == (1000, 0.5)
    assert (preview.steps[-1], values[-1]) == (
        10**9 - 1,
        pytest.approx(warmup_cosine(10**9 - 1, 0.5, 1000, 10**9, 0.1)),
    )
    assert values[-1] == pytest.approx(0.05, rel=1e-9)
    assert max(preview.lrs["head"]) == 0.05


def test_a_billion_steps_of_restarts_evaluate_the_schedule_a_bounded_number_of_times(monkeypatch):
    schedule_calls = count_schedule_calls(monkeypatch, most=3 * PREVIEW_POINTS + 4 * MOST_STAIRS)
    scheduler = {"name": "cosine_restarts", "cycle_steps": 1000, "warmup_steps": 10}
    preview = sample_learning_rates(RecordingModel(), config(scheduler), 10**9)
    # A million restarts: the points, the warmup's end, the first and the last restart, each with the step before.
    assert len(preview.steps) <= PREVIEW_POINTS + 6
    assert len(schedule_calls) <= 2 * len(preview.steps)
    lrs = dict(zip(preview.steps, preview.lrs["default"], strict=True))
    assert (lrs[9], lrs[10]) == (0.5 * 0.9, 0.5)
    last_restart = 10 + 1000 * ((10**9 - 11) // 1000)
    assert (lrs[last_restart - 1], lrs[last_restart]) == (sgdr(last_restart - 1, 0.5, 10, 1000, 1), 0.5)
    assert lrs[10**9 - 1] == pytest.approx(sgdr(10**9 - 1, 0.5, 10, 1000, 1), rel=1e-12)


def test_a_stateful_scheduler_beyond_the_limit_is_refused():
    scheduler = {"name": "onecycle", "max_lr": 1.0}
    with pytest.raises(OptimConfigError) as error:
        sample_learning_rates(RecordingModel(), config(scheduler), 10**9)
    assert str(error.value) == (
        "Cannot preview 1000000000 steps of the scheduler OneCycleLR: a stateful scheduler is stepped through every "
        "step, and a preview stops at PREVIEW_STEP_LIMIT = 1000000 steps. Preview a run of at most 1000000 steps "
        "(e.g. trainer.max_steps=1000000), or use a closed-form schedule (warmup_cosine, step, ...), which previews "
        "any length."
    )


def test_a_stateful_scheduler_up_to_the_limit_is_stepped_through(monkeypatch):
    monkeypatch.setattr(preview_module, "PREVIEW_STEP_LIMIT", 40)
    scheduler = STATEFUL["cyclic"]
    preview = sample_learning_rates(RecordingModel(), config(scheduler), 40, points=3)
    full = preview_learning_rates(RecordingModel(), config(scheduler), 40)
    assert preview.lrs["default"] == [full["default"][step] for step in preview.steps]
    assert preview.steps == [0, 9, 20, 39]  # evenly spaced, and the first peak of the cycle (step_size_up 9)
    with pytest.raises(OptimConfigError, match=r"Cannot preview 41 steps of the scheduler CyclicLR"):
        sample_learning_rates(RecordingModel(), config(scheduler), 41)


def test_a_billion_steps_of_growing_stairs_report_the_first_step_of_the_peak(monkeypatch):
    calls = count_schedule_calls(monkeypatch, most=3 * PREVIEW_POINTS)
    scheduler = {"name": "step", "step_size": 7, "gamma": 1.0000001}
    preview = sample_learning_rates(RecordingModel(), config(scheduler), 10**9)
    values = preview.lrs["default"]
    last_stair = (10**9 - 1) // 7 * 7  # 142857142 stairs: only the first and the last are evaluated exactly
    assert len(calls) <= 3 * PREVIEW_POINTS
    assert (preview.steps[first_peak(values)], max(values)) == (last_stair, 0.5 * 1.0000001 ** (last_stair // 7))
    assert (preview.steps[-1], values[-1]) == (10**9 - 1, max(values))
