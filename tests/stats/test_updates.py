"""An optimizer step's per-tensor values and the optimizer state's norms, against the values by hand."""

from __future__ import annotations

import pytest
import torch

from lightning_optim.stats.updates import copy_parameters, measure_updates, state_norms


def _stepped_model() -> tuple[list[torch.nn.Parameter], list[torch.Tensor | None], torch.optim.Optimizer]:
    """Parameters of several shapes and dtypes, one without a gradient, one with a sparse gradient, one empty."""
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(6, 3, sparse=True)
    parameters = [
        torch.nn.Parameter(torch.randn(4, 5)),
        torch.nn.Parameter(torch.randn(5)),
        torch.nn.Parameter(torch.randn(3, 2, dtype=torch.bfloat16)),
        torch.nn.Parameter(torch.randn(7)),  # no gradient
        embedding.weight,
        torch.nn.Parameter(torch.zeros(0)),
    ]
    for parameter in parameters[:3]:
        parameter.grad = torch.randn_like(parameter)
    parameters[5].grad = torch.zeros(0)
    embedding(torch.tensor([1, 4, 4])).sum().backward()
    optimizer = torch.optim.SGD(parameters, lr=0.1, momentum=0.9)
    return parameters, [parameter.grad for parameter in parameters], optimizer


def _by_hand(before: list[torch.Tensor], parameters, gradients) -> torch.Tensor:
    """The four rows in float64, from the values themselves."""
    columns = []
    for old, parameter, gradient in zip(before, parameters, gradients, strict=True):
        update = parameter.detach().double() - old.double()
        dense = torch.zeros_like(update) if gradient is None else gradient.to_dense().double()
        columns.append(
            [update.square().sum(), old.double().square().sum(), dense.square().sum(), -(update * dense).sum()]
        )
    return torch.tensor(columns).T


def test_the_values_are_those_by_hand_for_every_kind_of_tensor():
    parameters, gradients, optimizer = _stepped_model()
    before = copy_parameters(parameters)
    kept = [tensor.clone() for tensor in before]
    optimizer.step()
    values = measure_updates(before, parameters, gradients).values
    expected = _by_hand(kept, parameters, gradients).float()
    assert values.shape == (4, len(parameters))
    bfloat16 = [index for index, parameter in enumerate(parameters) if parameter.dtype == torch.bfloat16]
    others = [index for index in range(len(parameters)) if index not in bfloat16]
    torch.testing.assert_close(values[:, others], expected[:, others], rtol=2e-6, atol=1e-7)
    # bfloat16 parameters: the update and its products are rounded to bfloat16 (8 bits) before they are summed.
    torch.testing.assert_close(values[:, bfloat16], expected[:, bfloat16], rtol=2e-2, atol=1e-3)
    assert values[2:, 3].tolist() == [0.0, 0.0]  # no gradient: its gradient norm and alignment count zero
    assert values[:, 5].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_the_inner_product_is_the_update_s_with_the_negative_gradient_by_hand():
    weight = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    weight.grad = torch.tensor([1.0, -2.0])
    before = copy_parameters([weight])
    with torch.no_grad():
        weight.add_(torch.tensor([-0.5, 1.0]))  # an update of -0.25 x the gradient... and a little more
    values = measure_updates(before, [weight], [weight.grad]).values[:, 0].tolist()
    # |u|^2 = 1.25, |p|^2 = 25, |g|^2 = 5, <u, -g> = 0.5 + 2.0
    assert values == pytest.approx([1.25, 25.0, 5.0, 2.5])


def test_state_norms_on_a_cpu_are_each_tensor_s_norm_a_sparse_one_by_its_values():
    parameters, _, optimizer = _stepped_model()
    optimizer.step()
    norms = state_norms(optimizer.state, parameters)["momentum_buffer"]
    buffers = {index: optimizer.state[parameters[index]]["momentum_buffer"] for index in norms.indices}
    assert buffers[4].is_sparse  # SGD's momentum of the embedding's sparse gradient (torch's norm refuses it)
    for square, buffer in zip(norms.squares.tolist(), buffers.values(), strict=True):
        # A bfloat16 buffer's norm comes out in bfloat16 (8 bits), as torch's norm gives it.
        tolerance = 1e-2 if buffer.dtype == torch.bfloat16 else 1e-6
        assert square == pytest.approx(float(buffer.to_dense().double().square().sum()), rel=tolerance)
