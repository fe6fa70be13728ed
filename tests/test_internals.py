"""Each wrapper of a private Lightning/torch/TensorBoard attribute against the public behaviour it stands for.

A Lightning or torch upgrade that renames or changes one of them fails the one test named after it.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import GradientAccumulationScheduler, ModelCheckpoint, StochasticWeightAveraging
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins import MixedPrecision
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import nn

from lightning_optim.internals import (
    attached_trainer,
    batchnorm_saved_statistics,
    callback_metrics_store,
    ends_epoch,
    grad_scaler,
    is_batchnorm,
    is_compiled,
    is_last_batch,
    logger_prefix,
    logging_step,
    own_buffers,
    resumed_epoch,
    scale_tensor,
    should_log,
    stepping_batches_done,
    stop_as_on_sigterm,
    swa_batchnorm_epochs,
    torch_optimizer,
    unscales_in_step,
)
from tests import tb
from tests.models import CrashAt, Interrupted, MemoryLogger, RecordingModel, loader, trainer


class LoggingModel(RecordingModel):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self.log("train/loss", loss, on_step=True, on_epoch=False)
        return loss


class Reads(L.Callback):
    """Calls a wrapper at a hook and keeps, per batch, what it returned next to what the public API says."""

    def __init__(self, hook: str, read: Any) -> None:
        self.rows: list[dict[str, Any]] = []
        self.read = read
        setattr(self, hook, self._record)

    def _record(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.rows.append({"trainer": trainer, "pl_module": pl_module, "args": args, **self.read(trainer, pl_module)})


def test_should_log_is_lightnings_log_every_n_steps_rule():
    reads = Reads("on_train_batch_start", lambda t, m: {"logs": should_log(t), "index": t.global_step})
    logger = MemoryLogger()
    trainer(max_epochs=2, log_every_n_steps=3, logger=logger, callbacks=[reads]).fit(LoggingModel(), loader())
    # 8 batches an epoch: the rule counts batches across epochs, (index + 1) % log_every_n_steps == 0.
    assert [row["logs"] for row in reads.rows] == [(row["index"] + 1) % 3 == 0 for row in reads.rows]
    # It is the decision self.log follows: its points land on exactly those batches.
    assert logger.steps_of("train/loss") == [row["index"] for row in reads.rows if row["logs"]]


@pytest.mark.parametrize("accumulate", [1, 2])
def test_logging_step_is_where_self_log_lands(accumulate):
    reads = Reads("on_train_batch_end", lambda t, m: {"step": logging_step(t), "logs": should_log(t)})
    starts = Reads("on_train_batch_start", lambda t, m: {"step": logging_step(t), "global_step": t.global_step})
    logger = MemoryLogger()
    fit_trainer = trainer(
        max_epochs=2, log_every_n_steps=1, accumulate_grad_batches=accumulate, logger=logger, callbacks=[reads, starts]
    )
    fit_trainer.fit(LoggingModel(), loader())
    assert logger.steps_of("train/loss") == sorted({row["step"] for row in reads.rows if row["logs"]})
    assert [row["step"] for row in starts.rows] == [row["global_step"] for row in starts.rows]
    assert [row["step"] for row in starts.rows] == [index // accumulate for index in range(16)]


def test_is_last_batch_marks_the_dataloader_s_last_possibly_smaller_batch():
    reads = Reads("on_train_batch_start", lambda t, m: {"last": is_last_batch(t)})
    trainer(max_epochs=2, callbacks=[reads]).fit(RecordingModel(), loader(samples=10, batch_size=4))
    batch_sizes = [len(row["args"][0][0]) for row in reads.rows]
    assert batch_sizes == [4, 4, 2] * 2
    assert [row["last"] for row in reads.rows] == [size < 4 for size in batch_sizes]


@pytest.mark.parametrize("limit", [None, 2])
def test_ends_epoch_marks_the_batch_after_which_the_epoch_ends(limit):
    reads = Reads("on_train_batch_end", lambda t, m: {"ends": ends_epoch(t), "batches": t.num_training_batches})
    settings = {} if limit is None else {"limit_train_batches": limit}
    trainer(max_epochs=2, callbacks=[reads], **settings).fit(RecordingModel(), loader(samples=10, batch_size=4))
    assert [row["args"][-1] for row in reads.rows] == list(range(limit or 3)) * 2
    assert [row["ends"] for row in reads.rows] == [row["args"][-1] + 1 == row["batches"] for row in reads.rows]


@pytest.mark.filterwarnings("ignore:.*your dataloader is not resumable")
@pytest.mark.parametrize(("crash_at", "resumed"), [(3, (6, 1)), (4, (0, 1)), (6, (0, 1))])
def test_resumed_epoch_is_where_and_how_lightning_goes_on_with_a_resumed_epoch(tmp_path, crash_at, resumed):
    # 8 batches an epoch, accumulating 2 in epoch 0 and 4 from epoch 1 on: steps 0-3 in epoch 0, 4-5 in epoch 1.
    def accumulation() -> GradientAccumulationScheduler:
        return GradientAccumulationScheduler({0: 2, 1: 4})

    saving = ModelCheckpoint(dirpath=tmp_path, filename="{step}", every_n_train_steps=crash_at)
    fresh = Reads("on_train_start", lambda t, m: {"resumed": resumed_epoch(t)})
    callbacks = [accumulation(), saving, fresh, CrashAt(crash_at)]
    with pytest.raises(Interrupted):
        trainer(max_epochs=3, enable_checkpointing=True, callbacks=callbacks).fit(RecordingModel(), loader())
    assert fresh.rows[0]["resumed"] == (0, None)
    at_start = Reads("on_train_start", lambda t, m: {"resumed": resumed_epoch(t), "epoch": t.current_epoch})
    batches = Reads("on_train_batch_end", lambda t, m: {"epoch": t.current_epoch, "step": t.global_step})
    second = trainer(max_epochs=3, callbacks=[accumulation(), at_start, batches])
    second.fit(RecordingModel(), loader(), ckpt_path=tmp_path / f"step={crash_at}.ckpt")
    assert at_start.rows[0]["resumed"] == resumed
    done, accumulate = resumed
    epoch = at_start.rows[0]["epoch"]
    in_epoch = [row for row in batches.rows if row["epoch"] == epoch]
    # The epoch goes on from batch `done`, stepping every `accumulate` batches: Lightning does not call
    # on_train_epoch_start for it, so the scheduler's factor is not set again (also when the checkpoint was written
    # at an epoch's last batch: the next epoch runs as the resumed one).
    assert len(in_epoch) == 8 - done
    assert in_epoch[-1]["step"] - crash_at == (8 - done) // accumulate


class TwoOptimizersManual(RecordingModel):
    """Manual optimization stepping two optimizers every batch: global_step counts 2 a batch."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> None:
        inputs, targets = batch
        for optimizer in self.optimizers():
            optimizer.zero_grad()
            self.manual_backward(torch.nn.functional.mse_loss(self(inputs), targets))
            optimizer.step()

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [torch.optim.SGD(self.encoder.parameters(), lr=0.1), torch.optim.SGD(self.head.parameters(), lr=0.1)]


