"""A NaN batch at one optimizer step: the monitors keep running, and a skipped step leaves no trace."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optim import OptimMixin
from lightning_optim.callbacks import BatchNormMonitor, GradNormMonitor, LRMonitor, TensorBoardDashboard
from lightning_optim.clipping.arithmetic import ClipResult
from lightning_optim.clipping.step import ReportsClipping
from lightning_optim.stats import RunningStatsSnapshot
from tests.models import trainer
from tests.tb import histogram_steps, scalars

BAD_BATCH = 2
"""The training batch whose first image is NaN."""
LAYERS = ("features.0", "features.2")
SUMMARIES = [f"{t}_{s}" for t in ("running_mean", "running_var", "weight", "bias") for s in ("mean", "min", "max")]
BATCH_STATISTICS = ["mean_drift", "var_ratio", "dead_fraction"]


def images(batches: int = 4, batch_size: int = 8) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(batches * batch_size, 3, 4, 4, generator=generator)
    return DataLoader(TensorDataset(inputs, torch.randn(len(inputs), 1, generator=generator)), batch_size=batch_size)


class NaNBatchNet(L.LightningModule):
    """BatchNorm2d on the images, a 1x1 conv, BatchNorm2d, a linear head; batch ``bad_batch`` has a NaN image.

    ``states`` holds, before the first optimizer step and after every one, the module's state (parameters and
    BatchNorm buffers) and the optimizer's state, copied; ``found_inf`` each step's ``clip_state.last.found_inf``.
    """

    def __init__(self, bad_batch: int = BAD_BATCH) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4 * 16, 1)
        self.bad_batch = bad_batch
        self.states: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self.found_inf: list[torch.Tensor | None] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        if batch_idx == self.bad_batch:
            inputs = inputs.clone()
            inputs[0] = float("nan")
        return nn.functional.mse_loss(self.head(self.features(inputs).flatten(1)), targets)

    def on_train_start(self) -> None:
        self._record_state()

    def on_train_batch_end(self, *args: Any) -> None:
        if not self.trainer.fit_loop.epoch_loop._should_accumulate():
            self._record_state()
            clip: ClipResult | None = self.clip_state.last if isinstance(self, ReportsClipping) else None
            self.found_inf.append(None if clip is None else clip.found_inf)

    def _record_state(self) -> None:
        optimizer = self.trainer.optimizers[0]
        self.states.append((copy.deepcopy(self.state_dict()), copy.deepcopy(optimizer.state_dict())))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class NaNBatchMixinNet(OptimMixin, NaNBatchNet):
    def __init__(self, optimizer: dict[str, Any], bad_batch: int = BAD_BATCH) -> None:
        super().__init__(bad_batch)
        self.optim_config = {"optimizer": optimizer}


def assert_identical(mine: Any, theirs: Any, where: str = "") -> None:
    """Nested dicts/lists of tensors and numbers equal exactly (``torch.equal``: NaN never equals NaN)."""
    assert type(mine) is type(theirs), where
    if isinstance(mine, dict):
        assert mine.keys() == theirs.keys(), where
        for key in mine:
            assert_identical(mine[key], theirs[key], f"{where}/{key}")
    elif isinstance(mine, list | tuple):
        assert len(mine) == len(theirs), where
        for index, (a, b) in enumerate(zip(mine, theirs, strict=True)):
            assert_identical(a, b, f"{where}/{index}")
    elif isinstance(mine, torch.Tensor):
        assert torch.equal(mine, theirs), f"{where}: {mine} != {theirs}"
    else:
        assert mine == theirs, where


def nonfinite_tensors(tree: Any, where: str = "") -> list[str]:
    """The paths of the floating-point tensors in a nested dict/list that hold a NaN or Inf."""
    if isinstance(tree, dict):
        return [path for key, value in tree.items() for path in nonfinite_tensors(value, f"{where}/{key}")]
    if isinstance(tree, list | tuple):
        return [path for index, value in enumerate(tree) for path in nonfinite_tensors(value, f"{where}/{index}")]
    if isinstance(tree, torch.Tensor) and tree.is_floating_point() and not torch.isfinite(tree).all():
        return [where]
    return []


def monitors(policy: str) -> list[L.Callback]:
    return [
        BatchNormMonitor(histogram_every_n=1),
        GradNormMonitor(nonfinite=policy),
        LRMonitor(),
        TensorBoardDashboard(histogram_every_n_steps=1),
    ]


def fit_monitored(model: L.LightningModule, tmp_path: Path, policy: str) -> Path:
    logger = TensorBoardLogger(tmp_path, name="", version="")
    run = trainer(max_epochs=1, logger=logger, log_every_n_steps=1, callbacks=monitors(policy))
    run.fit(model, images())
    return Path(logger.log_dir)


def test_warn_completes_the_run_and_logs_every_finite_value(tmp_path):
    with (
        pytest.warns(
            UserWarning,
            match=r"BatchNormMonitor: NaN/Inf statistics at step 2 in layer 'features\.0' \(mean_drift, var_ratio, "
            r"dead_fraction\) and 1 other layer\(s\): its input, running statistics or affine parameters are not "
            r"finite",
        ),
        pytest.warns(
            UserWarning,
            match=r"BatchNormMonitor: histogram 'batchnorm/features\.0/input' at step 2 has 48 NaN/Inf values out "
            r"of 384\. Histograms show the finite values only, and are not written when none is finite",
        ),
    ):
        log_dir = fit_monitored(NaNBatchNet(), tmp_path, "warn")
    logged = scalars(log_dir)
    steps = {tag: [step for step, _ in points] for tag, points in logged.items()}
    # Step 2 measures the NaN batch against the running statistics and weights from before it, which are finite;
    # its update makes the running statistics and (no skip) the weights NaN from step 3 on. features.0 sees the raw
    # images, finite again at step 3, so its dead_fraction (which needs nothing else) is measured there.
    for layer in LAYERS:
        for key in BATCH_STATISTICS:
            finite_steps = [0, 1, 3] if (layer, key) == ("features.0", "dead_fraction") else [0, 1]
            assert steps[f"batchnorm/{layer}/{key}"] == finite_steps, (layer, key)
        for key in SUMMARIES:
            assert steps[f"batchnorm/{layer}/{key}"] == [0, 1, 2], (layer, key)
    assert steps["lr-SGD"] == steps["grad_norm/total"] == [0, 1, 2, 3]
    assert [value for _, value in logged["grad_norm/nonfinite"]] == [0, 0, 1, 2]
    # The raw images stay finite after step 2; everything the NaN model computes from them does not.
    histograms = histogram_steps(log_dir)
    assert histograms["batchnorm/features.0/input"] == [0, 1, 2, 3]
    for tag in ("batchnorm/features.0/output", "batchnorm/features.2/input", "batchnorm/features.2/output"):
        assert histograms[tag] == [0, 1], tag
    report = json.loads((log_dir / "batchnorm_report.json").read_text())
    every_key = sorted(BATCH_STATISTICS + SUMMARIES)
    assert [(row["layer"], row["nonfinite"], row["mean_drift"], row["dead_fraction"]) for row in report["layers"]] == [
        ("features.0", [key for key in every_key if key != "dead_fraction"], None, 0.0),
        ("features.2", every_key, None, None),
    ]
    assert all("NaN/Inf statistics" in row["attention"] for row in report["layers"])


def test_raise_stops_with_the_first_bad_parameter_not_a_monitor_crash(tmp_path):
    with pytest.raises(
        FloatingPointError,
        match=r"optimizer step 2: the first parameter with a NaN/Inf gradient is 'features\.0\.weight'",
    ):
        fit_monitored(NaNBatchNet(), tmp_path, "raise")


def test_raise_names_an_overflowing_norm_of_finite_gradients(tmp_path):
    class Huge(NaNBatchNet):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            # Finite gradients of about 1e30: their squares, and so the 2-norm, overflow float32.
            return super().training_step(batch, batch_idx) * 1e30

    with pytest.raises(
        FloatingPointError,
        match=r"optimizer step 0: every gradient is finite, but their total 2-norm overflowed \(inf\)\. Lower the "
        r"lr or the loss scale, or clip gradients by value\.",
    ):
        trainer(max_steps=1, callbacks=[GradNormMonitor(nonfinite="raise")]).fit(Huge(bad_batch=-1), images())


ADAMW = {"name": "adamw", "lr": 0.01, "fused": True}
SGD = {"name": "sgd", "lr": 0.05, "momentum": 0.9}
SKIPPING = {
    # name: (optimizer of the mixin or None for the model's own SGD without the mixin, fused step skips, clip_val)
    "folded_fused_adamw": (ADAMW, True, 1.0),
    "unfused_sgd_momentum": (SGD, False, 1.0),
    "monitor_without_mixin": (None, False, None),
}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "accumulate", "bad_batch"),
    [
        *[(case, 1, BAD_BATCH) for case in SKIPPING],
        # The NaN image in the second batch of optimizer step 1: the first batch's update is undone too.
        *[(case, 2, 3) for case in SKIPPING],
        # torch's fused SGD would corrupt its momentum on a skipped first step: skipped on the host instead.
        ("fused_sgd_first_step", 1, 0),
    ],
)
def test_skip_leaves_no_trace(case, accumulate, bad_batch, tmp_path):
    optimizer, folded, clip_val = SKIPPING.get(case, ({**SGD, "fused": True}, True, 1.0))
    model = NaNBatchNet(bad_batch) if optimizer is None else NaNBatchMixinNet(optimizer, bad_batch)
    bad_step = bad_batch // accumulate
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    run = trainer(
        max_epochs=1,
        gradient_clip_val=clip_val,
        accumulate_grad_batches=accumulate,
        enable_checkpointing=True,
        callbacks=[GradNormMonitor(nonfinite="skip"), checkpoint],
    )
    run.fit(model, images(batches=8))
    assert len(model.states) == 1 + 8 // accumulate
    assert_identical(model.states[bad_step + 1], model.states[bad_step])
    assert not torch.equal(model.states[bad_step + 2][0]["head.weight"], model.states[bad_step + 1][0]["head.weight"])
    # The folded path decides on the device (found_inf), except for fused SGD until it has momentum buffers: the
    # skipped step 0 and step 1.
    on_the_device = [folded] * (8 // accumulate)
    if case == "fused_sgd_first_step":
        on_the_device[:2] = [False, False]
    assert [flag is not None for flag in model.found_inf] == on_the_device
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert nonfinite_tensors(saved["state_dict"]) + nonfinite_tensors(saved["optimizer_states"]) == []
    assert saved["state_dict"]["features.0.num_batches_tracked"] == 8 - accumulate


def test_restore_where_keeps_or_puts_back_every_buffer_exactly():
    # Two kinds (float32 and float64 buffers, and the int64 counters), each with statistics of its own.
    model = nn.Sequential(nn.BatchNorm1d(3), nn.BatchNorm1d(3, dtype=torch.float64))
    model[0](torch.randn(4, 3))
    model[1](torch.randn(4, 3, dtype=torch.float64))
    snapshot = RunningStatsSnapshot(model)
    snapshot.take()
    taken = copy.deepcopy(model.state_dict())
    model[0](torch.tensor([[float("nan"), 1.0, 2.0], [0.0, 1.0, 3.0]]))
    model[1](torch.randn(4, 3, dtype=torch.float64))
    updated = copy.deepcopy(model.state_dict())
    snapshot.restore_where(torch.tensor(0.0))
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, updated[key], rtol=0, atol=0, equal_nan=True)
    assert torch.isnan(model[0].running_mean).any()
    snapshot.restore_where(torch.tensor(1.0))
    assert_identical(model.state_dict(), taken)


def test_a_snapshot_follows_buffers_that_were_replaced():
    model = nn.Sequential(nn.LazyBatchNorm1d())
    snapshot = RunningStatsSnapshot(model)
    snapshot.take()
    model(torch.randn(4, 2))
    snapshot.take()
    model.to(torch.float64)
    snapshot.take()
    model(torch.tensor([[float("nan"), 1.0], [0.0, 1.0]], dtype=torch.float64))
    snapshot.restore()
    assert model[0].running_mean.dtype == torch.float64
    assert torch.isfinite(model[0].running_mean).all() and int(model[0].num_batches_tracked) == 1
