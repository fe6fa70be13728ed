"""``FitDriver``: the mixin's per-fit state and hooks as one callback, whatever the model's own hooks do.

Hook order (docs/architecture.md, "The per-fit driver"): Lightning calls the driver's hooks before the module's, and
puts it after tuner callbacks and before ``ModelCheckpoint``, so a plateau step happens before the checkpoint saved
at the same validation run.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import LearningRateFinder, ModelCheckpoint

from lightning_optim import OptimConfigError
from lightning_optim.clipping import adaptive
from lightning_optim.fit import schedule_free
from lightning_optim.fit.driver import FitDriver
from tests.models import MixinModel, loader, trainer

PLATEAU = {
    "optimizer": {"name": "sgd", "lr": 0.1},
    "scheduler": {"name": "plateau", "monitor": "val/metric", "patience": 0, "factor": 0.5},
}
FLAT = [1.0, 1.0, 1.0, 1.0]


class NoSuper(MixinModel):
    """A model with the hooks most models write, none of which calls ``super()``."""

    def on_fit_start(self) -> None:
        pass

    def on_train_start(self) -> None:
        pass

    def on_train_epoch_start(self) -> None:
        pass

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        pass

    def on_train_end(self) -> None:
        pass

    def on_validation_start(self) -> None:
        pass

    def on_validation_end(self) -> None:
        self.lr_at_validation_end = self.trainer.optimizers[0].param_groups[0]["lr"]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        pass

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        pass


def test_a_model_whose_hooks_never_call_super_keeps_plateau_stepping_and_the_checkpoint_entries(tmp_path):
    model = NoSuper(PLATEAU, val_metric=FLAT)
    saving = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1)
    run = trainer(max_epochs=4, enable_checkpointing=True, callbacks=[saving])
    run.fit(model, loader(), val_dataloaders=loader(8))
    # The first validation sets the best value; each of the three flat ones after it halves the lr (patience 0).
    assert run.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0125, abs=1e-12)
    saved = torch.load(tmp_path / "epoch=3.ckpt", weights_only=True)
    assert saved["optim_config"] == model.optim_config
    assert saved["optim_run_lengths"] == [{"interval": "step", "length": 32}]


def test_the_plateau_steps_before_the_checkpoint_saved_at_the_same_validation_and_before_the_module_s_hook(tmp_path):
    model = NoSuper(PLATEAU, val_metric=FLAT)
    saving = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1)
    run = trainer(max_epochs=2, enable_checkpointing=True, callbacks=[saving])
    run.fit(model, loader(), val_dataloaders=loader(8))
    # The second validation run (epoch 1) is the first flat one: its checkpoint holds the halved lr.
    saved = torch.load(tmp_path / "epoch=1.ckpt", weights_only=True)
    assert saved["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.05, abs=1e-12)
    assert torch.load(tmp_path / "epoch=0.ckpt", weights_only=True)["optimizer_states"][0]["param_groups"][0][
        "lr"
    ] == pytest.approx(0.1, abs=1e-12)
    assert model.lr_at_validation_end == pytest.approx(0.05, abs=1e-12)


def test_the_driver_sits_after_tuner_callbacks_and_before_model_checkpoint(tmp_path):
    class Order(L.Callback):
        def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self.order = [type(callback).__name__ for callback in trainer.callbacks]

    order = Order()
    finder = LearningRateFinder(num_training_steps=2, update_attr=False)
    callbacks = [ModelCheckpoint(dirpath=tmp_path), order, finder]
    run = trainer(max_steps=2, enable_checkpointing=True, callbacks=callbacks, default_root_dir=tmp_path)
    run.fit(MixinModel({"optimizer": {"name": "sgd", "lr": 0.1}}), loader())
    assert order.order == ["LearningRateFinder", "Order", "FitDriver", "ModelCheckpoint"]


def test_a_configure_callbacks_that_drops_the_driver_fails_at_configure_optimizers():
    class Dropped(MixinModel):
        def configure_callbacks(self) -> list[L.Callback]:
            return [L.Callback()]

    with pytest.raises(OptimConfigError) as error:
        trainer(max_steps=1).fit(Dropped({"optimizer": {"name": "sgd", "lr": 0.1}}), loader())
    assert str(error.value) == (
        "Dropped.configure_callbacks did not return OptimMixin's FitDriver, which runs the schedules, plateau "
        "stepping, checkpoint entries and adaptive clipping during the fit. Return [*super().configure_callbacks(), "
        "...your callbacks] from it."
    )


def test_a_configure_callbacks_that_adds_to_super_keeps_the_driver():
    class Mine(L.Callback):
        pass

    class Added(MixinModel):
        def configure_callbacks(self) -> list[L.Callback]:
            return [*super().configure_callbacks(), Mine()]

    model = Added(PLATEAU, val_metric=FLAT)
    run = trainer(max_epochs=4)
    run.fit(model, loader(), val_dataloaders=loader(8))
    assert [type(cb) for cb in run.callbacks if isinstance(cb, (FitDriver, Mine))] == [FitDriver, Mine]
    assert run.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0125, abs=1e-12)


def test_each_run_has_one_driver_and_nothing_announces_an_override(caplog):
    model = MixinModel(PLATEAU, val_metric=FLAT * 2)
    run = trainer(max_epochs=2)
    run.fit(model, loader(), val_dataloaders=loader(8))
    fitted = [callback for callback in run.callbacks if isinstance(callback, FitDriver)]
    run.validate(model, loader(8))
    run.fit(model, loader(), val_dataloaders=loader(8))
    drivers = [callback for callback in run.callbacks if isinstance(callback, FitDriver)]
    assert len(fitted) == len(drivers) == 1 and drivers[0] is not fitted[0]
    assert "will override existing callbacks" not in caplog.text


def test_a_run_without_schedule_free_or_clipping_sections_runs_neither_s_code(tmp_path, monkeypatch):
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("ran")

    for name in ("to_train_mode", "to_eval_mode", "save_evaluation_weights", "warn_on_lr_logging", "recompute_batches"):
        monkeypatch.setattr(schedule_free, name, refuse)
    monkeypatch.setattr(adaptive.AdaptiveThresholds, "__init__", refuse)
    config = {"optimizer": {"name": "adamw", "lr": 0.1}, "scheduler": {"name": "warmup_cosine", "warmup_steps": 2}}
    saving = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1)
    run = trainer(max_steps=4, enable_checkpointing=True, callbacks=[saving], val_check_interval=2)
    run.fit(MixinModel(config), loader(), val_dataloaders=loader(8))
    run.validate(run.lightning_module, loader(8))
    assert run.global_step == 4
    assert len(list(tmp_path.glob("*.ckpt"))) == 2
