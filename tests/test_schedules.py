"""The pure schedules against formulas written out here and against torch's own schedulers."""

import itertools
import math

import pytest
import torch
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    CosineAnnealingWarmRestarts,
    CyclicLR,
    ExponentialLR,
    MultiStepLR,
    SequentialLR,
    StepLR,
)

from lightning_optim import OptimConfigError, validate_optim_config
from lightning_optim.schedule.build import build_scheduler
from lightning_optim.schedule.closed_form import (
    MOST_STAIRS,
    CosineRestarts,
    ExponentialDecay,
    InverseSqrt,
    MultiStepDecay,
    Polynomial,
    Schedule,
    Sequential,
    StepDecay,
    WarmupCosine,
    WarmupStableDecay,
)
from lightning_optim.schedule.registry import resolve_scheduler
from tests.references import sgdr, wsd


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
    # With warmup == total, Hugging Face's step T is the peak; ours is the floor every run reaches at T.
    last = total if warmup < total else total - 1
    for step in range(last + 1):
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


@pytest.mark.parametrize("name", ["warmup_cosine", "cosine", "warmup_linear", "polynomial"])
def test_warmup_over_the_whole_run_ends_on_the_floor(name):
    """``warmup_ratio: 1.0``: the warmup takes every step of the run and step ``total_steps`` is at the floor."""
    weight, bias = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [weight]}, {"params": [bias], "lr": 0.2}], lr=0.5)
    section = {"name": name, "warmup_ratio": 1.0, "total_steps": 5, "min_lr_ratio": 0.1}
    scheduler = build_scheduler(optimizer, section, None).scheduler
    lrs = []
    for _ in range(8):
        lrs.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    factors = [0 / 5, 1 / 5, 2 / 5, 3 / 5, 4 / 5, 0.1, 0.1, 0.1]
    assert lrs == [[0.5 * factor, 0.2 * factor] for factor in factors]


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


def assert_monotone_between_boundaries(schedule: Schedule, stop: int) -> None:
    """What an exact preview relies on: between two of ``boundaries(stop)`` the schedule only rises or only falls."""
    edges = [0, *sorted(schedule.boundaries(stop)), stop]
    for start, end in itertools.pairwise(edges):
        piece = [schedule(k) for k in range(start, end)]
        pairs = list(itertools.pairwise(piece))
        assert all(a <= b for a, b in pairs) or all(a >= b for a, b in pairs), (start, end, piece)


# ------------------------------------------------------------------------------------------------ wsd


@pytest.mark.parametrize("shape", ["linear", "cosine", "sqrt"])
@pytest.mark.parametrize(
    ("warmup", "total", "decay_ratio", "floor"),
    [
        (0, 100, 0.2, 0.0),
        (10, 100, 0.1, 0.1),
        (5, 37, 0.3, 0.05),
        (4, 10, 1.0, 0.0),
        (3, 10, 0.0, 0.2),
        (8, 10, 0.5, 0),
    ],
)
def test_wsd_equals_the_paper_formula(shape, warmup, total, decay_ratio, floor):
    schedule = WarmupStableDecay(
        warmup_steps=warmup, total_steps=total, decay_ratio=decay_ratio, decay_shape=shape, min_lr_ratio=floor
    )
    expected = [wsd(k, 1.0, warmup, total, decay_ratio, shape, floor) for k in range(total + 5)]
    assert [schedule(k) for k in range(total + 5)] == pytest.approx(expected, abs=1e-12)
    assert schedule(total) == floor  # the decay ends exactly at total_steps, where the floor holds
    assert_monotone_between_boundaries(schedule, total + 5)


def test_wsd_phases_by_hand():
    # 100 steps, 20% decay: stable from 10 up to 80, then 1-sqrt: a quarter of the way down the factor is 1 - 0.5.
    schedule = WarmupStableDecay(warmup_steps=10, total_steps=100, decay_ratio=0.2, decay_shape="sqrt")
    assert [schedule(k) for k in (0, 5, 10, 50, 79, 80, 85, 100, 1000)] == [0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 0.5, 0.0, 0.0]
    assert schedule.decay_start == 80
    assert sorted(schedule.boundaries(200)) == [10, 80, 100]