@pytest.mark.parametrize(("model", "per_batch"), [(RecordingModel, 1), (TwoOptimizersManual, 2)])
def test_stepping_batches_done_counts_as_lightning_s_estimate_does(model, per_batch):
    reads = Reads("on_train_batch_end", lambda t, m: {"done": stepping_batches_done(t), "step": t.global_step})
    fitted = trainer(max_epochs=2, callbacks=[reads])
    fitted.fit(model(), loader())
    assert fitted.estimated_stepping_batches == len(reads.rows) == 16
    assert [row["done"] for row in reads.rows] == list(range(1, 17))
    assert [row["step"] for row in reads.rows] == [per_batch * k for k in range(1, 17)]


@pytest.mark.parametrize(("batchnorm", "added"), [(True, 1), (False, 0)])
def test_swa_batchnorm_epochs_is_the_epoch_swa_runs_beyond_max_epochs(batchnorm, added):
    model = RecordingModel()
    if batchnorm:
        model.encoder = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
    reads = Reads("on_train_epoch_start", lambda t, m: {"added": swa_batchnorm_epochs(t), "max_epochs": t.max_epochs})
    fitted = trainer(max_epochs=2, callbacks=[StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=2), reads])
    assert swa_batchnorm_epochs(fitted) == 0
    fitted.fit(model, loader())
    assert len(reads.rows) == 2 + added
    assert [(row["added"], row["max_epochs"]) for row in reads.rows] == [(added, 2 + added)] * (2 + added)
    assert (swa_batchnorm_epochs(fitted), fitted.max_epochs) == (0, 2)


