"""``clip_for_step``, the clipping decision, called directly (no Trainer): each branch against torch's own clipping."""

from __future__ import annotations

from collections.abc import Iterator

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.enums import GradClipAlgorithmType
from torch import nn

from lightning_optim.clipping.step import ClipState, ReportsClipping, clip_for_step
from lightning_optim.stats import RunningStatsSnapshot
from tests.models import MixinModel, RecordingModel

GRADS = [torch.tensor([[3.0, -4.0], [1.0, 2.0]]), torch.tensor([0.5, -6.0])]
"""Total 2-norm about 8.2: a threshold of 1.0 clips, 100.0 does not."""


def parameters() -> list[tuple[str, nn.Parameter]]:
    named = [("encoder.weight", nn.Parameter(torch.ones(2, 2))), ("head.bias", nn.Parameter(torch.ones(2)))]
    for (_, parameter), grad in zip(named, GRADS, strict=True):
        parameter.grad = grad.clone()
    return named


def grads(named: list[tuple[str, nn.Parameter]]) -> list[torch.Tensor | None]:
    return [None if parameter.grad is None else parameter.grad.clone() for _, parameter in named]


def clipped_by_torch(max_norm: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``clip_grad_norm_`` on copies of ``GRADS``: the total norm it returns and the gradients it leaves."""
    named = parameters()
    total = torch.nn.utils.clip_grad_norm_([parameter for _, parameter in named], max_norm)
    return total, grads(named)


def assert_equal(mine: list[torch.Tensor | None], theirs: list[torch.Tensor | None]) -> None:
    assert len(mine) == len(theirs)
    for a, b in zip(mine, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("max_norm", [1.0, 100.0], ids=["firing", "not_firing"])
def test_unfused_norm_clipping_scales_here_exactly_as_clip_grad_norm_(max_norm):
    named = parameters()
    optimizer = torch.optim.SGD([parameter for _, parameter in named], lr=0.1)
    result = clip_for_step(optimizer, named, max_norm, "norm")
    total, expected = clipped_by_torch(max_norm)
    assert result.algorithm == "norm" and result.threshold == max_norm and not result.folded
    torch.testing.assert_close(result.total, total, rtol=0, atol=0)
    torch.testing.assert_close(
        result.clipped_norm, torch.linalg.vector_norm(torch.cat([g.flatten() for g in expected]))
    )
    assert bool(result.clipped) is (max_norm == 1.0)
    assert_equal(grads(named), expected)


def test_a_fused_optimizer_takes_the_scaling_into_its_step():
    named, reference = parameters(), parameters()
    fused = torch.optim.AdamW([parameter for _, parameter in named], lr=0.1, fused=True)
    plain = torch.optim.AdamW([parameter for _, parameter in reference], lr=0.1)
    result = clip_for_step(fused, named, 1.0, "norm")
    total, expected = clipped_by_torch(1.0)
    assert result.folded and result.found_inf is None
    torch.testing.assert_close(result.total, total, rtol=0, atol=0)
    assert_equal(grads(named), [grad.clone() for grad in GRADS])  # nothing written before the step
    torch.testing.assert_close(fused.grad_scale, (total + 1e-6) / 1.0)
    fused.step()
    assert not hasattr(fused, "grad_scale") and not hasattr(fused, "found_inf")
    torch.testing.assert_close(grads(named), expected)  # the kernel writes the divided gradients back
    torch.nn.utils.clip_grad_norm_([parameter for _, parameter in reference], 1.0)
    plain.step()
    for (_, mine), (_, theirs) in zip(named, reference, strict=True):
        torch.testing.assert_close(mine, theirs)


def test_fold_off_or_value_clipping_scale_a_fused_optimizer_s_gradients_here():
    named = parameters()
    fused = torch.optim.AdamW([parameter for _, parameter in named], lr=0.1, fused=True)
    assert not clip_for_step(fused, named, 1.0, "norm", fold=False).folded
    assert_equal(grads(named), clipped_by_torch(1.0)[1])


@pytest.mark.parametrize("algorithm", ["value", GradClipAlgorithmType.VALUE], ids=["string", "lightning_enum"])
def test_value_clipping_is_clip_grad_value_(algorithm):
    named, reference = parameters(), parameters()
    fused = torch.optim.SGD([parameter for _, parameter in named], lr=0.1, fused=True)
    result = clip_for_step(fused, named, 2.5, algorithm)
    torch.nn.utils.clip_grad_value_([parameter for _, parameter in reference], 2.5)
    assert (result.algorithm, result.threshold, result.total, result.folded) == ("value", 2.5, None, False)
    assert_equal(grads(named), grads(reference))


def test_no_threshold_clips_nothing_and_forgets_an_unconsumed_divisor():
    named = parameters()
    fused = torch.optim.SGD([parameter for _, parameter in named], lr=0.1, fused=True)
    clip_for_step(fused, named, 1.0)
    assert hasattr(fused, "grad_scale")
    assert clip_for_step(fused, named, 0.0) is None and clip_for_step(fused, named, None) is None
    assert not hasattr(fused, "grad_scale") and not hasattr(fused, "found_inf")
    assert_equal(grads(named), [grad.clone() for grad in GRADS])


def test_per_group_norms_come_from_the_same_pass_and_names_are_read_only_for_them():
    named = parameters()
    optimizer = torch.optim.SGD([parameter for _, parameter in named], lr=0.1)

    def counting() -> Iterator[tuple[str, nn.Parameter]]:
        reads.append(1)
        yield from named

    reads: list[int] = []
    clip_for_step(optimizer, counting(), 1.0)
    assert reads == []
    named = parameters()
    optimizer = torch.optim.SGD([parameter for _, parameter in named], lr=0.1)
    result = clip_for_step(optimizer, counting(), 1.0, group_of=lambda name: name.split(".")[0])
    assert reads == [1]
    assert sorted(result.groups) == ["encoder", "head"]
    for (name, _), grad in zip(named, GRADS, strict=True):
        torch.testing.assert_close(result.groups[name.split(".")[0]], torch.linalg.vector_norm(grad))


class BatchNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.norm = nn.BatchNorm1d(2)
        self.head = nn.Linear(2, 1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(inputs))


def nan_step(fused: bool) -> tuple[BatchNormNet, torch.optim.Optimizer, dict[str, torch.Tensor], RunningStatsSnapshot]:
    """A forward and backward on a batch with a NaN: the gradients and the BatchNorm running statistics are NaN."""
    net = BatchNormNet()
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.1, fused=fused)
    snapshot = RunningStatsSnapshot(net)
    before = {name: buffer.clone() for name, buffer in net.named_buffers()}
    snapshot.take()
    net(torch.tensor([[float("nan"), 1.0], [2.0, 3.0]])).sum().backward()
    assert net.norm.running_mean.isnan().any() and int(net.norm.num_batches_tracked) == 1
    return net, optimizer, before, snapshot


def assert_buffers(net: nn.Module, before: dict[str, torch.Tensor]) -> None:
    for name, buffer in net.named_buffers():
        torch.testing.assert_close(buffer, before[name], rtol=0, atol=0)


def test_a_nonfinite_step_is_skipped_by_dropping_the_gradients_and_restoring_batchnorm():
    net, optimizer, before, snapshot = nan_step(fused=False)
    result = clip_for_step(optimizer, list(net.named_parameters()), 1.0, skip_nonfinite=snapshot)
    assert not torch.isfinite(result.total) and not result.folded
    assert all(parameter.grad is None for parameter in net.parameters())
    assert_buffers(net, before)


def test_a_folded_nonfinite_step_is_skipped_by_the_fused_step_and_batchnorm_restored_on_the_device():
    net, optimizer, before, snapshot = nan_step(fused=True)
    weights = [parameter.detach().clone() for parameter in net.parameters()]
    result = clip_for_step(optimizer, list(net.named_parameters()), 1.0, skip_nonfinite=snapshot)
    assert result.folded and float(result.found_inf) == 1.0
    assert_buffers(net, before)
    optimizer.step()
    assert_equal([parameter.detach() for parameter in net.parameters()], weights)
    assert optimizer.state == {} or all(int(state["step"]) == 0 for state in optimizer.state.values())


def test_a_finite_step_is_not_skipped():
    named = parameters()
    net = BatchNormNet()
    snapshot = RunningStatsSnapshot(net)
    snapshot.take()
    optimizer = torch.optim.SGD([parameter for _, parameter in named], lr=0.1)
    clip_for_step(optimizer, named, 1.0, skip_nonfinite=snapshot)
    assert_equal(grads(named), clipped_by_torch(1.0)[1])


SCALE = 1024.0


def scaled_step(fold: bool) -> tuple[list[tuple[str, nn.Parameter]], torch.optim.Optimizer, torch.amp.GradScaler]:
    """Parameters whose gradients are ``GRADS`` times the scaler's scale, as AMP's backward leaves them."""
    named = parameters()
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    optimizer = torch.optim.AdamW([parameter for _, parameter in named], lr=0.1, fused=True)
    scaler.scale(torch.zeros(()))  # the scale tensor exists from the first scaled loss on
    for _, parameter in named:
        parameter.grad.mul_(SCALE)
    return named, optimizer, scaler


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "unscaled_first"])
def test_still_scaled_gradients_are_reported_unscaled_and_stepped_like_unscaled_ones(fold):
    named, optimizer, scaler = scaled_step(fold)
    result = clip_for_step(optimizer, named, 1.0, scaler=scaler, fold=fold)
    total, expected = clipped_by_torch(1.0)
    assert result.folded is fold
    torch.testing.assert_close(result.total, total)
    torch.testing.assert_close(result.clipped_norm, torch.tensor(1.0))
    if not fold:
        assert_equal(grads(named), expected)  # unscale_ (a power of two) then clip_grad_norm_: exact
    scaler.step(optimizer)
    reference = parameters()
    torch.nn.utils.clip_grad_norm_([parameter for _, parameter in reference], 1.0)
    torch.optim.AdamW([parameter for _, parameter in reference], lr=0.1).step()
    for (_, mine), (_, theirs) in zip(named, reference, strict=True):
        torch.testing.assert_close(mine, theirs)


def test_a_disabled_scaler_changes_nothing():
    named, reference = parameters(), parameters()
    optimizer = torch.optim.AdamW([parameter for _, parameter in named], lr=0.1, fused=True)
    disabled = torch.amp.GradScaler("cpu", enabled=False)
    mine = clip_for_step(optimizer, named, 1.0, scaler=disabled)
    theirs = clip_for_step(torch.optim.AdamW([p for _, p in reference], lr=0.1, fused=True), reference, 1.0)
    torch.testing.assert_close(mine.total, theirs.total, rtol=0, atol=0)


class ShardedStandIn:
    """What ``clip_for_step`` uses of an FSDP-wrapped model: ``clip_grad_norm_``, returning the global norm."""

    def __init__(self, named: list[tuple[str, nn.Parameter]]) -> None:
        self.named = named
        self.calls: list[float] = []

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        self.calls.append(max_norm)
        return torch.nn.utils.clip_grad_norm_([parameter for _, parameter in self.named], max_norm)


def test_under_fsdp_the_wrapper_clips_and_its_global_norm_is_reported():
    named = parameters()
    sharded = ShardedStandIn(named)
    fused = torch.optim.AdamW([parameter for _, parameter in named], lr=0.1, fused=True)
    result = clip_for_step(fused, named, 1.0, sharded=sharded)
    total, expected = clipped_by_torch(1.0)
    assert sharded.calls == [1.0] and not result.folded and not hasattr(fused, "grad_scale")
    torch.testing.assert_close(result.total, total, rtol=0, atol=0)
    torch.testing.assert_close(result.clipped_norm, total * (1.0 / (total + 1e-6)), rtol=0, atol=0)
    assert bool(result.clipped)
    assert_equal(grads(named), expected)


def test_under_fsdp_value_clipping_and_a_nonfinite_skip():
    named = parameters()
    sharded = ShardedStandIn(named)
    optimizer = torch.optim.SGD([parameter for _, parameter in named], lr=0.1)
    assert clip_for_step(optimizer, named, 2.5, "value", sharded=sharded).algorithm == "value"
    assert sharded.calls == []
    named[0][1].grad[0, 0] = float("nan")
    snapshot = RunningStatsSnapshot(BatchNormNet())
    snapshot.take()
    result = clip_for_step(optimizer, named, 1.0, sharded=sharded, skip_nonfinite=snapshot)
    assert not torch.isfinite(result.total)
    assert all(parameter.grad is None for _, parameter in named)


def test_the_mixin_reports_clipping_through_the_protocol_and_a_plain_module_does_not():
    model = MixinModel({"optimizer": {"name": "sgd", "lr": 0.1}})
    assert isinstance(model, ReportsClipping) and isinstance(model.clip_state, ClipState)
    assert model.clip_state is model.clip_state
    assert not isinstance(RecordingModel(), ReportsClipping)
    assert not isinstance(L.LightningModule(), ReportsClipping)
