"""A schedule sized by the run (``total_steps: null``) over the run's actual length, whatever changed it after the
optimizers were built: an accumulation schedule, the batch-size finder, ``max_steps``, a reloaded train dataloader.

Models and data are Lightning's own demos: ``BoringModel`` with the mixin first in its bases, and ``DemoModel`` (its
own ``configure_optimizers``: Adam, no scheduler) driven by ``LRSchedule``. Each optimizer step's lr is read at
``on_before_optimizer_step``; the expected values come from ``tests/references.warmup_cosine``.
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import BatchSizeFinder, GradientAccumulationScheduler, ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringDataModule, BoringModel, DemoModel, RandomDataset
from lightning.pytorch.tuner import Tuner
from torch.utils.data import DataLoader

from lightning_optim import CheckpointError, OptimMixin, ResumeConfigWarning
from lightning_optim.callbacks import LRSchedule
from lightning_optim.fit.run_length import RunLengthWarning, check_saved_run_lengths
from tests.models import CrashAt, Interrupted, trainer
from tests.references import sgdr, warmup_cosine, wsd

LR, WARMUP, FLOOR = 0.1, 3, 0.1
COSINE = {"name": "warmup_cosine", "warmup_steps": WARMUP, "total_steps": None, "min_lr_ratio": FLOOR}

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*your dataloader is not resumable"),
    pytest.mark.filterwarnings("ignore:The dirpath has changed"),
    pytest.mark.filterwarnings("ignore:You passed in a `val_dataloader` but have no `validation_step`"),
]


class StepLrs(L.Callback):
    """The lr of the first parameter group at every optimizer step, and after the run."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: Any, optimizer: Any) -> None:
        self.lrs.append(optimizer.param_groups[0]["lr"])

    def final(self, trainer: L.Trainer) -> float:
        return trainer.optimizers[0].param_groups[0]["lr"]


class Boring(OptimMixin, BoringModel):
    """Lightning's BoringModel with the mixin taking over its configure_optimizers (SGD + StepLR)."""

    def __init__(self, scheduler: dict[str, Any] = COSINE) -> None:
        super().__init__()
        self.optim_config = {"optimizer": {"name": "sgd", "lr": LR}, "scheduler": scheduler}


class Demo(DemoModel):
    """Lightning's DemoModel (Adam, no scheduler) on BoringModel's data."""

    def __init__(self) -> None:
        super().__init__(learning_rate=LR)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(RandomDataset(32, 64))


class BatchSizedData(BoringDataModule):
    """Lightning's BoringDataModule (64 training samples) with the ``batch_size`` the batch-size finder scales."""

    def __init__(self) -> None:
        super().__init__()
        self.batch_size = 2

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.random_train, batch_size=self.batch_size)


def model_and_callbacks(how: str, scheduler: dict[str, Any] = COSINE) -> tuple[L.LightningModule, list[L.Callback]]:
    if how == "mixin":
        return Boring(scheduler), []
    return Demo(), [LRSchedule(scheduler)]


def fit(
    how: str,
    callbacks: list[L.Callback],
    datamodule: Any = None,
    scheduler: dict[str, Any] = COSINE,
    **trainer_kwargs: Any,
) -> tuple[L.Trainer, StepLrs]:
    model, own = model_and_callbacks(how, scheduler)
    lrs = StepLrs()
    run = trainer(callbacks=[*callbacks, *own, lrs], limit_val_batches=0, **trainer_kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RunLengthWarning)
        warnings.simplefilter("error", ResumeConfigWarning)
        run.fit(model, datamodule=datamodule)
    return run, lrs


