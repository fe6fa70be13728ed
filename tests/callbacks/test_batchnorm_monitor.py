"""BatchNormMonitor through real Trainers, on constructed data whose statistics are known."""

from __future__ import annotations

import csv
import itertools
import json
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optim.callbacks import BatchNormMonitor
from tests import tb
from tests.models import MemoryLogger, trainer

SUMMARY_KEYS = [f"{t}_{s}" for t in ("running_mean", "running_var", "weight", "bias") for s in ("mean", "min", "max")]
LAYER_KEYS = sorted(["mean_drift", "var_ratio", "dead_fraction", *SUMMARY_KEYS])


class RecordingLogger(MemoryLogger):
    """Keeps every ``log_metrics`` call, with the ``batchnorm/`` keys per step at hand."""

    def batchnorm(self) -> dict[int, dict[str, float]]:
        """``{step: {key: value}}`` of the ``batchnorm/`` keys."""
        steps: dict[int, dict[str, float]] = {}
        for step, metrics in self.logged:
            values = {key: value for key, value in metrics.items() if key.startswith("batchnorm/")}
            if values:
                assert not set(values) & set(steps.get(step, {})), f"step {step} logged twice"
                steps.setdefault(step, {}).update(values)
        return steps


class BatchNormNet(L.LightningModule):
    """BatchNorm2d on the raw (N, 3, 4, 4) images (so its input is the batch), a conv, a second BatchNorm2d.

    Records, for each training batch, the input, running statistics and weight of ``features.0`` before the forward,
    and how many hooks each BatchNorm layer carries.
    """

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4 * 16, 1)
        self.before: list[tuple[torch.Tensor, ...]] = []
        self.hook_counts: list[int] = []
        self.eval_layer: str | None = None

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(inputs).flatten(1))

    def on_train_epoch_start(self) -> None:
        if self.eval_layer is not None:
            self.get_submodule(self.eval_layer).eval()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        bn = self.features[0]
        self.before.append(
            (inputs.clone(), bn.running_mean.clone(), bn.running_var.clone(), bn.weight.detach().clone())
        )
        layers = [m for m in self.modules() if isinstance(m, nn.BatchNorm2d)]
        self.hook_counts.append(sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in layers))
        return nn.functional.mse_loss(self(inputs), targets)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def images(samples: int = 48, batch_size: int = 8, seed: int = 0, constant_channel: int | None = None) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    inputs = 2 * torch.randn(samples, 3, 4, 4, generator=generator) + torch.tensor([1.0, -1.0, 3.0]).view(1, 3, 1, 1)
    if constant_channel is not None:
        inputs[:, constant_channel] = 0.5
    return DataLoader(TensorDataset(inputs, torch.randn(samples, 1, generator=generator)), batch_size=batch_size)


def numpy_statistics(inputs: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor, eps: float):
    """mean_drift, var_ratio, dead_fraction of an (N, C, H, W) batch, computed in float64 numpy."""
    channels = np.moveaxis(inputs.double().numpy(), 1, 0).reshape(inputs.shape[1], -1)
    mean, var = channels.mean(axis=1), channels.var(axis=1, ddof=1)
    rm, rv = running_mean.double().numpy(), running_var.double().numpy()
    return np.mean(np.abs(mean - rm) / np.sqrt(rv + eps)), np.mean(var / (rv + eps)), np.mean(var < 1e-5)


def test_logging_steps_keys_and_values_against_numpy():
    model, logger = BatchNormNet(), RecordingLogger()
    trainer(logger=logger, log_every_n_steps=2, callbacks=[BatchNormMonitor(report=False)]).fit(model, images())
    logged = logger.batchnorm()
    assert sorted(logged) == [1, 3, 5], "Lightning's logging steps of 6 batches at log_every_n_steps=2"
    for step, values in logged.items():
        expected = {f"batchnorm/{layer}/{key}" for layer in ("features.0", "features.2") for key in LAYER_KEYS}
        assert set(values) == expected
        inputs, running_mean, running_var, weight = model.before[step]
        drift, ratio, dead = numpy_statistics(inputs, running_mean, running_var, eps=1e-5)
        assert values["batchnorm/features.0/mean_drift"] == pytest.approx(drift, rel=1e-5)
        assert values["batchnorm/features.0/var_ratio"] == pytest.approx(ratio, rel=1e-5)
        assert values["batchnorm/features.0/dead_fraction"] == dead == 0.0
        assert values["batchnorm/features.0/running_mean_max"] == pytest.approx(running_mean.max().item())
        assert values["batchnorm/features.0/running_var_min"] == pytest.approx(running_var.min().item())
        assert values["batchnorm/features.0/weight_mean"] == pytest.approx(weight.double().mean().item(), rel=1e-6)
        assert all(isinstance(value, float) for value in values.values())


