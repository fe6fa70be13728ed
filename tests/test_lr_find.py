"""Lightning's lr finder (``Tuner.lr_find``, the ``LearningRateFinder`` callback) on the mixin: ``model.lr`` is
``optim_config.optimizer.lr``, the search runs with the mixin's optimizer, and the run after it follows the configured
schedule from the found base lr at every step."""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import LearningRateFinder
from lightning.pytorch.demos.boring_classes import BoringModel, DemoModel, RandomDataset
from lightning.pytorch.tuner import Tuner
from lightning.pytorch.utilities.parsing import lightning_setattr
from torch.utils.data import DataLoader

from lightning_optim import OptimConfigError, OptimMixin, ResumeConfigWarning
from lightning_optim.fit.lr_finder import config_with_lr, configured_lr
from tests.models import MixinModel, loader, trainer
from tests.references import COSINE_TO_RUN_END, warmup_cosine

SEARCH_STEPS = 20
STEPS = 12
COSINE = {"name": "warmup_cosine", "warmup_steps": 3, "total_steps": STEPS}
HALF_LR_HEAD = [{"name": "head", "params": r"^head\.", "lr_scale": 0.5}]


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    """The finder writes its checkpoint into the Trainer's ``default_root_dir``, the working directory."""
    monkeypatch.chdir(tmp_path)


class StepLrs(L.Callback):
    """The lr of every parameter group at the start of each training batch of the real run.

    Lightning's lr finder swaps the Trainer's callbacks for its own during the search, so only real steps land here.
    """

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self.lrs.append([group["lr"] for group in trainer.optimizers[0].param_groups])


class TunedDemo(OptimMixin, DemoModel):
    """Lightning's ``DemoModel`` (not written here), which keeps its own ``learning_rate`` for the lr finder."""

    def __init__(self, optim_config: dict[str, Any]) -> None:
        super().__init__()
        self.optim_config = optim_config


class TunedBoring(OptimMixin, BoringModel):
    """Lightning's ``BoringModel`` (not written here) with the mixin first."""

    def __init__(self, optim_config: dict[str, Any]) -> None:
        super().__init__()
        self.optim_config = optim_config


def random_batches(samples: int = 256) -> DataLoader:
    torch.manual_seed(0)
    return DataLoader(RandomDataset(32, samples), batch_size=4)


def demo_fit_lrs(model: L.LightningModule, **trainer_kwargs: Any) -> list[list[float]]:
    recorder = StepLrs()
    trainer(max_steps=STEPS, max_epochs=-1, callbacks=[recorder], **trainer_kwargs).fit(model, random_batches())
    return recorder.lrs


def test_tuner_lr_find_sets_the_optimizer_lr_and_the_next_fit_warms_up_from_it():
    config = {"optimizer": {"name": "adam", "lr": 0.02}, "scheduler": COSINE}
    model = TunedDemo(config)
    finder = Tuner(trainer(max_steps=STEPS, max_epochs=-1)).lr_find(model, random_batches(), num_training=SEARCH_STEPS)
    assert finder is not None
    found = finder.suggestion()
    assert found is not None and found != 0.02
    assert model.optim_config["optimizer"] == {"name": "adam", "lr": found}
    assert model.hparams["optim_config"]["optimizer"]["lr"] == found
    assert model.learning_rate == 0.02  # DemoModel's own attribute: `lr` (the mixin's) is found first

    lrs = [step[0] for step in demo_fit_lrs(model)]
    assert lrs == pytest.approx([warmup_cosine(k, found, 3, STEPS) for k in range(STEPS)], rel=1e-12, abs=0)
    assert lrs == [step[0] for step in demo_fit_lrs(TunedDemo({**config, "optimizer": {"name": "adam", "lr": found}}))]


def test_the_search_runs_the_mixins_optimizer_under_the_finders_schedule_alone():
    model = MixinModel({"optimizer": {"name": "sgd", "lr": 0.01}, "param_groups": HALF_LR_HEAD, "scheduler": COSINE})
    finder = Tuner(trainer(max_steps=STEPS, max_epochs=-1)).lr_find(
        model, loader(samples=400), num_training=SEARCH_STEPS, update_attr=False
    )
    assert finder is not None
    # Every group at the finder's lr from its first step (min_lr 1e-8): no warmup's 0 from the mixin's schedule.
    searched = finder.results["lr"]
    assert model.lrs == [[lr, lr] for lr in searched] and searched[0] == 1e-8 and len(searched) == SEARCH_STEPS
    assert model.optim_config["optimizer"]["lr"] == 0.01


