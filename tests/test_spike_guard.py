"""The spike guard: it skips exactly the spike steps, leaves no trace of them, resumes exactly and syncs only when
it logs."""

from __future__ import annotations

import copy
import logging
import re
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
from lightning_optim.callbacks import GradNormMonitor, TensorBoardDashboard
from lightning_optim.errors import OptimConfigError
from lightning_optim.fit.driver import SPIKE_GUARD_KEY, driver_of
from tests.callbacks.test_host_syncs import ReadsPerStep
from tests.models import trainer
from tests.tb import layout, layout_dict, scalars
from tests.test_nonfinite import assert_identical

STEPS = 14
SPIKES = (7, 11)
"""The optimizer steps whose loss is multiplied by ``SCALE``."""
SCALE = 1000.0
FUSED_ADAMW = {"name": "adamw", "lr": 0.01, "fused": True}
SGD = {"name": "sgd", "lr": 0.01, "momentum": 0.9}


def batches(steps: int = STEPS, batch_size: int = 8) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(steps * batch_size, 3, 4, 4, generator=generator)
    return DataLoader(TensorDataset(inputs, torch.randn(len(inputs), 1, generator=generator)), batch_size=batch_size)


class SpikyNet(OptimMixin, L.LightningModule):
    """BatchNorm, a 1x1 conv, BatchNorm, a linear head; the loss of each batch in ``spikes`` is scaled by ``SCALE``.

    ``states`` holds, before the first step and after every one, the parameters with the BatchNorm buffers and the
    optimizer's state, copied.
    """

    def __init__(self, optimizer: dict[str, Any], guard: dict[str, Any], spikes: tuple[int, ...] = SPIKES) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4 * 16, 1)
        self.spikes = spikes
        self.states: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self.optim_config = {"optimizer": optimizer, "spike_guard": guard}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        loss = nn.functional.mse_loss(self.head(self.features(inputs).flatten(1)), targets)
        return loss * SCALE if self.trainer.global_step in self.spikes else loss

    def on_train_start(self) -> None:
        self._record()

    def on_train_batch_end(self, *args: Any) -> None:
        self._record()

    def _record(self) -> None:
        self.states.append((copy.deepcopy(self.state_dict()), copy.deepcopy(self.trainer.optimizers[0].state_dict())))


def skip_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.getMessage().startswith("spike_guard")]