def test_wsd_rounds_the_decay_length_half_to_even_and_never_starts_it_in_the_warmup():
    assert WarmupStableDecay(total_steps=10, decay_ratio=0.25).decay_start == 8  # round(2.5) == 2
    assert WarmupStableDecay(total_steps=10, decay_ratio=0.35).decay_start == 6  # round(3.5) == 4
    assert WarmupStableDecay(warmup_steps=7, total_steps=10, decay_ratio=0.5).decay_start == 7


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            {"decay_shape": "cos"},
            "optim_config.scheduler: decay_shape = 'cos' is not valid; expected one of 'linear', 'cosine', 'sqrt'. "
            "Did you mean 'cosine'?",
        ),
        (
            {"decay_shape": "1-sqrt"},
            "optim_config.scheduler: decay_shape = '1-sqrt' is not valid; expected one of 'linear', 'cosine', "
            "'sqrt'. Did you mean 'sqrt'?",
        ),
        (
            {"decay_ratio": 1.5},
            "optim_config.scheduler: decay_ratio = 1.5 is not valid; expected a share of the run in [0, 1], e.g. 0.2.",
        ),
        (
            {"decay_ratio": -0.1},
            "optim_config.scheduler: decay_ratio = -0.1 is not valid; expected a share of the run in [0, 1], e.g. 0.2.",
        ),
        (
            {"decay_shape": 2},
            "optim_config.scheduler.decay_shape = 2 is not valid. Expected one of 'linear', 'cosine', 'sqrt'.",
        ),
    ],
)
def test_wsd_bad_values_are_refused_before_any_trainer(section, message):
    with pytest.raises(OptimConfigError) as error:
        resolve_scheduler({"name": "wsd", **section})
    assert str(error.value) == message


def test_wsd_sized_by_the_run():
    spec = resolve_scheduler({"name": "wsd", "warmup_ratio": 0.1, "decay_ratio": 0.2})
    assert spec.needs_run_length
    assert spec.schedule(50) == WarmupStableDecay(warmup_steps=5, total_steps=50, decay_ratio=0.2)
    assert not resolve_scheduler({"name": "wsd", "total_steps": 40}).needs_run_length


# ------------------------------------------------------------------------------------------------ cosine_restarts


@pytest.mark.parametrize(("t0", "mult"), [(5, 1), (3, 2), (1, 2), (4, 3)])
@pytest.mark.parametrize("floor", [0.0, 0.1])
def test_cosine_restarts_equals_torch_value_by_value(t0, mult, floor):
    steps = 150  # 30 cycles of 5 steps, 5 cycles of 3 * 2 ** i, ...
    ours = CosineRestarts(cycle_steps=t0, cycle_mult=mult, min_lr_ratio=floor)
    reference = torch_factors(lambda opt: CosineAnnealingWarmRestarts(opt, T_0=t0, T_mult=mult, eta_min=floor), steps)
    assert [ours(k) for k in range(steps)] == reference  # exactly: the same arithmetic on the same integers
    assert_monotone_between_boundaries(ours, steps)


@pytest.mark.parametrize(
    ("warmup", "t0", "mult", "decay", "floor"),
    [(0, 7, 1, 0.5, 0.0), (5, 4, 2, 0.8, 0.1), (3, 2, 3, 1.0, 0.3), (10, 6, 1, 0.3, 0.05)],
)
def test_cosine_restarts_with_warmup_decay_and_floor_equals_sgdr(warmup, t0, mult, decay, floor):
    schedule = CosineRestarts(
        warmup_steps=warmup, cycle_steps=t0, cycle_mult=mult, cycle_decay=decay, min_lr_ratio=floor
    )
    expected = [sgdr(k, 1.0, warmup, t0, mult, decay, floor) for k in range(120)]
    assert [schedule(k) for k in range(120)] == pytest.approx(expected, abs=1e-12)
    assert_monotone_between_boundaries(schedule, 120)


def test_cosine_restarts_by_hand():
    schedule = CosineRestarts(warmup_steps=2, cycle_steps=4, cycle_mult=2, cycle_decay=0.5)
    # Warmup 0, 0.5; cycle 0 (4 steps) from 1 at step 2; cycle 1 (8 steps) from 0.5 at 6; cycle 2 from 0.25 at 14.
    assert [schedule(k) for k in (0, 1, 2, 4, 6, 10, 14, 22)] == pytest.approx([0, 0.5, 1, 0.5, 0.5, 0.25, 0.25, 0.125])
    assert sorted(schedule.boundaries(40)) == [2, 6, 14, 30]


