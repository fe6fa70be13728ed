"""``LRSchedule``: the package's schedules for a model that keeps its own ``configure_optimizers``.

The model records the lr of every parameter group at each training batch; the expected sequences are computed here
from the formulas, or taken from an uninterrupted run or from ``OptimMixin`` with the same scheduler config.
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import BaseFinetuning, ModelCheckpoint
from omegaconf import OmegaConf

from lightning_optim import OptimConfigError, ResumeConfigWarning, preview_learning_rates
from lightning_optim.callbacks import LRSchedule
from tests.models import (
    CrashAt,
    Interrupted,
    MixinModel,
    RecordingModel,
    RestoresAfterSetup,
    loader,
    step_lrs,
    trainer,
)
from tests.references import COSINE_TO_RUN_END, COSINE_WARMUP_RATIO, warmup_cosine

LR = 0.5  # RecordingModel.configure_optimizers: SGD(lr=0.5), no scheduler
BATCHES = 8  # loader(): 32 samples in batches of 4

pytestmark = [
    # Mid-epoch resume restarts the (unshuffled) loader: the lr sequence depends only on the step counts.
    pytest.mark.filterwarnings("ignore:.*your dataloader is not resumable"),
    pytest.mark.filterwarnings("ignore:The dirpath has changed"),
]


def first_group(model: RecordingModel, accumulate: int = 1) -> list[float]:
    return [lrs[0] for lrs in step_lrs(model, accumulate)]


def fit_with(scheduler: Any, model: RecordingModel | None = None, **trainer_kwargs: Any) -> RecordingModel:
    model = model if model is not None else RecordingModel()
    run = trainer(callbacks=[LRSchedule(scheduler)], **trainer_kwargs)
    run.fit(model, loader(), val_dataloaders=loader(8) if model.val_metric else None)
    return model


# ------------------------------------------------------------------------------------------------ the lr sequence


@pytest.mark.parametrize(("warmup", "floor"), [(0, 0.0), (1, 0.0), (3, 0.1), (24, 0.0)])
def test_warmup_cosine_per_optimizer_step(warmup, floor):
    model = fit_with({"name": "warmup_cosine", "warmup_steps": warmup, "min_lr_ratio": floor}, max_epochs=3)
    total = 3 * BATCHES  # trainer.estimated_stepping_batches
    assert first_group(model) == pytest.approx([warmup_cosine(k, LR, warmup, total, floor) for k in range(total)])


def test_warmup_cosine_total_steps_follow_max_steps_and_limit_train_batches():
    model = fit_with({"name": "warmup_cosine", "warmup_steps": 2}, max_epochs=5, limit_train_batches=3, max_steps=10)
    assert first_group(model) == pytest.approx([warmup_cosine(k, LR, 2, 10) for k in range(10)], abs=1e-12)


def test_warmup_cosine_counts_optimizer_steps_with_frequency_under_accumulation():
    scheduler = OmegaConf.create({"name": "warmup_cosine", "warmup_steps": 3, "frequency": 2, "min_lr_ratio": 0.2})
    model = fit_with(scheduler, max_epochs=3, accumulate_grad_batches=2)
    total = 3 * BATCHES // 2  # 12 optimizer steps
    # The lr changes every second optimizer step, to the schedule's value at that optimizer step.
    expected = [warmup_cosine(k - k % 2, LR, 3, total, 0.2) for k in range(total)]
    assert first_group(model, accumulate=2) == pytest.approx(expected, abs=1e-12)
    # Both batches of an accumulated step run at the same lr.
    assert model.lrs[1::2] == model.lrs[::2]
    assert len(model.lrs) == 2 * total


def test_step_decay_per_epoch():
    model = fit_with({"name": "step", "step_size": 2, "gamma": 0.5, "interval": "epoch"}, max_epochs=5)
    expected = [LR * 0.5 ** ((k // BATCHES) // 2) for k in range(5 * BATCHES)]
    assert first_group(model) == pytest.approx(expected, abs=1e-12)


SCHEDULERS = [
    {"name": "warmup_cosine", "warmup_steps": 3, "min_lr_ratio": 0.1},
    {"name": "warmup_linear", "warmup_ratio": 0.25},
    {"name": "inverse_sqrt", "warmup_steps": 4, "frequency": 3},
    {"name": "multistep", "milestones": [1, 2], "gamma": 0.3, "interval": "epoch"},
    {"name": "exponential", "gamma": 0.9, "warmup_steps": 2, "interval": "epoch", "frequency": 2},
    {
        "name": "sequential",
        "schedulers": [{"name": "warmup_cosine", "warmup_steps": 2}, {"name": "step", "step_size": 3}],
        "milestones": [10],
    },
    {"name": "onecycle", "max_lr": 1.0},
    {"name": "cyclic", "base_lr": 0.1, "max_lr": 1.0, "step_size_up": 5},
]


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", SCHEDULERS, ids=[s["name"] for s in SCHEDULERS])
@pytest.mark.parametrize("accumulate", [1, 2])
def test_same_lr_sequence_as_the_mixin(scheduler, accumulate):
    with_callback = fit_with(scheduler, max_epochs=4, accumulate_grad_batches=accumulate)
    with_mixin = MixinModel({"optimizer": {"name": "sgd", "lr": LR}, "scheduler": scheduler})
    trainer(max_epochs=4, accumulate_grad_batches=accumulate).fit(with_mixin, loader())
    assert len(with_callback.lrs) == 4 * BATCHES
    assert first_group(with_callback) == pytest.approx(first_group(with_mixin), abs=1e-12)
    assert len(set(first_group(with_callback))) > 1  # the schedule did change the lr


# ------------------------------------------------------------------------------------------------ plateau


def test_plateau_steps_only_after_validation_runs():
    # Validation after epochs 1, 3, 5 and 7; no gain at the runs after epochs 3 and 5.
    model = RecordingModel(val_metric=[1.0, 1.1, 1.2, 0.5])
    scheduler = {"name": "plateau", "monitor": "val/metric", "patience": 1, "factor": 0.5}
    fit_with(scheduler, model, max_epochs=8, check_val_every_n_epoch=2)
    assert model.validation_runs == 4
    # patience 1: the second run in a row without a gain (after epoch 5) halves the lr, from epoch 6 on; the
    # epochs without validation (0, 2, 4, 6) never change it, however stale the last value.
    per_epoch = [LR] * 6 + [LR / 2] * 2
    assert first_group(model) == pytest.approx([lr for lr in per_epoch for _ in range(BATCHES)], abs=1e-12)


def test_plateau_after_a_per_step_warmup():
    model = RecordingModel(val_metric=[1.0, 2.0, 3.0])
    scheduler = {"name": "plateau", "monitor": "val/metric", "patience": 0, "factor": 0.1, "warmup_steps": 4}
    fit_with(scheduler, model, max_epochs=3)
    # Warmup over the first 4 optimizer steps; the plateau then cuts the lr after validation runs 1 and 2.
    expected = [LR * k / 4 for k in range(4)] + [LR] * 12 + [LR * 0.1] * 8
    assert first_group(model) == pytest.approx(expected, abs=1e-12)


def test_misspelt_plateau_monitor_fails_in_the_sanity_check():
    class LogsDuringSanityCheck(RecordingModel):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            super().validation_step(batch, batch_idx)
            self.log("val/metric", 1.0)

    model = LogsDuringSanityCheck()
    run = trainer(
        max_epochs=2, num_sanity_val_steps=2, callbacks=[LRSchedule({"name": "plateau", "monitor": "val/metrc"})]
    )
    with pytest.raises(OptimConfigError) as error:
        run.fit(model, loader(), val_dataloaders=loader(8))
    message = str(error.value)
    assert "'val/metrc' was not logged by the validation run that just ended." in message
    assert "Did you mean 'val/metric'?" in message
    assert "Metrics that exist: ['val/loss', 'val/metric']." in message
    assert model.lrs == []  # before any training step


def test_misspelt_plateau_monitor_fails_after_the_first_validation_run():
    model = RecordingModel(val_metric=[1.0])
    with pytest.raises(OptimConfigError) as error:
        fit_with({"name": "plateau", "monitor": "val/acc"}, model, max_epochs=3)
    assert "'val/acc' was not logged" in str(error.value)
    assert "Metrics that exist: ['val/loss', 'val/metric']." in str(error.value)
    assert len(model.lrs) == BATCHES  # one epoch, then the first validation run


def test_plateau_monitor_logged_only_after_the_sanity_check():
    model = RecordingModel(val_metric=[1.0, 2.0])
    scheduler = {"name": "plateau", "monitor": "val/metric", "patience": 0, "factor": 0.5}
    fit_with(scheduler, model, max_epochs=3, num_sanity_val_steps=2)
    assert first_group(model) == pytest.approx([LR] * 16 + [LR / 2] * 8, abs=1e-12)


# ------------------------------------------------------------------------------------------------ refusals


def test_refuses_to_run_beside_a_scheduler_of_the_model():
    class WithStepLR(RecordingModel):
        def configure_optimizers(self) -> dict[str, Any]:
            optimizer = torch.optim.SGD(self.parameters(), lr=LR)
            return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1)}

    model = WithStepLR()
    with pytest.raises(OptimConfigError) as error:
        fit_with({"name": "warmup_cosine", "warmup_steps": 2}, model)
    assert str(error.value).startswith(
        "LRSchedule('warmup_cosine') cannot run beside the scheduler(s) ['StepLR'] that WithStepLR.configure_optimizers"
        " returns"
    )
    assert model.lrs == []


def test_refuses_a_bad_config_at_construction():
    with pytest.raises(OptimConfigError, match=r"optim_config\.scheduler\.name = 'cosin' is not valid\."):
        LRSchedule({"name": "cosin"})
    with pytest.raises(OptimConfigError, match=r"scheduler\.interval = 'batch'"):
        LRSchedule({"name": "step", "step_size": 1, "interval": "batch"})


def test_checks_types_at_construction_and_takes_integral_floats():
    with pytest.raises(OptimConfigError, match=r"^optim_config\.scheduler\.step_size = '2' is not valid\. Expected an"):
        LRSchedule({"name": "step", "step_size": "2"})
    model = fit_with({"name": "step", "step_size": 2e0, "gamma": 0.5, "interval": "epoch"}, max_epochs=3)
    assert first_group(model) == pytest.approx([LR] * 2 * BATCHES + [LR * 0.5] * BATCHES, abs=1e-12)


# ------------------------------------------------------------------------------------------------ checkpoints


# The resume tests of both entry points (the mixin, LRSchedule) are in tests/test_checkpoints.py.


# ------------------------------------------------------------------------------------------------ new param groups


class FrozenEncoder(RecordingModel):
    """The encoder starts frozen and out of the optimizer; at epoch 1 it joins with its own lr."""

    def __init__(self, added_lr: float = 0.1) -> None:
        super().__init__()
        self.encoder.requires_grad_(False)
        self.added_lr = added_lr
        self.added_at: int | None = None

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=LR)

    def on_train_epoch_start(self) -> None:
        if self.current_epoch == 1:
            self.encoder.requires_grad_(True)
            self.trainer.optimizers[0].add_param_group({"params": self.encoder.parameters(), "lr": self.added_lr})
            self.added_at = self.global_step


def test_param_group_added_during_training_follows_the_schedule():
    model = FrozenEncoder(added_lr=0.1)
    scheduler = {"name": "warmup_cosine", "warmup_steps": 3, "min_lr_ratio": 0.1}
    fit_with(scheduler, model, max_epochs=3)
    total = 3 * BATCHES
    factor = [warmup_cosine(k, 1.0, 3, total, 0.1) for k in range(total)]
    assert model.added_at == BATCHES
    assert [len(lrs) for lrs in model.lrs] == [1] * BATCHES + [2] * (total - BATCHES)
    assert first_group(model) == pytest.approx([LR * f for f in factor], abs=1e-12)
    # Its base lr is the lr it was added with over the factor then, so it goes on from 0.1 along the schedule.
    base = 0.1 / factor[BATCHES]
    added = [lrs[1] for lrs in model.lrs[BATCHES:]]
    assert added == pytest.approx([base * f for f in factor[BATCHES:]], abs=1e-12)
    assert added[0] == pytest.approx(0.1, abs=1e-12)


class FinetuneEncoder(BaseFinetuning):
    """Lightning's recipe: freeze the encoder, then add it at epoch 1 with a tenth of the first group's lr."""

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        self.freeze(pl_module.encoder)

    def finetune_function(self, pl_module: L.LightningModule, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        if epoch == 1:
            self.unfreeze_and_add_param_group(pl_module.encoder, optimizer, initial_denom_lr=10.0)


@pytest.mark.parametrize(
    "scheduler",
    [
        {"name": "warmup_cosine", "warmup_steps": 3, "min_lr_ratio": 0.1},
        {"name": "step", "step_size": 1, "gamma": 0.5, "interval": "epoch"},
    ],
    ids=["warmup_cosine", "step-per-epoch"],
)
@pytest.mark.parametrize("driver", ["mixin", "callback"])
def test_base_finetuning_adds_a_group_that_follows_the_schedule(scheduler, driver):
    if driver == "mixin":
        model = MixinModel({"optimizer": {"name": "sgd", "lr": LR}, "scheduler": scheduler})
        callbacks: list[L.Callback] = [FinetuneEncoder()]
    else:
        model = RecordingModel()
        model.configure_optimizers = lambda: torch.optim.SGD(  # type: ignore[method-assign]
            [p for p in model.parameters() if p.requires_grad], lr=LR
        )
        callbacks = [FinetuneEncoder(), LRSchedule(scheduler)]
    trainer(max_epochs=3, callbacks=callbacks).fit(model, loader())

    assert [len(lrs) for lrs in model.lrs] == [1] * BATCHES + [2] * (2 * BATCHES)
    reference = MixinModel({"optimizer": {"name": "sgd", "lr": LR}, "scheduler": scheduler})
    trainer(max_epochs=3).fit(reference, loader())
    assert first_group(model) == pytest.approx(first_group(reference), abs=1e-12)
    # Added with a tenth of the first group's lr, it keeps that ratio along the schedule.
    assert [lrs[1] for lrs in model.lrs[BATCHES:]] == pytest.approx(
        [lrs[0] / 10 for lrs in model.lrs[BATCHES:]], abs=1e-12
    )
    assert model.encoder.weight.requires_grad


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
@pytest.mark.parametrize("driver", ["mixin", "callback"])
def test_resume_after_a_group_joined_continues_both_groups(tmp_path, driver):
    scheduler = {"name": "warmup_cosine", "warmup_steps": 3, "min_lr_ratio": 0.1}

    def run(**kwargs: Any) -> tuple[RecordingModel, L.Trainer]:
        if driver == "mixin":
            model: RecordingModel = MixinModel({"optimizer": {"name": "sgd", "lr": LR}, "scheduler": scheduler})
            callbacks: list[L.Callback] = [FinetuneEncoder()]
        else:
            model = FrozenEncoder()
            model.on_train_epoch_start = lambda: None  # type: ignore[method-assign]  # BaseFinetuning adds it
            callbacks = [FinetuneEncoder(), LRSchedule(scheduler)]
        return model, trainer(max_epochs=3, callbacks=[*callbacks, *kwargs.pop("callbacks", [])], **kwargs)

    straight, straight_run = run()
    straight_run.fit(straight, loader())
    first, first_run = run(
        enable_checkpointing=True,
        callbacks=[ModelCheckpoint(dirpath=tmp_path, filename="{step}", every_n_train_steps=12), CrashAt(12)],
    )
    with pytest.raises(Interrupted):
        first_run.fit(first, loader())
    second, second_run = run()
    second_run.fit(second, loader(), ckpt_path=tmp_path / "step=12.ckpt")

    assert len(straight.lrs[-1]) == 2
    flat = [lr for lrs in first.lrs + second.lrs for lr in lrs]
    assert flat == pytest.approx([lr for lrs in straight.lrs for lr in lrs], abs=1e-12)


# ------------------------------------------------------------------------------------------------ another run length


def resumed_with_max_epochs(
    tmp_path,
    scheduler: dict[str, Any],
    resumed_scheduler: dict[str, Any],
    crash_at: int,
    max_epochs: int,
    strategy: Any = "auto",
) -> tuple[list[float], list[str], dict[str, Any]]:
    """A 2-epoch run (16 steps) that dies after step ``crash_at`` and resumes with ``max_epochs`` and ``strategy``.

    Returns the per-batch lrs of both parts, the ``ResumeConfigWarning`` messages and the resumed callback's state.
    """
    saving = ModelCheckpoint(dirpath=tmp_path, filename="{step}", every_n_train_steps=crash_at)
    first = RecordingModel()
    run = trainer(max_epochs=2, enable_checkpointing=True, callbacks=[LRSchedule(scheduler), saving, CrashAt(crash_at)])
    with pytest.raises(Interrupted):
        run.fit(first, loader())
    second = RecordingModel()
    callback = LRSchedule(resumed_scheduler)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer(max_epochs=max_epochs, callbacks=[callback], strategy=strategy).fit(
            second, loader(), ckpt_path=tmp_path / f"step={crash_at}.ckpt"
        )
    messages = [str(w.message) for w in record if issubclass(w.category, ResumeConfigWarning)]
    return [lrs[0] for lrs in first.lrs + second.lrs], messages, callback.state_dict()


def original_schedule(scheduler: dict[str, Any], total_steps: int, steps: int) -> list[float]:
    """The lrs of ``scheduler`` fixed to ``total_steps``, previewed over ``steps`` steps."""
    config = {"optimizer": {"name": "sgd", "lr": LR}, "scheduler": {**scheduler, "total_steps": total_steps}}
    return preview_learning_rates(RecordingModel(), config, steps)["default"]


@pytest.mark.parametrize(
    ("scheduler", "warmup", "crash_at"),
    [(COSINE_TO_RUN_END, 3, 10), (COSINE_WARMUP_RATIO, 4, 2)],
    ids=["total_steps-null", "warmup_ratio"],
)
@pytest.mark.parametrize("after_setup", [False, True], ids=["restore-then-setup", "setup-then-restore"])
def test_resume_with_more_epochs_keeps_the_lr_curve(tmp_path, scheduler, warmup, crash_at, after_setup):
    strategy = RestoresAfterSetup() if after_setup else "auto"
    lrs, messages, state = resumed_with_max_epochs(
        tmp_path, scheduler, scheduler, crash_at, max_epochs=4, strategy=strategy
    )
    expected = [warmup_cosine(k, LR, warmup, 16, 0.1) for k in range(32)]
    assert lrs == pytest.approx(expected, abs=1e-12)
    assert lrs == pytest.approx(original_schedule(scheduler, 16, 32), abs=1e-12)
    assert messages == [
        "Resuming with a different run length: the checkpoint's run was 16 steps long, this one is 32 steps. The lr "
        "schedule of LRSchedule scheduler ('warmup_cosine') continues as it began, over 16 steps. To stretch it over "
        "the new run on purpose, set LRSchedule scheduler.total_steps: 32 (an explicit value wins over the "
        "checkpoint's)."
    ]
    assert state["run_length"] == {"interval": "step", "length": 16}


@pytest.mark.parametrize(
    ("scheduler", "warmup"), [(COSINE_TO_RUN_END, 3), (COSINE_WARMUP_RATIO, 8)], ids=["total_steps", "warmup_ratio"]
)
def test_resume_with_an_explicit_total_steps_stretches_the_schedule(tmp_path, scheduler, warmup):
    lrs, messages, state = resumed_with_max_epochs(
        tmp_path, scheduler, {**scheduler, "total_steps": 32}, crash_at=2, max_epochs=4
    )
    assert lrs[:2] == pytest.approx(original_schedule(scheduler, 16, 16)[:2], abs=1e-12)
    assert lrs[2:] == pytest.approx([warmup_cosine(k, LR, warmup, 32, 0.1) for k in range(2, 32)], abs=1e-12)
    assert lrs[2:] == pytest.approx(original_schedule(scheduler, 32, 32)[2:], abs=1e-12)
    assert messages == []
    assert state["run_length"] == {"interval": "step", "length": 32}


@pytest.mark.parametrize("scheduler", [COSINE_TO_RUN_END, COSINE_WARMUP_RATIO], ids=["total_steps", "warmup_ratio"])
def test_resume_with_the_same_run_length_does_not_warn(tmp_path, scheduler):
    lrs, messages, state = resumed_with_max_epochs(tmp_path, scheduler, scheduler, crash_at=10, max_epochs=2)
    assert messages == []
    assert lrs == pytest.approx(original_schedule(scheduler, 16, 16), abs=1e-12)
    assert state["run_length"] == {"interval": "step", "length": 16}