@pytest.fixture(autouse=True)
def no_cuda_garbage_collection(monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch-size finder's ``gc.collect()`` between trials frees CUDA memory; on CPU it only costs seconds."""
    monkeypatch.setattr("lightning.pytorch.tuner.batch_size_scaling.garbage_collection_cuda", lambda: None)


def assert_cosine_over_the_run(run: L.Trainer, lrs: StepLrs, steps: int) -> None:
    assert run.global_step == len(lrs.lrs) == steps
    assert lrs.lrs == pytest.approx([warmup_cosine(k, LR, WARMUP, steps, FLOOR) for k in range(steps)], abs=1e-15)
    # After the run's last optimizer step the lr is on the floor, exactly.
    assert lrs.final(run) == LR * FLOOR


@pytest.mark.parametrize("how", ["mixin", "LRSchedule"])
def test_an_accumulation_schedule_ends_the_run_on_the_floor(how):
    # 8 + 8 optimizer steps at accumulation 1, then 2 + 2 at 4; estimated_stepping_batches says 32.
    run, lrs = fit(how, [GradientAccumulationScheduler({0: 1, 2: 4})], max_epochs=4, limit_train_batches=8)
    assert_cosine_over_the_run(run, lrs, 20)


@pytest.mark.parametrize("how", ["mixin", "LRSchedule"])
def test_an_accumulation_schedule_ends_wsd_on_the_floor(how):
    # 20 optimizer steps where 32 were estimated: the decay moves from step 26 (32 - round(6.4)) to 16 (20 - 4).
    scheduler = {
        "name": "wsd",
        "warmup_steps": WARMUP,
        "decay_ratio": 0.2,
        "decay_shape": "sqrt",
        "min_lr_ratio": FLOOR,
    }
    accumulation = GradientAccumulationScheduler({0: 1, 2: 4})
    run, lrs = fit(how, [accumulation], scheduler=scheduler, max_epochs=4, limit_train_batches=8)
    assert run.global_step == len(lrs.lrs) == 20
    assert lrs.lrs == pytest.approx([wsd(k, LR, WARMUP, 20, 0.2, "sqrt", FLOOR) for k in range(20)], abs=1e-15)
    assert lrs.final(run) == LR * FLOOR


@pytest.mark.parametrize("how", ["mixin", "LRSchedule"])
def test_the_batch_size_finder_sizes_the_warmup_ratio_of_cosine_restarts(how, tmp_path):
    # Built for batches of 2 (64 steps: a warmup of 16); the finder then picks 8: 16 steps, a warmup of 4.
    scheduler = {"name": "cosine_restarts", "cycle_steps": 3, "cycle_mult": 2, "warmup_ratio": 0.25}
    finder = BatchSizeFinder(mode="power", steps_per_trial=1, init_val=2, max_trials=3)
    data = BatchSizedData()
    run, lrs = fit(how, [finder], datamodule=data, scheduler=scheduler, max_epochs=2, default_root_dir=tmp_path)
    assert data.batch_size == 8 and run.global_step == 16
    assert lrs.lrs == pytest.approx([sgdr(k, LR, 4, 3, 2) for k in range(16)], abs=1e-15)


@pytest.mark.parametrize("how", ["mixin", "LRSchedule"])
def test_the_batch_size_finder_ends_the_run_on_the_floor(how, tmp_path):
    # The optimizers are built for batches of 2 (64 steps); the finder then picks 8: 2 epochs of 8 steps.
    finder = BatchSizeFinder(mode="power", steps_per_trial=1, init_val=2, max_trials=3)
    data = BatchSizedData()
    run, lrs = fit(how, [finder], datamodule=data, max_epochs=2, default_root_dir=tmp_path)
    assert finder.optimal_batch_size == data.batch_size == 8
    assert_cosine_over_the_run(run, lrs, 16)


@pytest.mark.parametrize("how", ["mixin", "LRSchedule"])
def test_max_steps_ends_the_run_on_the_floor(how):
    run, lrs = fit(how, [], max_epochs=3, max_steps=11, limit_train_batches=8)
    assert_cosine_over_the_run(run, lrs, 11)


@pytest.mark.parametrize("how", ["mixin", "LRSchedule"])
def test_max_steps_under_an_accumulation_schedule(how):
    # 8 + 2 + 2 + 2 steps would be the four epochs; max_steps stops the run at 13.
    run, lrs = fit(how, [GradientAccumulationScheduler({1: 4})], max_epochs=4, max_steps=13, limit_train_batches=8)
    assert_cosine_over_the_run(run, lrs, 13)


def test_the_tuner_then_fit_sizes_the_schedule_for_the_found_batch_size(tmp_path):
    model, data, lrs = Boring(), BatchSizedData(), StepLrs()
    run = trainer(callbacks=[lrs], limit_val_batches=0, max_epochs=2, default_root_dir=tmp_path)
    Tuner(run).scale_batch_size(model, datamodule=data, steps_per_trial=1, max_trials=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResumeConfigWarning)
        run.fit(model, datamodule=data)
    assert data.batch_size == 8
    assert_cosine_over_the_run(run, lrs, 16)


class ShorterLastEpoch(BoringModel):
    """BoringModel whose train dataloader, reloaded every epoch, has 8 batches, and 4 in epoch 2."""

    def train_dataloader(self) -> DataLoader:
        return DataLoader(RandomDataset(32, 4 if self.current_epoch == 2 else 8))


class MixinShorterLastEpoch(OptimMixin, ShorterLastEpoch):
    def __init__(self, scheduler: dict[str, Any] = COSINE) -> None:
        super().__init__()
        self.optim_config = {"optimizer": {"name": "sgd", "lr": LR}, "scheduler": scheduler}


def test_a_reloaded_train_dataloader_of_another_length_resizes_the_schedule_at_its_epoch():
    lrs = StepLrs()
    run = trainer(callbacks=[lrs], limit_val_batches=0, max_epochs=3, reload_dataloaders_every_n_epochs=1)
    run.fit(MixinShorterLastEpoch())
    # 24 steps expected until epoch 2 begins with 4 batches: from there on the schedule is 20 steps long.
    expected = [warmup_cosine(k, LR, WARMUP, 24, FLOOR) for k in range(16)]
    expected += [warmup_cosine(k, LR, WARMUP, 20, FLOOR) for k in range(16, 20)]
    assert lrs.lrs == pytest.approx(expected, abs=1e-15)
    assert lrs.final(run) == LR * FLOOR


def test_onecycle_cannot_follow_and_says_why():
    onecycle = {"name": "onecycle", "max_lr": LR}
    run = trainer(limit_val_batches=0, max_epochs=3, reload_dataloaders_every_n_epochs=1)
    with pytest.warns(RunLengthWarning) as record:
        run.fit(MixinShorterLastEpoch(onecycle))
    assert [str(warning.message) for warning in record if warning.category is RunLengthWarning] == [
        "The run is now 20 steps long, not the 24 steps optim_config.scheduler ('onecycle') was built for (the run's "
        "length changed after the optimizers were built: BatchSizeFinder, GradientAccumulationScheduler, a reloaded "
        "train dataloader). torch's OneCycleLR keeps its total_steps in its own state and cannot be resized: its lr "
        "cycle ends at step 24 instead of the run's end (and torch raises when it is stepped past it). Set "
        "optim_config.scheduler.total_steps: 20, or use a closed-form schedule such as warmup_cosine, which follows "
        "the run's length."
    ]


@pytest.mark.parametrize("how", ["mixin", "LRSchedule"])
def test_a_resume_under_an_accumulation_schedule_continues_without_a_warning(how, tmp_path):
    accumulation = {0: 1, 2: 4}
    model, own = model_and_callbacks(how)
    first = StepLrs()
    saving = ModelCheckpoint(dirpath=tmp_path, filename="{step}", every_n_train_steps=10)
    run = trainer(
        callbacks=[GradientAccumulationScheduler(accumulation), *own, first, saving, CrashAt(10)],
        enable_checkpointing=True,
        limit_val_batches=0,
        max_epochs=4,
        limit_train_batches=8,
    )
    with pytest.raises(Interrupted):
        run.fit(model)
    model, own = model_and_callbacks(how)
    second = StepLrs()
    run = trainer(
        callbacks=[GradientAccumulationScheduler(accumulation), *own, second],
        limit_val_batches=0,
        max_epochs=4,
        limit_train_batches=8,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResumeConfigWarning)
        run.fit(model, ckpt_path=tmp_path / "step=10.ckpt")
    lrs = StepLrs()
    lrs.lrs = first.lrs + second.lrs
    assert_cosine_over_the_run(run, lrs, 20)
    saved = torch.load(tmp_path / "step=10.ckpt", weights_only=True)
    if how == "mixin":
        assert saved["optim_run_lengths"] == [{"interval": "step", "length": 20}]


class TwoOptimizersManual(BoringModel):
    """Manual optimization stepping two optimizers every batch, as Lightning's GAN example does."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.other = torch.nn.Linear(32, 2)
        self.lrs: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> None:
        self.lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])
        for optimizer, layer in zip(self.optimizers(), (self.layer, self.other), strict=True):
            optimizer.zero_grad()
            self.manual_backward(layer(batch).sum())
            optimizer.step()

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [torch.optim.SGD(self.layer.parameters(), lr=LR), torch.optim.SGD(self.other.parameters(), lr=LR)]


def test_manual_optimization_with_two_optimizers_counts_batches_not_optimizer_steps():
    # global_step counts both optimizers' steps (32); the schedule is stepped once a batch, over 16 batches.
    model = TwoOptimizersManual()
    run = trainer(callbacks=[LRSchedule(COSINE)], limit_val_batches=0, max_epochs=2, limit_train_batches=8)
    run.fit(model)
    assert run.global_step == 32
    assert model.lrs == pytest.approx([warmup_cosine(k, LR, WARMUP, 16, FLOOR) for k in range(16)], abs=1e-15)
    assert run.optimizers[0].param_groups[0]["lr"] == LR * FLOOR


def test_a_resume_that_lightning_runs_longer_keeps_the_checkpoint_s_length_and_says_so(tmp_path):
    # 4 + 2 + 2 steps. Resumed at step 3, mid-epoch 0, Lightning does not call on_train_epoch_start for the rest of
    # that epoch, so its last 2 batches run at accumulation 1 (2 steps, not 1): the resumed run is 9 steps long.
    def callbacks(*others: L.Callback) -> list[L.Callback]:
        return [GradientAccumulationScheduler({0: 2, 1: 4}), *others]

    first = StepLrs()
    saving = ModelCheckpoint(dirpath=tmp_path, filename="{step}", every_n_train_steps=3)
    settings: dict[str, Any] = {"limit_val_batches": 0, "max_epochs": 3, "limit_train_batches": 8}
    with pytest.raises(Interrupted):
        trainer(callbacks=callbacks(first, saving, CrashAt(3)), enable_checkpointing=True, **settings).fit(Boring())
    second = StepLrs()
    run = trainer(callbacks=callbacks(second), **settings)
    with pytest.warns(ResumeConfigWarning) as record:
        run.fit(Boring(), ckpt_path=tmp_path / "step=3.ckpt")
    assert [str(warning.message) for warning in record if warning.category is ResumeConfigWarning] == [
        "Resuming with a different run length: the checkpoint's run was 8 steps long, this one is 9 steps. The lr "
        "schedule of optim_config.scheduler ('warmup_cosine') continues as it began, over 8 steps. To stretch it over "
        "the new run on purpose, set optim_config.scheduler.total_steps: 9 (an explicit value wins over the "
        "checkpoint's)."
    ]
    assert run.global_step == 9
    # The 8-step schedule of the first run, on its floor for the one step Lightning added.
    lrs = first.lrs + second.lrs
    assert lrs == pytest.approx([warmup_cosine(k, LR, WARMUP, 8, FLOOR) for k in range(9)], abs=1e-15)
    assert second.final(run) == LR * FLOOR


@pytest.mark.parametrize(
    "records,key,expected",
    [
        ([{"interval": "step", "length": -5}], "optim_run_lengths[0].length", "an int in [1, 9007199254740992]"),
        ([{"interval": "step", "length": 0}], "optim_run_lengths[0].length", "an int in [1, 9007199254740992]"),
        ([{"interval": "step", "length": 20.5}], "optim_run_lengths[0].length", "the run's length in steps"),
        ([{"interval": "step", "length": 10**400}], "optim_run_lengths[0].length", "an int in [1, "),
        ([{"interval": "step", "length": "20"}], "optim_run_lengths[0].length", "or None"),
        ([{"interval": "batch", "length": 20}], "optim_run_lengths[0].interval", "'step' or 'epoch'"),
        ([{"interval": "step"}], "optim_run_lengths[0]", "a mapping with the keys interval and length"),
        ([{"interval": "step", "length": 20, "optimizer": 1}], "optim_run_lengths[0].optimizer", "the name of one"),
        ({"interval": "step", "length": 20}, "optim_run_lengths", "a list of {interval, length} records"),
    ],
)
def test_a_restored_run_length_no_run_could_have_is_refused_naming_its_key(records, key, expected):
    with pytest.raises(CheckpointError) as raised:
        check_saved_run_lengths(records)
    assert str(raised.value).startswith(f"Checkpoint entry {key} = ")
    assert expected in str(raised.value)


@pytest.mark.parametrize("length", [-5, 2.5, 10**30])
def test_a_resume_from_an_edited_run_length_is_refused_before_any_step(length, tmp_path):
    first = trainer(limit_val_batches=0, max_epochs=1, max_steps=4)
    first.fit(Boring(), DataLoader(RandomDataset(32, 32), batch_size=4))
    first.save_checkpoint(tmp_path / "step=4.ckpt")
    checkpoint = torch.load(tmp_path / "step=4.ckpt", weights_only=True)
    checkpoint["optim_run_lengths"][0]["length"] = length
    torch.save(checkpoint, tmp_path / "edited.ckpt")
    lrs = StepLrs()
    with pytest.raises(CheckpointError, match=rf"^Checkpoint entry optim_run_lengths\[0\]\.length = {length!r} is not"):
        trainer(callbacks=[lrs], limit_val_batches=0, max_epochs=2).fit(
            Boring(), DataLoader(RandomDataset(32, 32), batch_size=4), ckpt_path=tmp_path / "edited.ckpt"
        )
    assert lrs.lrs == []