def test_cosine_restarts_lists_at_most_most_stairs_restarts():
    schedule = CosineRestarts(warmup_steps=3, cycle_steps=2)
    assert len(schedule.boundaries(3 + 2 * MOST_STAIRS)) == MOST_STAIRS
    assert schedule.boundaries(10**12) == {3, 3 + 2 * ((10**12 - 4) // 2)}  # the first and the last restart


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"cycle_steps": 0}, "optim_config.scheduler: cycle_steps = 0 is not valid; expected an int >= 1."),
        (
            {"cycle_steps": 5, "cycle_mult": 0},
            "optim_config.scheduler: cycle_mult = 0 is not valid; expected an int >= 1 (each cycle that many times "
            "longer than the one before, as torch's T_mult).",
        ),
        (
            {"cycle_steps": 5, "cycle_mult": 1.5},
            "optim_config.scheduler.cycle_mult = 1.5 is not valid. Expected an integer, e.g. 1.",
        ),
        (
            {"cycle_steps": 5, "cycle_decay": 1.5},
            "optim_config.scheduler: cycle_decay = 1.5 is not valid; expected a number in (0, 1]: each cycle's peak "
            "times the one before (1: no decay).",
        ),
        (
            {"cycle_steps": 5, "min_lr_ratio": 2.0},
            "optim_config.scheduler: min_lr_ratio = 2.0 is not valid; expected a number in [0, 1].",
        ),
    ],
)
def test_cosine_restarts_bad_values_are_refused_before_any_trainer(section, message):
    with pytest.raises(OptimConfigError) as error:
        resolve_scheduler({"name": "cosine_restarts", **section})
    assert str(error.value) == message


def test_cosine_restarts_takes_no_total_steps():
    with pytest.raises(OptimConfigError, match=r"^optim_config\.scheduler\.total_steps = 100 is not valid\."):
        resolve_scheduler({"name": "cosine_restarts", "cycle_steps": 5, "total_steps": 100})


def test_cosine_restarts_needs_the_run_only_for_a_warmup_ratio():
    fixed = resolve_scheduler({"name": "cosine_restarts", "cycle_steps": 10, "warmup_steps": 4})
    assert not fixed.needs_run_length
    assert fixed.schedule(1000) == CosineRestarts(warmup_steps=4, cycle_steps=10)
    ratio = resolve_scheduler({"name": "cosine_restarts", "cycle_steps": 10, "warmup_ratio": 0.25})
    assert ratio.needs_run_length
    assert ratio.schedule(40) == CosineRestarts(warmup_steps=10, cycle_steps=10)
    in_sequence = {
        "name": "sequential",
        "schedulers": [{"name": "warmup_constant"}, {"name": "cosine_restarts", "cycle_steps": 4, "warmup_ratio": 0.5}],
        "milestones": [10],
    }
    assert resolve_scheduler(in_sequence).needs_run_length
    assert resolve_scheduler(in_sequence).schedule(30).schedules[1] == CosineRestarts(warmup_steps=10, cycle_steps=4)


# ---------------------------------------------------------------------------------------------------------- cyclic


def two_group_sgd() -> torch.optim.SGD:
    first, second = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    return torch.optim.SGD([{"params": [first]}, {"params": [second]}], lr=0.1, momentum=0.9)


def lrs_and_momenta(optimizer: torch.optim.Optimizer, scheduler, steps: int) -> list[list[tuple[float, float]]]:
    values = []
    for _ in range(steps):
        values.append([(group["lr"], group["momentum"]) for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return values


@pytest.mark.parametrize("mode", ["triangular", "triangular2", "exp_range"])
def test_cyclic_takes_one_lr_and_momentum_per_group_as_torch_does(mode):
    """torch's CyclicLR takes a list per parameter group for base/max lr and momentum (annotated ``float``)."""
    options = {
        "base_lr": [0.01, 0.002],
        "max_lr": [0.1, 0.05],
        "base_momentum": [0.8, 0.7],
        "max_momentum": [0.95, 0.9],
        "step_size_up": 3,
        "step_size_down": 2,
        "mode": mode,
        "gamma": 0.9,
    }
    validate_optim_config({"optimizer": {"name": "sgd", "lr": 0.1}, "scheduler": {"name": "cyclic", **options}})
    optimizer = two_group_sgd()
    ours = lrs_and_momenta(optimizer, build_scheduler(optimizer, {"name": "cyclic", **options}, None).scheduler, 12)
    reference_optimizer = two_group_sgd()
    reference = lrs_and_momenta(reference_optimizer, CyclicLR(reference_optimizer, **options), 12)
    assert ours == reference
    assert ours[0] == [(0.01, 0.95), (0.002, 0.9)]


def test_cyclic_refuses_a_list_of_the_wrong_length_naming_the_key():
    section = {"name": "cyclic", "base_lr": 0.01, "max_lr": 0.1, "base_momentum": [0.8, 0.7, 0.6]}
    with pytest.raises(OptimConfigError, match=r"base_momentum must have the same length as optimizer\.param_groups"):
        build_scheduler(two_group_sgd(), section, None)