def test_a_constant_channel_is_exactly_one_third_dead_and_reported(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")
    model = BatchNormNet()
    monitor = BatchNormMonitor()
    fit_trainer = trainer(logger=RecordingLogger(tmp_path), log_every_n_steps=1, callbacks=[monitor])
    fit_trainer.fit(model, images(constant_channel=1))
    assert monitor.last["features.0"]["dead_fraction"] == float(np.float32(1 / 3)), "1 of 3 channels, in float32"
    assert monitor.last["features.2"]["dead_fraction"] == 0.0
    report = json.loads((tmp_path / "batchnorm_report.json").read_text())
    rows = {row["layer"]: row for row in report["layers"]}
    assert list(rows) == ["features.0", "features.2"]
    assert rows["features.0"]["dead_channels"] == 1 and rows["features.0"]["channels"] == 3
    drifting = ["mean drift > 0.5"] if rows["features.0"]["mean_drift"] > 0.5 else []
    assert rows["features.0"]["attention"] == ["dead channels", *drifting]
    assert "dead channels" not in rows["features.2"]["attention"]
    assert rows["features.0"]["mode"] == "train" and rows["features.0"]["type"] == "BatchNorm2d"
    assert rows["features.0"]["mean_drift"] == monitor.last["features.0"]["mean_drift"]
    assert report["step"] == 5 and report["thresholds"]["dead_threshold"] == 1e-5
    printed = caplog.text  # logged through Lightning's logger (the Hydra app's train.log gets it too)
    lines = {line.split("│")[1].strip(): line for line in printed.splitlines() if line.count("│") > 2}
    second = "! features.2" if rows["features.2"]["attention"] else "features.2"
    assert "BatchNorm health" in printed and set(lines) == {"! features.0", second}
    assert "dead channels" in lines["! features.0"] and "1/3" in lines["! features.0"]
    assert "0/4" in lines[second]


def test_drift_falls_as_running_statistics_converge_on_repeated_data():
    batch = images(samples=8, batch_size=8).dataset.tensors
    repeated = DataLoader(TensorDataset(batch[0].repeat(10, 1, 1, 1), batch[1].repeat(10, 1)), batch_size=8)
    model, logger = BatchNormNet(), RecordingLogger()
    trainer(logger=logger, log_every_n_steps=1, callbacks=[BatchNormMonitor(report=False)]).fit(model, repeated)
    drifts = [values["batchnorm/features.0/mean_drift"] for _, values in sorted(logger.batchnorm().items())]
    assert len(drifts) == 10 and all(later < earlier for earlier, later in itertools.pairwise(drifts))
    # The same EMA (momentum 0.1, unbiased batch variance) simulated in numpy, from zero mean and unit variance.
    channels = np.moveaxis(batch[0].double().numpy(), 1, 0).reshape(3, -1)
    mean, var = channels.mean(axis=1), channels.var(axis=1, ddof=1)
    running_mean, running_var = np.zeros(3), np.ones(3)
    for drift in drifts:
        assert drift == pytest.approx(np.mean(np.abs(mean - running_mean) / np.sqrt(running_var + 1e-5)), rel=1e-5)
        running_mean, running_var = 0.9 * running_mean + 0.1 * mean, 0.9 * running_var + 0.1 * var
    assert drifts[-1] < 0.4 * drifts[0]


def test_a_layer_in_eval_mode_is_named_once():
    model = BatchNormNet()
    model.eval_layer = "features.2"
    monitor = BatchNormMonitor(report=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(log_every_n_steps=1, max_epochs=2, callbacks=[monitor]).fit(model, images())
    messages = [str(w.message) for w in caught if "eval mode" in str(w.message)]
    assert len(messages) == 1 and messages[0].startswith("BatchNorm layer 'features.2' (BatchNorm2d) is in eval mode")
    rows = {row["layer"]: row for row in monitor.report_rows()}
    assert rows["features.2"]["mode"] == "eval" and "eval mode while training" in rows["features.2"]["attention"]
    assert rows["features.0"]["mode"] == "train" and "eval mode while training" not in rows["features.0"]["attention"]


def test_small_per_device_batches_are_named_but_not_a_partial_last_batch():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(log_every_n_steps=1, callbacks=[BatchNormMonitor(report=False)]).fit(BatchNormNet(), images(50, 8))
    assert not [w for w in caught if "per device" in str(w.message)], "the last batch of 2 is only partial"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(log_every_n_steps=1, callbacks=[BatchNormMonitor(report=False)]).fit(BatchNormNet(), images(16, 4))
    messages = [str(w.message) for w in caught if "per device" in str(w.message)]
    assert [message.split(" gets")[0] for message in messages] == [
        "BatchNorm layer 'features.0'",
        "BatchNorm layer 'features.2'",
    ]
    assert "batches of 4 samples per device, fewer than min_batch_size=8" in messages[0]


class Profile(L.Callback):
    """Counts host-sync ops (``aten::item``, ``aten::_local_scalar_dense``) from batch start to batch end."""

    def __init__(self, opening: bool, counts: dict[int, int]) -> None:
        self.opening, self.counts = opening, counts

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.opening:
            self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.profiler.__enter__()
            Profile.active = self.profiler

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self.opening:
            Profile.active.__exit__(None, None, None)
            events = Profile.active.events()
            syncs = ("aten::item", "aten::_local_scalar_dense")
            self.counts[batch_idx] = sum(event.name in syncs for event in events)


def test_no_hooks_and_no_host_sync_on_non_logging_steps():
    model, counts = BatchNormNet(), {}
    callbacks = [Profile(True, counts), BatchNormMonitor(report=False), Profile(False, counts)]
    trainer(logger=RecordingLogger(), log_every_n_steps=3, callbacks=callbacks).fit(model, images())
    assert model.hook_counts == [0, 0, 2, 0, 0, 2], "one pre-hook per layer on logging steps (2 and 5) only"
    assert all(len(m._forward_pre_hooks) == 0 for m in model.modules()), "hooks removed after the step"
    assert {index: counts[index] for index in (0, 1, 3, 4)} == {0: 0, 1: 0, 3: 0, 4: 0}


def test_every_n_logging_steps_measures_a_fraction_of_them_as_every_step_would():
    logged = {}
    for every_n in (1, 4):
        model, logger = BatchNormNet(), RecordingLogger()
        monitor = BatchNormMonitor(report=False, every_n_logging_steps=every_n)
        trainer(logger=logger, log_every_n_steps=1, callbacks=[monitor]).fit(model, images())
        logged[every_n] = logger.batchnorm()
    assert sorted(logged[4]) == [0, 4] and model.hook_counts == [2, 0, 0, 0, 2, 0]
    assert logged[4] == {step: logged[1][step] for step in (0, 4)}


@pytest.mark.parametrize("every_n", [0, 2.0, True])
def test_every_n_logging_steps_must_be_a_positive_int(every_n):
    with pytest.raises(ValueError) as error:
        BatchNormMonitor(every_n_logging_steps=every_n)
    assert str(error.value) == (
        f"BatchNormMonitor(every_n_logging_steps={every_n!r}) is not valid. Expected an int >= 1, e.g. 10."
    )


def test_accumulated_batches_log_each_step_once():
    model, logger = BatchNormNet(), RecordingLogger()
    callbacks = [BatchNormMonitor(report=False)]
    trainer(logger=logger, log_every_n_steps=1, accumulate_grad_batches=2, callbacks=callbacks).fit(model, images())
    assert sorted(logger.batchnorm()) == [0, 1, 2] and model.hook_counts == [2, 0, 2, 0, 2, 0]


def test_histograms_before_and_after_every_n_logging_steps(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    monitor = BatchNormMonitor(histogram_every_n=2, report=False)
    trainer(logger=logger, log_every_n_steps=1, callbacks=[monitor]).fit(BatchNormNet(), images(32, 8))
    logger.experiment.flush()
    events = tb.accumulator(tmp_path)
    histograms = {tag for tag in events.Tags()["histograms"]}
    assert histograms == {
        f"batchnorm/{layer}/{side}" for layer in ("features.0", "features.2") for side in ("input", "output")
    }
    assert [event.step for event in events.Histograms("batchnorm/features.0/output")] == [0, 2]
    first_input = events.Histograms("batchnorm/features.0/input")[0].histogram_value
    assert first_input.num == 8 * 3 * 4 * 4
    assert "batchnorm/features.2/mean_drift" in events.Tags()["scalars"]


def huge(inputs: torch.Tensor) -> torch.Tensor:
    """Finite float32 values, each beyond TensorBoard's default histogram bins (which end at 1e20 either way)."""
    return torch.where(inputs < 0, inputs - 1, inputs + 1) * 1e21


class HugeInputs(BatchNormNet):
    """``BatchNormNet`` whose first BatchNorm layer sees :func:`huge` inputs."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return super().forward(huge(inputs))


def test_histograms_of_huge_finite_values_are_written_whole(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    monitor = BatchNormMonitor(histogram_every_n=2, report=False)
    model = HugeInputs()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(logger=logger, log_every_n_steps=1, callbacks=[monitor]).fit(model, images(32, 8))
    assert not [str(w.message) for w in caught if "histogram" in str(w.message)]
    logger.experiment.flush()
    events = tb.accumulator(tmp_path)
    assert set(events.Tags()["histograms"]) == {
        f"batchnorm/{layer}/{side}" for layer in ("features.0", "features.2") for side in ("input", "output")
    }
    assert [event.step for event in events.Histograms("batchnorm/features.0/input")] == [0, 2]
    for event, batch in zip(events.Histograms("batchnorm/features.0/input"), (0, 2), strict=True):
        values = huge(model.before[batch][0]).double()
        histogram = event.histogram_value
        assert (histogram.num, sum(histogram.bucket)) == (values.numel(), values.numel())
        assert (histogram.min, histogram.max) == (values.min().item(), values.max().item())
        assert histogram.bucket_limit[-1] >= values.max().item()


class EveryKind(L.LightningModule):
    """A lazy BatchNorm1d, a BatchNorm3d without affine, a SyncBatchNorm and one without running statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.lazy = nn.LazyBatchNorm1d()
        self.volume = nn.BatchNorm3d(2, affine=False)
        self.sync = nn.SyncBatchNorm(2)
        self.untracked = nn.BatchNorm1d(4, track_running_stats=False)
        self.head = nn.Linear(4, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        hidden = self.lazy(inputs)
        volume = self.volume(hidden.view(-1, 2, 2, 1, 1)).view(-1, 4)
        planes = self.sync(volume.view(-1, 2, 2, 1)).view(-1, 4)
        return nn.functional.mse_loss(self.head(self.untracked(planes)), targets)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_every_kind_of_batchnorm_layer_is_measured():
    logger = RecordingLogger()
    generator = torch.Generator().manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(32, 4, generator=generator), torch.randn(32, 1)), batch_size=8)
    trainer(logger=logger, log_every_n_steps=1, callbacks=[BatchNormMonitor(report=False)]).fit(EveryKind(), data)
    keys = {key.split("/", 1)[1] for values in logger.batchnorm().values() for key in values}
    by_layer: dict[str, set[str]] = {}
    for key in keys:
        layer, name = key.split("/")
        by_layer.setdefault(layer, set()).add(name)
    assert sorted(by_layer) == ["lazy", "sync", "untracked", "volume"]
    assert sorted(by_layer["lazy"]) == LAYER_KEYS and sorted(by_layer["sync"]) == LAYER_KEYS
    assert by_layer["volume"] == set(LAYER_KEYS) - {key for key in LAYER_KEYS if key.startswith(("weight", "bias"))}
    assert by_layer["untracked"] == {
        "dead_fraction",
        *(key for key in SUMMARY_KEYS if key.startswith(("weight", "bias"))),
    }


def test_dashboard_charts_cover_every_scalar_key():
    import re

    regexes = [regex for chart in BatchNormMonitor.dashboard_charts().values() for regex in chart]
    for key in [*LAYER_KEYS, "rank_divergence"]:
        # TensorBoard's custom-scalars page searches (JavaScript RegExp.test), so every key must hit one chart.
        assert sum(bool(re.search(regex, f"batchnorm/features.0/{key}")) for regex in regexes) == 1, key
    assert not any(re.search(regex, "batchnorm/features.0/mean_drift_extra") for regex in regexes)


class RankData(L.LightningModule):
    """One BatchNorm1d on data whose mean depends on the rank; saves each rank's buffers at validation start."""

    def __init__(self, out_dir: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.bn = nn.BatchNorm1d(4)
        self.head = nn.Linear(4, 1)
        self.out_dir = out_dir

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(inputs))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        return nn.functional.mse_loss(self(inputs), targets)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self(batch[0])

    def on_validation_start(self) -> None:
        buffers = (self.bn.running_mean.clone(), self.bn.running_var.clone())
        torch.save(buffers, Path(self.out_dir, f"rank{self.global_rank}.pt"))

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.global_rank)
        inputs = torch.randn(32, 4, generator=generator) + 3.0 * self.global_rank
        return DataLoader(TensorDataset(inputs, torch.randn(32, 1, generator=generator)), batch_size=8)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=8)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_two_cpu_ranks_with_different_data_report_divergence(tmp_path):
    logger = CSVLogger(tmp_path, name="csv", version=0)
    fit_trainer = trainer(
        logger=logger,
        devices=2,
        strategy="ddp_spawn",
        use_distributed_sampler=False,
        limit_val_batches=1,
        log_every_n_steps=2,
        callbacks=[BatchNormMonitor()],
    )
    fit_trainer.fit(RankData(str(tmp_path)))
    (mean0, var0), (mean1, var1) = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    means, variances = np.stack([mean0.double(), mean1.double()]), np.stack([var0.double(), var1.double()])
    expected = np.max(np.mean(np.abs(means - means.mean(axis=0)) / np.sqrt(variances.mean(axis=0) + 1e-5), axis=1))
    assert expected > 0.05, "the ranks' last updates come from data 3 standard deviations apart"

    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as file:
        rows = [row for row in csv.DictReader(file) if row.get("batchnorm/bn/rank_divergence")]
    assert [(row["step"], float(row["batchnorm/bn/rank_divergence"])) for row in rows] == [
        ("3", pytest.approx(expected, rel=1e-5))
    ]
    report = json.loads((tmp_path / "csv" / "version_0" / "batchnorm_report.json").read_text())
    assert report["layers"][0]["rank_divergence"] == pytest.approx(expected, rel=1e-5)
    assert "ranks diverge: set sync_batchnorm=True" in report["layers"][0]["attention"]
    assert any(
        m.startswith("BatchNorm layer 'bn': the running statistics of the 2 ranks diverge") for m in report["warnings"]
    )
    assert any("Trainer(sync_batchnorm=True)" in message for message in report["warnings"])


def test_a_skipped_batch_leaves_no_hooks_behind():
    class SkipsRest(BatchNormNet):
        def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
            return -1 if batch_idx == 1 else None

    model, monitor = SkipsRest(), BatchNormMonitor(report=False)
    trainer(log_every_n_steps=1, callbacks=[monitor]).fit(model, images())
    assert model.hook_counts == [2], "one training batch measured; the second ended the epoch after the hooks"
    assert all(not m._forward_pre_hooks for m in model.modules()), "removed at the end of the epoch"
    model.eval()(images().dataset.tensors[0])
    assert monitor.modes == {"features.0": True, "features.2": True} and not monitor.warnings


def test_the_dashboard_gets_a_batchnorm_category():
    from lightning_optim.callbacks.dashboard import dashboard_layout

    layout = dashboard_layout([BatchNormMonitor()])
    assert layout["BatchNorm"]["Mean drift"] == ["Multiline", ["^batchnorm/.*/mean_drift$"]]
    assert list(layout["BatchNorm"]) == list(BatchNormMonitor.dashboard_charts())
