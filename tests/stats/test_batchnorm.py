"""BatchNorm statistics against references computed independently in numpy (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_optim.stats.batchnorm import (
    batch_statistics,
    channel_moments,
    dead_fraction,
    mean_drift,
    rank_divergence,
    summary,
    var_ratio,
)
from lightning_optim.stats.batchnorm_layers import (
    LayerColumns,
    affine_copies,
    forward_columns,
    layer_columns,
    layer_values,
    layers_values,
)

SHAPES = {"1d": (16, 5), "1d_sequence": (4, 5, 7), "2d": (3, 5, 4, 6), "3d": (2, 5, 3, 4, 2)}


def per_channel(array: np.ndarray) -> np.ndarray:
    """(C, values) view of an (N, C, ...) array."""
    return np.moveaxis(array, 1, 0).reshape(array.shape[1], -1)


def reference(inputs: np.ndarray, running_mean: np.ndarray, running_var: np.ndarray, eps: float, threshold: float):
    channels = per_channel(inputs.astype(np.float64))
    mean, var = channels.mean(axis=1), channels.var(axis=1, ddof=1)
    drift = np.mean(np.abs(mean - running_mean) / np.sqrt(running_var + eps))
    ratio = np.mean(var / (running_var + eps))
    return mean, var, drift, ratio, np.mean(var < threshold)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_statistics_match_numpy(shape):
    generator = torch.Generator().manual_seed(len(shape))
    inputs = 3 * torch.randn(shape, generator=generator) + torch.arange(5.0).view(1, 5, *[1] * (len(shape) - 2))
    running_mean = torch.randn(5, generator=generator)
    running_var = torch.rand(5, generator=generator) + 0.5
    eps = 1e-5
    mean, var, drift, ratio, dead = reference(
        inputs.numpy(), running_mean.double().numpy(), running_var.double().numpy(), eps, 1e-5
    )

    batch_mean, batch_var = channel_moments(inputs)
    np.testing.assert_allclose(batch_mean.numpy(), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batch_var.numpy(), var, rtol=1e-5)
    stats = batch_statistics(inputs, running_mean, running_var, eps)
    assert stats.mean_drift.item() == pytest.approx(drift, rel=1e-5)
    assert stats.var_ratio.item() == pytest.approx(ratio, rel=1e-5)
    assert stats.dead_fraction.item() == dead == 0.0
    assert stats.mean_drift.dtype == torch.float32 and stats.mean_drift.dim() == 0


@pytest.mark.parametrize("constant_channels", [[], [0], [1, 3], [2, 5, 6], list(range(8))])
def test_constant_channels_give_the_exact_dead_fraction(constant_channels):
    inputs = torch.randn(8, 8, 3, 3, generator=torch.Generator().manual_seed(0))
    for channel in constant_channels:
        inputs[:, channel] = 0.7
    stats = batch_statistics(inputs, torch.zeros(8), torch.ones(8), eps=1e-5)
    assert stats.dead_fraction.item() == len(constant_channels) / 8


def test_dead_threshold_is_strict_and_configurable():
    variances = torch.tensor([0.0, 1e-6, 1e-5, 1e-3])
    assert dead_fraction(variances).item() == 0.5
    assert dead_fraction(variances, threshold=1e-2).item() == 1.0
    assert dead_fraction(variances, threshold=0.0).item() == 0.0


def test_drift_and_ratio_are_zero_and_one_when_running_statistics_fit():
    inputs = torch.randn(64, 3, generator=torch.Generator().manual_seed(1))
    mean, var = channel_moments(inputs)
    stats = batch_statistics(inputs, mean, var, eps=0.0)
    assert stats.mean_drift.item() == pytest.approx(0.0, abs=1e-7)
    assert stats.var_ratio.item() == pytest.approx(1.0, rel=1e-6)


def test_hand_computed_values():
    # Channel 0: values 1, 3 (mean 2, unbiased var 2); channel 1: values 4, 4 (mean 4, var 0).
    inputs = torch.tensor([[1.0, 4.0], [3.0, 4.0]])
    running_mean, running_var = torch.tensor([0.0, 1.0]), torch.tensor([4.0, 9.0])
    # drift: (|2 - 0| / 2 + |4 - 1| / 3) / 2 = 1; ratio: (2/4 + 0/9) / 2 = 0.25; dead: 1 of 2.
    assert mean_drift(torch.tensor([2.0, 4.0]), running_mean, running_var, eps=0.0).item() == 1.0
    assert var_ratio(torch.tensor([2.0, 0.0]), running_var, eps=0.0).item() == 0.25
    stats = batch_statistics(inputs, running_mean, running_var, eps=0.0)
    assert (stats.mean_drift.item(), stats.var_ratio.item(), stats.dead_fraction.item()) == (1.0, 0.25, 0.5)


def test_single_value_per_channel_has_zero_variance_not_nan():
    mean, var = channel_moments(torch.tensor([[1.0, 2.0]]))
    assert mean.tolist() == [1.0, 2.0] and var.tolist() == [0.0, 0.0]


def test_without_running_statistics_only_dead_fraction():
    stats = batch_statistics(torch.ones(4, 2), None, None, eps=1e-5)
    assert stats.mean_drift is None and stats.var_ratio is None and stats.dead_fraction.item() == 1.0


def test_half_precision_inputs_are_measured_in_float32():
    inputs = torch.randn(16, 4, generator=torch.Generator().manual_seed(2))
    exact = batch_statistics(inputs, torch.zeros(4), torch.ones(4), eps=1e-5)
    half = batch_statistics(inputs.to(torch.bfloat16), torch.zeros(4), torch.ones(4), eps=1e-5)
    assert half.mean_drift.dtype == torch.float32
    assert half.mean_drift.item() == pytest.approx(exact.mean_drift.item(), rel=2e-2)


def test_summary_matches_numpy():
    values = torch.randn(7, generator=torch.Generator().manual_seed(3))
    result = summary(values)
    reference_values = values.double().numpy()
    assert list(result) == ["mean", "min", "max"]
    assert result["mean"].item() == pytest.approx(reference_values.mean(), rel=1e-6)
    assert (result["min"].item(), result["max"].item()) == (values.min().item(), values.max().item())


def test_rank_divergence_matches_numpy():
    generator = torch.Generator().manual_seed(4)
    means, variances = torch.randn(3, 6, generator=generator), torch.rand(3, 6, generator=generator) + 0.1
    m, v = means.double().numpy(), variances.double().numpy()
    expected = max(np.mean(np.abs(m[r] - m.mean(axis=0)) / np.sqrt(v.mean(axis=0) + 1e-5)) for r in range(3))
    assert rank_divergence(means, variances, eps=1e-5).item() == pytest.approx(expected, rel=1e-6)


def test_identical_ranks_do_not_diverge():
    means = torch.randn(4, generator=torch.Generator().manual_seed(5)).expand(2, 4)
    assert rank_divergence(means, torch.ones(2, 4), eps=1e-5).item() == 0.0


@pytest.mark.parametrize(
    ("layer", "shape", "channels_last"),
    [
        (torch.nn.BatchNorm1d(5), (16, 5), False),
        (torch.nn.BatchNorm1d(5), (16, 5, 7), False),
        (torch.nn.BatchNorm2d(5), (16, 5, 6, 6), False),
        (torch.nn.BatchNorm2d(5), (16, 5, 6, 6), True),
        (torch.nn.BatchNorm3d(5, affine=False), (4, 5, 3, 3, 3), False),
    ],
)
def test_what_the_forward_saved_gives_the_values_of_the_input_s_moments(layer, shape, channels_last):
    inputs = torch.randn(shape) * 3 + 2
    inputs[:, 1] = 0.5  # a dead channel
    if channels_last:
        inputs = inputs.to(memory_format=torch.channels_last)
    inputs.requires_grad_(True)
    running = layer.running_mean.clone() + 1.0, layer.running_var.clone() * 2.0  # as they were before the forward
    moments, values_per_channel = forward_columns(layer, inputs, layer(inputs))
    assert sorted(moments) == ["batch_invstd", "batch_mean"]
    summarized = dict(zip(("running_mean", "running_var"), running, strict=True)) | affine_copies(layer)
    saved = LayerColumns(moments | summarized, layer.eps, values_per_channel)
    keys, values = layers_values({"bn": saved})
    expected_keys, expected = layer_values(layer, *running, channel_moments(inputs))
    assert keys["bn"] == expected_keys
    torch.testing.assert_close(values, expected, rtol=1e-5, atol=1e-6)
    assert dict(zip(expected_keys, values.tolist(), strict=True))["dead_fraction"] == pytest.approx(0.2)  # channel 1


def test_the_moments_are_computed_from_the_input_where_the_forward_saved_none():
    layer, inputs = torch.nn.BatchNorm1d(3).eval(), torch.randn(8, 3)
    with torch.no_grad():
        no_graph = layer.train()(inputs)
    for output in (layer.eval()(inputs), no_graph):
        moments, values_per_channel = forward_columns(layer, inputs, output)
        torch.testing.assert_close((moments["batch_mean"], moments["batch_var"]), channel_moments(inputs))
        assert values_per_channel == 8


def test_layers_of_different_kinds_come_back_in_the_layers_order_with_their_own_values():
    # Kinds (which rows a layer has) are reduced separately; the values must still follow the layers' order.
    torch.manual_seed(0)
    layers = {
        "a": torch.nn.BatchNorm1d(3),
        "b": torch.nn.BatchNorm1d(2, affine=False, track_running_stats=False),
        "c": torch.nn.BatchNorm1d(4),
    }
    columns, alone = {}, {}
    for name, layer in layers.items():
        inputs = torch.randn(6, layer.num_features)
        running = (layer.running_mean, layer.running_var) if layer.track_running_stats else (None, None)
        moments = channel_moments(inputs)
        columns[name] = layer_columns(layer, *running, moments)
        alone[name] = layer_values(layer, *running, moments)
    keys, values = layers_values(columns)
    assert list(keys) == ["a", "b", "c"] and keys["b"] == ["dead_fraction"]
    split = dict(zip(keys, values.split([len(layer_keys) for layer_keys in keys.values()]), strict=True))
    for name, (layer_keys, layer_values_alone) in alone.items():
        assert keys[name] == layer_keys
        torch.testing.assert_close(split[name], layer_values_alone)