def test_attached_trainer_is_the_public_trainer_or_none():
    model = RecordingModel()
    assert attached_trainer(model) is None
    with pytest.raises(RuntimeError, match="not attached to a `Trainer`"):
        _ = model.trainer
    reads = Reads("on_train_start", lambda t, m: {"attached": attached_trainer(m), "public": m.trainer})
    trainer(max_steps=1, callbacks=[reads]).fit(model, loader())
    assert reads.rows[0]["attached"] is reads.rows[0]["public"] is reads.rows[0]["trainer"]


def amp(scaler: torch.amp.GradScaler) -> MixedPrecision:
    return MixedPrecision("16-mixed", "cpu", scaler)


def test_grad_scaler_and_scale_tensor_are_the_precision_plugin_s_scaler_and_its_scale():
    scaler = torch.amp.GradScaler("cpu", init_scale=512.0)
    reads = Reads(
        "on_before_optimizer_step",
        lambda t, m: {"scaler": grad_scaler(t), "tensor": scale_tensor(grad_scaler(t)), "public": scaler.get_scale()},
    )
    trainer(max_steps=2, plugins=[amp(scaler)], callbacks=[reads]).fit(RecordingModel(), loader())
    assert len(reads.rows) == 2
    for row in reads.rows:
        assert row["scaler"] is scaler
        assert isinstance(row["tensor"], torch.Tensor) and float(row["tensor"]) == row["public"] == 512.0
    plain = Reads("on_train_start", lambda t, m: {"scaler": grad_scaler(t)})
    trainer(max_steps=1, callbacks=[plain]).fit(RecordingModel(), loader())
    assert plain.rows[0]["scaler"] is None and grad_scaler(None) is None


def test_torch_optimizer_unwraps_lightning_s_optimizer():
    reads = Reads("on_train_start", lambda t, m: {"wrapped": m.optimizers(), "torch": t.optimizers[0]})
    trainer(max_steps=1, callbacks=[reads]).fit(RecordingModel(), loader())
    wrapped, optimizer = reads.rows[0]["wrapped"], reads.rows[0]["torch"]
    assert isinstance(wrapped, LightningOptimizer)
    assert torch_optimizer(wrapped) is wrapped.optimizer is optimizer
    assert torch_optimizer(optimizer) is optimizer


def test_unscales_in_step_is_what_lightning_refuses_to_clip_under_amp():
    p = nn.Parameter(torch.zeros(2))
    optimizers = {
        "fused_adam": torch.optim.Adam([p], fused=True),
        "fused_adamw": torch.optim.AdamW([p], fused=True),
        "fused_sgd": torch.optim.SGD([p], lr=0.1, fused=True),
        "fused_adagrad": torch.optim.Adagrad([p], fused=True),
        "adamw": torch.optim.AdamW([p]),
        "foreach_adamw": torch.optim.AdamW([p], foreach=True),
        "lbfgs": torch.optim.LBFGS([p]),
    }
    plugin = amp(torch.amp.GradScaler("cpu"))
    for name, optimizer in optimizers.items():
        p.grad = torch.ones(2)
        try:
            plugin.clip_gradients(optimizer, clip_val=1.0)
            refused = False
        except RuntimeError as error:
            refused = "performs unscaling of gradients internally" in str(error)
        assert unscales_in_step(optimizer) is refused is name.startswith("fused"), name


def test_is_batchnorm_holds_for_every_batchnorm_layer_and_no_other_norm():
    batchnorms = [nn.BatchNorm1d(2), nn.BatchNorm2d(2), nn.BatchNorm3d(2), nn.SyncBatchNorm(2), nn.LazyBatchNorm1d()]
    batchnorms += [nn.BatchNorm2d(2, track_running_stats=False), nn.LazyBatchNorm3d()]
    others = [nn.InstanceNorm2d(2, track_running_stats=True), nn.LayerNorm(2), nn.GroupNorm(1, 2), nn.Linear(2, 2)]
    assert all(is_batchnorm(module) for module in batchnorms)
    assert not any(is_batchnorm(module) for module in others)


