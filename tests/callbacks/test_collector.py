"""The collector and its writer: every monitor's keys of a step in one write per logger, the same scalars as
``log_metrics`` writes, and nothing lost when a batch ends early."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from lightning_optim.callbacks import GradNormMonitor, LRMonitor
from lightning_optim.callbacks.scalar_writer import write_scalars
from tests import tb
from tests.models import MemoryLogger, MixinModel, loader, trainer

CONFIG = {
    "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
    "scheduler": {"name": "warmup_linear", "warmup_steps": 2, "total_steps": 8},
}
METRICS = {"lr-SGD": 0.1, "grad_norm/total": 2.5, "batchnorm/bn/var_ratio": 1.0 / 3.0}


class CountingTensorBoardLogger(TensorBoardLogger):
    """A TensorBoardLogger whose ``log_metrics`` is its own: it must be called, not bypassed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0

    def log_metrics(self, metrics: Any, step: int | None = None) -> None:
        self.calls += 1
        super().log_metrics(metrics, step)


def scalar_events(logdir: Path) -> list[tuple[int, list[str]]]:
    """(step, tags) of every event that holds summary values, in the order written."""
    (path,) = logdir.rglob("events.out.tfevents.*")
    return [
        (event.step, [value.tag for value in event.summary.value])
        for event in EventFileLoader(str(path)).Load()
        if event.summary.value
    ]


@pytest.mark.parametrize("prefix", ["", "run"])
def test_one_tensorboard_event_holds_what_log_metrics_writes_as_one_event_per_scalar(tmp_path, prefix):
    one, each = (TensorBoardLogger(tmp_path / name, name="tb", prefix=prefix) for name in ("one", "each"))
    for step in (3, 4):
        write_scalars(one, METRICS, step)
        each.log_metrics(METRICS, step)
    one.finalize("success")
    each.finalize("success")
    assert tb.scalars(tmp_path / "one") == tb.scalars(tmp_path / "each")
    tags = [f"{prefix}-{key}" if prefix else key for key in METRICS]
    assert sorted(tb.scalars(tmp_path / "one")) == sorted(tags)
    assert scalar_events(tmp_path / "one") == [(3, tags), (4, tags)]
    assert len(scalar_events(tmp_path / "each")) == 2 * len(METRICS)


def test_a_logger_with_its_own_log_metrics_and_other_loggers_get_log_metrics(tmp_path):
    custom, memory = CountingTensorBoardLogger(tmp_path, name="tb"), MemoryLogger()
    for logger in (custom, memory):
        write_scalars(logger, METRICS, 5)
    assert custom.calls == 1
    assert memory.logged == [(5, METRICS)]


def test_the_monitors_keys_of_a_step_reach_a_logger_in_one_call(tmp_path):
    logger = MemoryLogger()
    callbacks = [GradNormMonitor(per_layer_depth=1), LRMonitor(log_momentum=True)]
    trainer(callbacks=callbacks, logger=logger, log_every_n_steps=2, gradient_clip_val=1.0).fit(
        MixinModel(CONFIG), loader()
    )
    monitor_calls = [(step, sorted(metrics)) for step, metrics in logger.logged if "lr-SGD/default" in metrics]
    keys = sorted(
        ["lr-SGD/default", "lr-SGD/default-momentum"]
        + [f"grad_norm/{key}" for key in ("total", "clipped", "threshold", "clip_fraction", "nonfinite")]
        + ["grad_norm/encoder", "grad_norm/head"]
    )
    assert monitor_calls == [(step, keys) for step in (1, 3, 5, 7)]
    assert all("grad_norm/total" not in metrics for _, metrics in logger.logged if "lr-SGD/default" not in metrics)


class EndsEpochEarly(MixinModel):
    """Ends the epoch at the start of batch ``stop`` (``on_train_batch_start`` returns -1): its batch end never
    runs."""

    def __init__(self, stop: int) -> None:
        super().__init__(CONFIG)
        self.stop = stop
        self.batch_start_lrs: list[float] = []

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        self.batch_start_lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])
        return -1 if batch_idx == self.stop else None


def test_the_lr_of_a_batch_that_ends_early_is_still_logged(tmp_path):
    model = EndsEpochEarly(stop=3)
    logger = TensorBoardLogger(tmp_path, name="tb")
    fit = trainer(callbacks=[LRMonitor(), GradNormMonitor()], logger=logger, log_every_n_steps=1)
    fit.fit(model, loader())
    logged = tb.scalars(tmp_path)
    assert [step for step, _ in logged["lr-SGD/default"]] == [0, 1, 2, 3]
    assert [value for _, value in logged["lr-SGD/default"]] == [tb.float32(lr) for lr in model.batch_start_lrs]
    assert [step for step, _ in logged["grad_norm/total"]] == [0, 1, 2]
    assert torch.isfinite(torch.tensor([value for _, value in logged["grad_norm/total"]])).all()
