"""Fused SGD with momentum whose first step is skipped (AMP's GradScaler, ``nonfinite="skip"``) continues exactly as
torch's unfused SGD skipping the same step."""

from __future__ import annotations

import pytest
import torch

from lightning_optim import build_optimizer


def _gradient_steps(optimizer: torch.optim.Optimizer, weight: torch.nn.Parameter, skipped: set[int]) -> None:
    generator = torch.Generator().manual_seed(0)
    for step in range(5):
        weight.grad = torch.randn(weight.shape, generator=generator)
        if step in skipped:
            optimizer.found_inf = torch.ones(())
        else:
            optimizer.found_inf = torch.zeros(())
        optimizer.step()


def _unfused_reference(options: dict, skipped: set[int]) -> torch.Tensor:
    weight = torch.nn.Parameter(torch.ones(64))
    optimizer = torch.optim.SGD([weight], **options)
    generator = torch.Generator().manual_seed(0)
    for step in range(5):
        weight.grad = torch.randn(weight.shape, generator=generator)
        if step not in skipped:
            optimizer.step()
    return weight.detach()


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("skipped", [{0}, {0, 1}, {2}])
def test_a_skipped_first_step_leaves_no_uninitialised_momentum(nesterov: bool, skipped: set[int]) -> None:
    options = {"lr": 0.1, "momentum": 0.9, "nesterov": nesterov}
    weight = torch.nn.Parameter(torch.ones(64))
    optimizer = build_optimizer(weight_module(weight), {"name": "sgd", "fused": True, **options})

    _gradient_steps(optimizer, weight, skipped)

    torch.testing.assert_close(weight.detach(), _unfused_reference(options, skipped))


def test_a_group_added_later_also_starts_from_zero_momentum() -> None:
    first, later = torch.nn.Parameter(torch.ones(64)), torch.nn.Parameter(torch.ones(64))
    optimizer = build_optimizer(weight_module(first), {"name": "sgd", "fused": True, "lr": 0.1, "momentum": 0.9})
    first.grad = torch.zeros(64)
    optimizer.step()
    optimizer.add_param_group({"params": [later]})

    _gradient_steps(optimizer, later, skipped={0})

    torch.testing.assert_close(later.detach(), _unfused_reference({"lr": 0.1, "momentum": 0.9}, skipped={0}))


def weight_module(weight: torch.nn.Parameter) -> torch.nn.Module:
    module = torch.nn.Module()
    module.weight = weight
    return module