def test_batchnorm_saved_statistics_are_the_batch_mean_and_inverse_std_of_a_training_forward_only():
    layer = nn.BatchNorm2d(3)
    inputs = (torch.randn(8, 3, 4, 4) * 2 + 1).requires_grad_()
    mean, invstd = batchnorm_saved_statistics(layer(inputs))
    expected_var = inputs.detach().var(dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(mean, inputs.detach().mean(dim=(0, 2, 3)))
    torch.testing.assert_close(invstd, (expected_var + layer.eps).rsqrt())
    assert batchnorm_saved_statistics(layer.eval()(inputs)) is None
    with torch.no_grad():
        assert batchnorm_saved_statistics(layer.train()(inputs)) is None
    assert batchnorm_saved_statistics(inputs * 2) is None


def test_own_buffers_are_the_module_s_buffers_without_its_children_s():
    for layer in (nn.BatchNorm1d(3), nn.BatchNorm1d(3, track_running_stats=False), nn.Linear(2, 2)):
        mine = [buffer for buffer in own_buffers(layer) if buffer is not None]
        theirs = list(layer.buffers(recurse=False))
        assert len(mine) == len(theirs) and all(a is b for a, b in zip(mine, theirs, strict=True))
    assert list(own_buffers(nn.Sequential(nn.BatchNorm1d(3)))) == []


class Normed(RecordingModel):
    """``RecordingModel`` with a BatchNorm layer in its encoder."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))


def hook_calls_after_compiling(model: L.LightningModule) -> int:
    """How often a forward pre-hook attached to the BatchNorm layer after the model's first forward runs in one more."""
    model(torch.randn(4, 4))
    calls = []
    layer = next(module for module in model.modules() if isinstance(module, nn.BatchNorm1d))
    handle = layer.register_forward_pre_hook(lambda *_: calls.append(1))
    model(torch.randn(4, 4))
    handle.remove()
    return len(calls)


@pytest.mark.slow
def test_is_compiled_recognizes_each_form_whose_graph_ignores_hooks_added_later():
    """What ``is_compiled`` stands for: the BatchNorm layers run in a graph that ignores a forward hook attached after
    compilation. Checked for each form it recognizes, and against the eager model, where the hook runs."""
    torch._dynamo.reset()
    eager = Normed()
    assert not is_compiled(eager) and hook_calls_after_compiling(eager) == 1

    submodule = Normed()
    submodule.encoder = torch.compile(submodule.encoder, backend="eager")  # type: ignore[assignment]
    assert is_compiled(submodule) and hook_calls_after_compiling(submodule) == 0

    in_place = Normed()
    in_place.compile(backend="eager")
    assert is_compiled(in_place) and hook_calls_after_compiling(in_place) == 0

    whole = Normed()
    trainer(max_steps=1).fit(torch.compile(whole, backend="eager"), loader())  # type: ignore[arg-type]
    assert is_compiled(whole) and hook_calls_after_compiling(whole) == 0


@pytest.mark.parametrize("prefix", ["", "run"])
def test_logger_prefix_is_what_log_metrics_joins_to_every_key(tmp_path, prefix):
    logger = TensorBoardLogger(tmp_path, name="tb", prefix=prefix)
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.finalize("success")
    joined = f"{logger_prefix(logger)}{logger.LOGGER_JOIN_CHAR}loss" if logger_prefix(logger) else "loss"
    assert list(tb.scalars(tmp_path)) == [joined]
    assert logger_prefix(logger) == prefix


class ProgressBarModel(RecordingModel):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self.log("train/loss", loss, prog_bar=True)
        return loss


def test_callback_metrics_store_is_the_dict_callback_metrics_returns():
    def read(trainer: L.Trainer, _: L.LightningModule) -> dict[str, Any]:
        store = callback_metrics_store(trainer)
        store["key put in"] = torch.tensor(1.0)
        return {"store": store, "public": trainer.callback_metrics}

    reads = Reads("on_train_batch_end", read)
    trainer(max_steps=2, callbacks=[reads]).fit(ProgressBarModel(), loader())
    assert len(reads.rows) == 2
    for row in reads.rows:
        assert row["public"] is row["store"]
        assert row["public"]["key put in"] == 1.0 and "train/loss" in row["public"]


def test_stop_as_on_sigterm_is_what_trainer_received_sigterm_reports_and_stops_fit_after_the_batch():
    def read(trainer: L.Trainer, _: L.LightningModule) -> dict[str, Any]:
        if trainer.global_step == 2:
            stop_as_on_sigterm(trainer)
        return {"received": trainer.received_sigterm, "step": trainer.global_step}

    reads = Reads("on_train_batch_end", read)
    fitting = trainer(max_steps=5, callbacks=[reads])
    with pytest.raises(SIGTERMException):
        fitting.fit(RecordingModel(), loader())
    assert [(row["step"], row["received"]) for row in reads.rows] == [(1, False), (2, True)]
    assert fitting.global_step == 2