@pytest.mark.parametrize(
    ("scheduler", "step_factor"),
    [
        (COSINE, lambda k: warmup_cosine(k, 1.0, 3, STEPS)),
        (COSINE_TO_RUN_END, lambda k: warmup_cosine(k, 1.0, 3, STEPS, 0.1)),
        (None, lambda k: 1.0),
        ({"name": "plateau", "monitor": "val/loss", "warmup_steps": 4}, lambda k: min(k / 4, 1.0)),
    ],
    ids=["warmup_cosine", "sized_by_the_run", "constant", "plateau_warmup"],
)
def test_learning_rate_finder_callback_restarts_the_schedule_from_the_found_lr(scheduler, step_factor):
    model = MixinModel({"optimizer": {"name": "sgd", "lr": 0.01}, "param_groups": HALF_LR_HEAD, "scheduler": scheduler})
    finder, recorder = LearningRateFinder(num_training_steps=SEARCH_STEPS), StepLrs()
    fit = trainer(max_steps=STEPS, max_epochs=-1, callbacks=[finder, recorder], limit_val_batches=0)
    fit.fit(model, loader(samples=4 * (STEPS + SEARCH_STEPS)))
    assert finder.optimal_lr is not None
    found = finder.optimal_lr.suggestion()
    assert found is not None and model.optim_config["optimizer"]["lr"] == found
    # Groups in the optimizer's order: head (lr_scale 0.5), then the rest. No step at the old lr, none at a flat lr.
    expected = [lr for k in range(STEPS) for lr in (0.5 * found * step_factor(k), found * step_factor(k))]
    assert [lr for step in recorder.lrs for lr in step] == pytest.approx(expected, rel=1e-12, abs=0)


SCALED_SGD = {"name": "sgd", "lr": 0.01, "lr_scaling": {"rule": "linear", "base_batch_size": 2}}
"""At the loaders' batch size 4, lr_scaling applies twice the configured lr."""


def test_with_lr_scaling_tuner_lr_find_configures_the_found_lr_at_the_base_batch_size():
    model = MixinModel({"optimizer": SCALED_SGD, "scheduler": None})
    finder = Tuner(trainer(max_steps=STEPS, max_epochs=-1)).lr_find(
        model, loader(samples=400), num_training=SEARCH_STEPS
    )
    assert finder is not None
    found = finder.suggestion()
    assert found is not None and model.optim_config["optimizer"]["lr"] == found / 2
    model.lrs.clear()
    trainer(max_steps=3, max_epochs=-1).fit(model, loader(samples=400))
    # The lr the search found good is the lr the fit applies (before, lr_scaling doubled it once more).
    assert model.lrs == [[found]] * 3


def test_with_lr_scaling_the_learning_rate_finder_callback_fits_at_the_found_lr():
    model = MixinModel({"optimizer": SCALED_SGD, "scheduler": None})
    finder, recorder = LearningRateFinder(num_training_steps=SEARCH_STEPS), StepLrs()
    fit = trainer(max_steps=3, max_epochs=-1, callbacks=[finder, recorder], limit_val_batches=0)
    fit.fit(model, loader(samples=4 * (3 + SEARCH_STEPS)))
    assert finder.optimal_lr is not None
    found = finder.optimal_lr.suggestion()
    assert found is not None and model.optim_config["optimizer"]["lr"] == found / 2
    assert recorder.lrs == [[found]] * 3


def test_learning_rate_finder_callback_on_a_model_not_written_here():
    model = TunedBoring({"optimizer": {"name": "adamw", "lr": 0.01}, "scheduler": COSINE})
    finder, recorder = LearningRateFinder(num_training_steps=SEARCH_STEPS), StepLrs()
    trainer(max_steps=STEPS, max_epochs=-1, callbacks=[finder, recorder]).fit(model, random_batches())
    assert finder.optimal_lr is not None
    found = finder.optimal_lr.suggestion()
    assert found is not None and found != 0.01
    lrs = [step[0] for step in recorder.lrs]
    assert lrs == pytest.approx([warmup_cosine(k, found, 3, STEPS) for k in range(STEPS)], rel=1e-12, abs=0)


def test_a_fit_after_lr_find_on_another_trainer_is_no_resume():
    """The finder restores its own checkpoint; its run length must not pass for a resume's in the next fit."""
    model = MixinModel({"optimizer": {"name": "sgd", "lr": 0.01}, "scheduler": COSINE_TO_RUN_END})
    Tuner(trainer(max_steps=STEPS, max_epochs=-1)).lr_find(model, loader(samples=400), num_training=SEARCH_STEPS)
    model.lrs.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResumeConfigWarning)
        trainer(max_steps=2 * STEPS, max_epochs=-1).fit(model, loader(samples=400))
    found = model.optim_config["optimizer"]["lr"]
    expected = [warmup_cosine(k, found, 3, 2 * STEPS, 0.1) for k in range(2 * STEPS)]
    assert [step[0] for step in model.lrs] == pytest.approx(expected, rel=1e-12, abs=0)


