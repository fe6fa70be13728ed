"""The pure schedules against formulas written out here and against torch's own schedulers."""

import math

import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, ExponentialLR, MultiStepLR, SequentialLR, StepLR

from lightning_optim.schedules import (
    ExponentialDecay,
    InverseSqrt,
    MultiStepDecay,
    Polynomial,
    Schedule,
    Sequential,
    StepDecay,
    WarmupCosine,
)


def hugging_face_cosine(step: int, warmup: int, total: int) -> float:
    """``transformers.get_cosine_schedule_with_warmup``'s lambda (num_cycles=0.5), copied from its definition."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    progress = float(step - warmup) / float(max(1, total - warmup))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))


def torch_factors(make_scheduler, steps: int) -> list[float]:
    """Factors a torch scheduler applies to an lr of 1 over ``steps`` steps."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = make_scheduler(optimizer)
    factors = []
    for _ in range(steps):
        factors.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return factors


@pytest.mark.parametrize(("warmup", "total"), [(0, 20), (1, 20), (5, 20), (20, 20), (3, 4)])
def test_warmup_cosine_equals_hugging_face_up_to_total(warmup, total):
    schedule = WarmupCosine(warmup_steps=warmup, total_steps=total)
    for step in range(total + 1):
        assert schedule(step) == pytest.approx(hugging_face_cosine(step, warmup, total), abs=1e-12)


@pytest.mark.parametrize("warmup", [0, 1, 7])
def test_warmup_cosine_stays_at_floor_after_total(warmup):
    schedule = WarmupCosine(warmup_steps=warmup, total_steps=10, min_lr_ratio=0.2)
    assert [schedule(step) for step in range(10, 30)] == pytest.approx([0.2] * 20)
    assert hugging_face_cosine(15, warmup, 10) > 0.2  # where Hugging Face's schedule climbs back up


def test_warmup_cosine_formula_with_floor():
    warmup, total, floor = 4, 12, 0.1
    schedule = WarmupCosine(warmup_steps=warmup, total_steps=total, min_lr_ratio=floor)
    expected = [k / warmup for k in range(warmup)] + [
        floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (k - warmup) / (total - warmup)))
        for k in range(warmup, total + 1)
    ]
    assert [schedule(k) for k in range(total + 1)] == pytest.approx(expected, abs=1e-12)


def test_warmup_of_one_step_starts_at_zero_then_peaks():
    schedule = WarmupCosine(warmup_steps=1, total_steps=5)
    assert [schedule(0), schedule(1)] == [0.0, 1.0]


def test_warmup_equal_to_total_ends_warmup_at_peak_then_floor():
    schedule = WarmupCosine(warmup_steps=5, total_steps=5, min_lr_ratio=0.3)
    assert [schedule(k) for k in range(8)] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 0.3, 0.3])


def test_cosine_without_warmup_equals_torch_cosine_annealing():
    ours = WarmupCosine(total_steps=15, min_lr_ratio=0.1)
    reference = torch_factors(lambda opt: CosineAnnealingLR(opt, T_max=15, eta_min=0.1), 16)
    assert [ours(k) for k in range(16)] == pytest.approx(reference, abs=1e-12)


def test_step_multistep_exponential_equal_torch():
    steps = 25
    pairs = [
        (StepDecay(step_size=4, gamma=0.5), lambda opt: StepLR(opt, step_size=4, gamma=0.5)),
        (MultiStepDecay(milestones=(3, 10, 11), gamma=0.3), lambda opt: MultiStepLR(opt, [3, 10, 11], gamma=0.3)),
        (ExponentialDecay(gamma=0.9), lambda opt: ExponentialLR(opt, gamma=0.9)),
    ]
    for ours, make_reference in pairs:
        assert [ours(k) for k in range(steps)] == pytest.approx(torch_factors(make_reference, steps), rel=1e-12)


def test_sequential_equals_torch_sequential_lr():
    ours = Sequential(schedules=(WarmupCosine(total_steps=10), StepDecay(step_size=3, gamma=0.5)), milestones=(10,))

    def reference(opt):
        first = CosineAnnealingLR(opt, T_max=10)
        second = StepLR(opt, step_size=3, gamma=0.5)
        return SequentialLR(opt, [first, second], milestones=[10])

    assert [ours(k) for k in range(20)] == pytest.approx(torch_factors(reference, 20), abs=1e-12)


def test_warmup_composes_with_step_decay_counting_positions_from_run_start():
    schedule = StepDecay(warmup_steps=2, step_size=4, gamma=0.1)
    assert [schedule(k) for k in range(9)] == pytest.approx([0.0, 0.5, 1.0, 1.0, 0.1, 0.1, 0.1, 0.1, 0.01])


def test_warmup_constant():
    assert [Schedule(warmup_steps=3)(k) for k in range(5)] == pytest.approx([0, 1 / 3, 2 / 3, 1, 1])


def test_inverse_sqrt_is_noam():
    warmup = 4
    schedule = InverseSqrt(warmup_steps=warmup)
    for step in range(1, 50):
        noam = min(step**-0.5, step * warmup**-1.5) / warmup**-0.5  # normalised to peak 1 at the warmup's end
        assert schedule(step) == pytest.approx(noam, rel=1e-12)


def test_polynomial_and_linear():
    schedule = Polynomial(warmup_steps=2, total_steps=6, power=2.0, min_lr_ratio=0.1)
    expected = [0.0, 0.5] + [0.1 + 0.9 * (1 - (k - 2) / 4) ** 2 for k in range(2, 7)] + [0.1, 0.1]
    assert [schedule(k) for k in range(9)] == pytest.approx(expected)
    linear = Polynomial(total_steps=4)
    assert [linear(k) for k in range(6)] == pytest.approx([1, 0.75, 0.5, 0.25, 0, 0])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: WarmupCosine(warmup_steps=11, total_steps=10), "total_steps = 10"),
        (lambda: WarmupCosine(total_steps=10, min_lr_ratio=1.5), "min_lr_ratio = 1.5"),
        (lambda: Schedule(warmup_steps=-1), "warmup_steps = -1"),
        (lambda: InverseSqrt(warmup_steps=0), "warmup_steps = 0"),
        (lambda: MultiStepDecay(milestones=(5, 2)), "milestones = (5, 2)"),
        (lambda: Sequential(schedules=(Schedule(),), milestones=(3,)), "milestones = (3,)"),
    ],
)
def test_bad_values_name_the_field(make, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make()