def skipped_steps(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    """``(step, z as printed)`` of every skip named in the log lines."""
    return [
        (int(part.split(" (")[0]), part.split("z = ")[1].split(" ")[0])
        for line in skip_lines(caplog)
        for part in line.removeprefix("spike_guard skipped step ").split(", step ")
    ]


@pytest.mark.parametrize(
    ("optimizer", "on"), [(FUSED_ADAMW, "grad_norm"), (FUSED_ADAMW, "loss"), (SGD, "grad_norm"), (SGD, "loss")]
)
def test_the_guard_skips_exactly_the_injected_spikes_and_leaves_no_trace(optimizer, on, tmp_path, caplog):
    model = SpikyNet(optimizer, {"on": on, "z_threshold": 6.0, "alpha": 0.9, "warmup_steps": 4})
    logger = TensorBoardLogger(tmp_path, name="", version="")
    with caplog.at_level(logging.WARNING, logger="lightning_optim.fit.driver"):
        trainer(logger=logger, log_every_n_steps=5, callbacks=[GradNormMonitor()]).fit(model, batches())

    # One line per logging step that follows a skip.
    lines = skip_lines(caplog)
    assert [line.split(" (")[0] for line in lines] == ["spike_guard skipped step 7", "spike_guard skipped step 11"]
    assert all(line.endswith("> 6)") for line in lines), lines
    for step in range(STEPS):
        before, after = model.states[step], model.states[step + 1]
        if step in SPIKES:
            assert_identical(after, before, f"step {step}")
        else:
            changed = [name for name in before[0] if not torch.equal(before[0][name], after[0][name])]
            assert "head.weight" in changed, f"step {step} did not step"
    # Logged on the logging steps 4 and 9 and at the end of training (14 steps done), with the total so far.
    logged = scalars(tmp_path)
    assert logged["spike_guard/skipped"] == [(4, 0.0), (9, 1.0), (14, 2.0)]
    assert [step for step, _ in logged["spike_guard/z"]] == [4, 9, 14]  # the warm-up (0-3) has no z
    guard = driver_of(model).guards.of(model.trainer.optimizers[0])
    assert int(guard.skipped) == 2


def test_the_z_score_logged_is_the_logging_steps_own(tmp_path, caplog):
    model = SpikyNet(FUSED_ADAMW, {"z_threshold": 6.0, "alpha": 0.9, "warmup_steps": 4}, spikes=(9,))
    logger = TensorBoardLogger(tmp_path, name="", version="")
    with caplog.at_level(logging.WARNING, logger="lightning_optim.fit.driver"):
        trainer(logger=logger, log_every_n_steps=5, max_steps=10).fit(model, batches())
    # No monitor: the driver reports itself. The spike at the logging step 9 gives its z there.
    ((step, z),) = skipped_steps(caplog)
    logged = scalars(tmp_path)
    assert step == 9
    assert logged["spike_guard/skipped"] == [(4, 0.0), (9, 1.0)]
    assert [step for step, _ in logged["spike_guard/z"]] == [4, 9]
    assert f"{logged['spike_guard/z'][1][1]:.3g}" == z
    assert float(z) > 6.0


def fit_to(model: SpikyNet, epochs: int, tmp_path: Path, ckpt_path: str | None = None) -> str:
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    run = trainer(max_epochs=epochs, enable_checkpointing=True, callbacks=[checkpoint])
    run.fit(model, batches(STEPS // 2), ckpt_path=ckpt_path)
    return str(tmp_path / "last.ckpt")


def test_a_resume_continues_the_statistics_and_the_skips_exactly(tmp_path, caplog):
    guard = {"on": "loss", "z_threshold": 6.0, "alpha": 0.9, "warmup_steps": 4}
    spikes = (5, 11)
    whole = SpikyNet(FUSED_ADAMW, guard, spikes)
    with caplog.at_level(logging.WARNING, logger="lightning_optim.fit.driver"):
        trainer(max_epochs=2).fit(whole, batches(STEPS // 2))
    uninterrupted = skipped_steps(caplog)
    caplog.clear()

    first = SpikyNet(FUSED_ADAMW, guard, spikes)
    with caplog.at_level(logging.WARNING, logger="lightning_optim.fit.driver"):
        last = fit_to(first, 1, tmp_path / "first")
        saved = torch.load(last, weights_only=True)[SPIKE_GUARD_KEY]
        assert saved[0]["optimizer"] is None and saved[0]["config"] == guard
        assert int(saved[0]["state"]["skipped"]) == 1
        resumed = SpikyNet(FUSED_ADAMW, guard, spikes)
        fit_to(resumed, 2, tmp_path / "second", ckpt_path=last)
    assert skipped_steps(caplog) == uninterrupted
    assert [step for step, _ in uninterrupted] == [5, 11]
    state = driver_of(resumed).guards.of(resumed.trainer.optimizers[0]).state_dict()
    expected = driver_of(whole).guards.of(whole.trainer.optimizers[0]).state_dict()
    assert_identical(state, expected)
    assert_identical(resumed.states[-1], whole.states[-1])


@pytest.mark.parametrize("with_monitor", [True, False])
def test_no_host_read_on_non_logging_steps(with_monitor, tmp_path):
    counter = ReadsPerStep()
    model = SpikyNet(FUSED_ADAMW, {"z_threshold": 6.0, "alpha": 0.9, "warmup_steps": 2}, spikes=(4,))
    logger = TensorBoardLogger(tmp_path, name="tb", default_hp_metric=False)
    callbacks = [counter, GradNormMonitor()] if with_monitor else [counter]
    fit = trainer(callbacks=callbacks, logger=logger, log_every_n_steps=3, max_steps=9)
    fit.fit(model, batches())

    assert [logging for logging, _ in counter.steps] == [False, False, True] * 3
    reads = [(logging, sum(callers.values()), dict(callers)) for logging, callers in counter.steps]
    assert [count for logging, count, _ in reads if not logging] == [0] * 6, reads
    # The guard's report rides on the monitors' one read, or is the driver's one read without them.
    assert [count for logging, count, _ in reads if logging] == [1] * 3, reads
    assert scalars(tmp_path)["spike_guard/skipped"] == [(2, 0.0), (5, 1.0), (8, 1.0)]


def test_the_dashboard_draws_the_guard(tmp_path):
    model = SpikyNet(FUSED_ADAMW, {"warmup_steps": 2})
    logger = TensorBoardLogger(tmp_path, name="", version="")
    trainer(logger=logger, max_steps=2, callbacks=[TensorBoardDashboard()]).fit(model, batches())
    assert layout_dict(layout(tmp_path))["Spike guard"] == {
        "Skipped steps": ["spike_guard/(?:[^/]+/)?skipped$"],
        "z-score": ["spike_guard/(?:[^/]+/)?z$"],
    }


class ManualSpikyNet(SpikyNet):
    def __init__(self, optimizer: dict[str, Any], guard: dict[str, Any]) -> None:
        super().__init__(optimizer, guard)
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> None:
        optimizer = self.optimizers()
        optimizer.zero_grad()
        loss = super().training_step(batch, batch_idx)
        self.manual_backward(loss)
        self.spike_guard_loss(loss)
        optimizer.step()


def test_manual_optimization_guards_the_loss_it_is_given(caplog):
    model = ManualSpikyNet(FUSED_ADAMW, {"on": "loss", "z_threshold": 6.0, "alpha": 0.9, "warmup_steps": 4})
    with caplog.at_level(logging.WARNING, logger="lightning_optim.fit.driver"):
        trainer().fit(model, batches())
    assert [step for step, _ in skipped_steps(caplog)] == list(SPIKES)
    for step in SPIKES:
        assert_identical(model.states[step + 1], model.states[step], f"step {step}")


def test_a_gradscaler_is_refused():
    model = SpikyNet(FUSED_ADAMW, {})
    fit = trainer(max_steps=1)
    fit.precision_plugin.scaler = torch.amp.GradScaler("cpu")
    with pytest.raises(OptimConfigError, match=r"optim_config\.spike_guard with precision='16-mixed'"):
        fit.fit(model, batches())


def restored_guards(on: str, state: Any) -> Any:
    """A loss or grad-norm guard of one optimizer, configured, then given ``state`` as a checkpoint would."""
    from lightning_optim.clipping.spike_guard import SpikeGuards, resolve_spike_guard

    guards = SpikeGuards()
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    spec = resolve_spike_guard({"on": on, "warmup_steps": 2})
    guards.configure({None: spec}, [(None, optimizer)])
    guards.load_state_dict([{"optimizer": None, "config": spec.config, "state": state}])
    return guards


def statistics(mean: float, var: float, skipped: Any = None) -> dict[str, Any]:
    warmup = torch.tensor([1.0, 2.0], dtype=torch.float64)
    values = {"mean": torch.tensor(mean, dtype=torch.float64), "var": torch.tensor(var, dtype=torch.float64)}
    return {"statistics": {"warmup": warmup, **values, "count": 5}, "skipped": skipped}


@pytest.mark.parametrize(
    ("on", "state", "key"),
    [
        ("grad_norm", statistics(-50.0, 1.0), "optim_spike_guard[0].state.statistics.mean"),
        ("loss", statistics(1.0, -1.0), "optim_spike_guard[0].state.statistics.var"),
        ("loss", statistics(float("inf"), 1.0), "optim_spike_guard[0].state.statistics.mean"),
        ("loss", statistics(1.0, 1.0, torch.tensor(2.5)), "optim_spike_guard[0].state.skipped"),
        ("loss", statistics(1.0, 1.0, torch.tensor(-1)), "optim_spike_guard[0].state.skipped"),
        ("loss", {"skipped": None}, "optim_spike_guard[0].state"),
    ],
)
def test_a_restored_guard_no_run_could_write_is_refused_naming_its_key(on, state, key):
    from lightning_optim.errors import CheckpointError

    with pytest.raises(CheckpointError, match=rf"^Checkpoint entry {re.escape(key)} = "):
        restored_guards(on, state)


def test_a_loss_guard_takes_a_negative_mean_back():
    guards = restored_guards("loss", statistics(-3.0, 0.25, torch.tensor(4)))
    assert guards.state_dict()[0]["state"]["statistics"]["mean"].item() == -3.0
    assert guards.state_dict()[0]["state"]["skipped"].item() == 4
