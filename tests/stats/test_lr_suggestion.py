"""The lr suggestion of a range test: steepest descent of the smoothed loss against log(lr), on synthetic curves whose
steepest point is known."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_optim.stats.lr_suggestion import RULE, suggest_lr

LRS = [10 ** (k / 10) for k in range(-80, 1)]
"""An exponential search from 1e-8 to 1, ten points per decade (Lightning's exponential mode spaces them so)."""


def sigmoid_curve(centre: float, width: float = 0.5) -> list[float]:
    """A loss that falls from 2.3 to 0.3 around ``centre`` on the log10(lr) axis, fastest exactly at ``centre``."""
    return [0.3 + 2.0 / (1 + math.exp((math.log10(lr) - math.log10(centre)) / width)) for lr in LRS]


@pytest.mark.parametrize("centre", [1e-4, 1e-3, 1e-2])
def test_the_suggestion_is_the_steepest_point_on_log_lr(centre):
    suggestion = suggest_lr(LRS, sigmoid_curve(centre))
    assert suggestion is not None
    assert suggestion.lr == pytest.approx(centre, rel=1e-9) and LRS[suggestion.index] == suggestion.lr
    assert suggestion.rule == RULE == "steepest descent of the smoothed loss against log(lr)"


def test_lightnings_rule_on_the_same_curve_lands_decades_lower():
    losses = sigmoid_curve(1e-3)
    # Lightning's suggestion(): the slope against the lr itself, from index 10 to the last but one.
    slopes = torch.gradient(torch.tensor(losses[10:-1]), spacing=[torch.tensor(LRS[10:-1])])[0]
    lightnings = LRS[10 + int(torch.argmin(slopes))]
    # Dividing by the lr makes the flat start win: the first point of the window, four decades below.
    assert lightnings == LRS[10] == pytest.approx(1e-7, rel=1e-9)
    assert suggest_lr(LRS, losses).lr / lightnings == pytest.approx(1e4, rel=1e-9)


def test_a_diverged_tail_and_the_skipped_ends_are_left_out():
    losses = sigmoid_curve(1e-3)
    # Steeper falls at the very start and end are skipped (10 and 1 points, Lightning's defaults)...
    losses[0:10] = [10.0 - i for i in range(10)]
    # ...and a NaN tail is dropped with its lrs, each lr staying with its own loss.
    losses[70:] = [math.nan] * (len(LRS) - 70)
    suggestion = suggest_lr(LRS, losses)
    assert suggestion is not None and suggestion.lr == pytest.approx(1e-3, rel=1e-9)


def test_too_few_finite_points_give_no_suggestion():
    losses = [math.nan] * len(LRS)
    losses[40] = 1.0
    assert suggest_lr(LRS, losses) is None
    with pytest.raises(ValueError, match=r"^lrs and losses differ in length: 81 and 80\.$"):
        suggest_lr(LRS, losses[:-1])


def test_the_slopes_are_torch_gradients_on_uneven_spacing():
    generator = torch.Generator().manual_seed(0)
    lrs = sorted((torch.rand(40, generator=generator, dtype=torch.float64) * 1e-2 + 1e-6).tolist())
    losses = (torch.rand(40, generator=generator, dtype=torch.float64) + 1).tolist()
    slopes = torch.gradient(torch.tensor(losses), spacing=[torch.tensor(lrs).log()])[0]
    suggestion = suggest_lr(lrs, losses, skip_begin=0, skip_end=0)
    assert suggestion is not None and suggestion.index == int(torch.argmin(slopes))