def test_model_lr_reads_and_assigns_the_optimizer_lr():
    model = MixinModel({"optimizer": {"name": "adamw"}})
    assert model.lr == 1e-3  # AdamW's default: the config leaves it unset
    model.lr = 0.05
    assert model.optim_config["optimizer"] == {"name": "adamw", "lr": 0.05}
    assert model.hparams["optim_config"]["optimizer"]["lr"] == 0.05
    with pytest.raises(OptimConfigError, match=r"optim_config\.optimizer\.lr = -1\.0 is not valid"):
        model.lr = -1.0
    assert model.lr == 0.05


class ExistingWithLr(L.LightningModule):
    """A model written for Lightning's lr finder: it keeps ``self.lr`` itself and reads it back."""

    def __init__(self, lr: float = 0.3) -> None:
        super().__init__()
        self.lr = lr
        self.seen_lr = self.lr
        self.layer = torch.nn.Linear(2, 1)


class TunedExisting(OptimMixin, ExistingWithLr):
    def __init__(self, optim_config: dict[str, Any]) -> None:
        super().__init__()
        self.optim_config = optim_config


def test_a_models_own_lr_set_before_optim_config_gives_way_with_a_warning():
    with pytest.warns(
        UserWarning, match=r"set self\.lr = 0\.3 before self\.optim_config.*optimizer\.lr = 0\.01"
    ) as caught:
        model = TunedExisting({"optimizer": {"name": "sgd", "lr": 0.01}})
    assert caught[0].filename == __file__  # points at the model's own `self.optim_config = ...`
    assert model.lr == 0.01 and model.seen_lr == 0.3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TunedExisting({"optimizer": {"name": "sgd", "lr": 0.3}})  # the same value: nothing to say


def test_onecycle_refuses_a_new_optimizer_lr_naming_its_max_lr():
    model = MixinModel({"optimizer": {"name": "sgd", "lr": 0.01}, "scheduler": {"name": "onecycle", "max_lr": 0.1}})
    with pytest.raises(
        OptimConfigError, match=r"optimizer\.lr = 0\.02 would not be used: scheduler 'onecycle' .* scheduler\.max_lr\."
    ):
        model.lr = 0.02
    assert model.optim_config["optimizer"]["lr"] == 0.01


def test_several_optimizers_have_no_single_lr():
    several = {"optimizers": {"generator": {"optimizer": {"name": "adam"}}, "discriminator": {}}}
    with pytest.raises(OptimConfigError, match=r"several optimizers \(discriminator, generator\).*single optimizer"):
        config_with_lr(several, 0.1)


def test_model_lr_without_optim_config_is_absent():
    class Unset(OptimMixin, L.LightningModule):
        pass

    assert not hasattr(Unset(), "lr")
    with pytest.raises(AttributeError):
        configured_lr(Unset())


class SetsLrAtEpoch(L.Callback):
    """Does at an epoch start what Lightning's lr finder does after its search: ``lightning_setattr(model, "lr",
    ...)``, then every group of the running optimizer set to that lr. (Lightning's own mid-fit search, its documented
    fine-tuning finder, stops after one step in Lightning 2.6, so the suggestion it would apply is given here.)"""

    def __init__(self, epoch: int, lr: float) -> None:
        self.epoch, self.lr = epoch, lr

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            lightning_setattr(pl_module, "lr", self.lr)
            for group in trainer.optimizers[0].param_groups:
                group["lr"] = self.lr


def test_an_lr_set_between_epochs_moves_the_base_lr_at_the_step_the_schedule_is_at():
    per_epoch, new_lr = 6, 0.04
    cosine = {**COSINE, "total_steps": 2 * per_epoch}
    model = MixinModel({"optimizer": {"name": "sgd", "lr": 0.01}, "param_groups": HALF_LR_HEAD, "scheduler": cosine})
    recorder = StepLrs()
    trainer(max_epochs=2, callbacks=[SetsLrAtEpoch(1, new_lr), recorder]).fit(model, loader(samples=4 * per_epoch))
    assert model.optim_config["optimizer"]["lr"] == new_lr
    factors = [warmup_cosine(k, 1.0, 3, 2 * per_epoch) for k in range(2 * per_epoch)]
    bases = [0.01] * per_epoch + [new_lr] * per_epoch
    expected = [lr for base, factor in zip(bases, factors, strict=True) for lr in (0.5 * base * factor, base * factor)]
    assert [lr for step in recorder.lrs for lr in step] == pytest.approx(expected, rel=1e-12, abs=0)
