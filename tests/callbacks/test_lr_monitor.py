"""``LRMonitor``: exact keys and values in the TensorBoard event files, one point per logged step, every optimizer.

Event files are read back with TensorBoard's own reader (``tests/tb.py``); TensorBoard stores scalars as float32,
so expected values are rounded the same way and compared exactly.
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import BaseFinetuning, EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_optim import OPTIMIZERS, OptimMixin, preview_learning_rates
from lightning_optim.callbacks import LRMonitor
from tests import tb
from tests.models import MixinModel, RecordingModel, SparseEmbedding, fit_logged, trainer

BATCHES = 8  # loader(): 32 samples in batches of 4
ADAMW_NO_DECAY = {
    "optimizer": {"name": "adamw", "lr": 0.1, "weight_decay": 0.01},
    "param_groups": [{"name": "no_decay", "params": r"\.bias$", "weight_decay": 0.0, "lr_scale": 0.5}],
    "scheduler": {"name": "warmup_cosine", "warmup_steps": 3, "min_lr_ratio": 0.1},
}


def fit(
    config: dict[str, Any],
    tmp_path: Any,
    monitor: LRMonitor | None = None,
    model: L.LightningModule | None = None,
    **trainer_kwargs: Any,
) -> tuple[LRMonitor, dict[str, list[tuple[int, float]]]]:
    """Fit ``model`` (default: ``MixinModel(config)``) with ``monitor``; returns it and the logged scalars."""
    monitor = monitor or LRMonitor()
    model = model if model is not None else MixinModel(config)
    return monitor, fit_logged(model, tmp_path, [monitor], **{"max_epochs": 2, **trainer_kwargs})


def series(steps: list[int], values: list[float]) -> list[tuple[int, float]]:
    return [(step, tb.float32(values[step])) for step in steps]


# ------------------------------------------------------------------------------------------------ keys and values


@pytest.mark.parametrize("every", [1, 3])
def test_lr_of_every_group_follows_the_schedule_on_logging_steps(tmp_path, every):
    _, logged = fit(ADAMW_NO_DECAY, tmp_path, log_every_n_steps=every)
    total = 2 * BATCHES
    expected = preview_learning_rates(MixinModel(ADAMW_NO_DECAY), ADAMW_NO_DECAY, total)
    steps = [step for step in range(total) if (step + 1) % every == 0]
    assert steps == ([2, 5, 8, 11, 14] if every == 3 else list(range(16)))
    assert logged == {
        "lr-AdamW/default": series(steps, expected["default"]),
        "lr-AdamW/no_decay": series(steps, expected["no_decay"]),
    }
    # Independent of preview_learning_rates: warmup 0.1 * k / 3, then cosine to a floor of 10% of each base lr.
    assert expected["default"][:4] == pytest.approx([0.0, 0.1 / 3, 0.2 / 3, 0.1])
    assert expected["no_decay"][3] == pytest.approx(0.05) and expected["no_decay"][15] == pytest.approx(
        0.005 + 0.045 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 12 / 13)).item())
    )


def test_momentum_and_weight_decay_keys(tmp_path):
    monitor = LRMonitor(log_momentum=True, log_weight_decay=True)
    _, logged = fit(ADAMW_NO_DECAY, tmp_path, monitor, log_every_n_steps=5)
    steps = [4, 9, 14]
    assert sorted(logged) == [
        "lr-AdamW/default",
        "lr-AdamW/default-momentum",
        "lr-AdamW/default-weight_decay",
        "lr-AdamW/no_decay",
        "lr-AdamW/no_decay-momentum",
        "lr-AdamW/no_decay-weight_decay",
    ]
    assert logged["lr-AdamW/default-momentum"] == [(step, tb.float32(0.9)) for step in steps]  # betas[0]
    assert logged["lr-AdamW/no_decay-momentum"] == [(step, tb.float32(0.9)) for step in steps]
    assert logged["lr-AdamW/default-weight_decay"] == [(step, tb.float32(0.01)) for step in steps]
    assert logged["lr-AdamW/no_decay-weight_decay"] == [(step, 0.0) for step in steps]


@pytest.mark.parametrize(
    ("optimizer", "key", "value"),
    [
        ({"name": "sgd", "lr": 0.1, "momentum": 0.9}, "lr-SGD/default-momentum", 0.9),
        ({"name": "adam", "lr": 0.1, "betas": [0.8, 0.99]}, "lr-Adam/default-momentum", 0.8),
    ],
)
def test_momentum_is_sgds_momentum_or_adams_beta1(tmp_path, optimizer, key, value):
    _, logged = fit({"optimizer": optimizer}, tmp_path, LRMonitor(log_momentum=True), max_epochs=1)
    assert logged[key] == [(step, tb.float32(value)) for step in range(BATCHES)]
    assert logged[key.removesuffix("-momentum")] == [(step, tb.float32(0.1)) for step in range(BATCHES)]


def test_scheduler_log_name_replaces_the_prefix(tmp_path):
    config = {"optimizer": {"name": "sgd", "lr": 0.1}, "scheduler": {"name": "warmup_constant", "log_name": "sched"}}
    _, logged = fit(config, tmp_path, max_epochs=1, log_every_n_steps=4)
    assert logged == {"sched/default": [(3, tb.float32(0.1)), (7, tb.float32(0.1))]}


# ------------------------------------------------------------------------------------- one point per logged step


def test_logging_interval_none_without_scheduler_logs_each_step_once(tmp_path):
    # Lightning's LearningRateMonitor logs steps 0 and 8 twice here: at epoch start and at the first batch.
    monitor, logged = fit({"optimizer": {"name": "sgd", "lr": 0.1}}, tmp_path, LRMonitor(logging_interval=None))
    assert logged == {"lr-SGD/default": [(step, tb.float32(0.1)) for step in range(2 * BATCHES)]}
    assert monitor.lrs == {"lr-SGD/default": [0.1] * (2 * BATCHES)}


def test_logging_interval_none_logs_a_step_schedule_each_step_once(tmp_path):
    config = {"optimizer": {"name": "sgd", "lr": 0.1}, "scheduler": {"name": "warmup_linear", "warmup_steps": 4}}
    _, logged = fit(config, tmp_path, LRMonitor(logging_interval=None))
    expected = preview_learning_rates(MixinModel(config), config, 2 * BATCHES)["default"]
    assert logged == {"lr-SGD/default": series(list(range(2 * BATCHES)), expected)}


def test_accumulation_logs_each_optimizer_step_once(tmp_path):
    # Lightning's LearningRateMonitor logs once per batch: twice per optimizer step here.
    config = {"optimizer": {"name": "sgd", "lr": 0.1}, "scheduler": {"name": "warmup_linear", "warmup_steps": 2}}
    _, logged = fit(config, tmp_path, accumulate_grad_batches=2)
    steps = list(range(BATCHES))  # 2 epochs of 4 optimizer steps
    assert logged == {"lr-SGD/default": series(steps, preview_learning_rates(MixinModel(config), config, 8)["default"])}


def test_logging_interval_epoch_logs_at_each_epoch_start(tmp_path):
    config = {"optimizer": {"name": "sgd", "lr": 0.1}, "scheduler": {"name": "warmup_linear", "warmup_steps": 4}}
    _, logged = fit(config, tmp_path, LRMonitor(logging_interval="epoch"))
    expected = preview_learning_rates(MixinModel(config), config, 2 * BATCHES)["default"]
    assert logged == {"lr-SGD/default": series([0, BATCHES], expected)}


# --------------------------------------------------------------------------------------------- every optimizer

MOMENTUM, DECAY = "-momentum", "-weight_decay"
SUFFIXES = {
    "sgd": {MOMENTUM, DECAY},
    "adam": {MOMENTUM, DECAY},
    "adamw": {MOMENTUM, DECAY},
    "radam": {MOMENTUM, DECAY},
    "nadam": {MOMENTUM, DECAY},
    "adamax": {MOMENTUM, DECAY},
    "rmsprop": {MOMENTUM, DECAY},
    "muon": {MOMENTUM, DECAY},
    "adagrad": {DECAY},
    "adadelta": {DECAY},
    "asgd": {DECAY},
    "adafactor": {DECAY},
    "rprop": set(),
    "lbfgs": set(),
    "sparse_adam": {MOMENTUM},
}
"""Which of the optional keys each optimizer has: those without momentum/betas or weight_decay have no key."""


class BiasFree(OptimMixin, L.LightningModule):
    """Only 2-D parameters (what Muon accepts)."""

    def __init__(self, optim_config: Any) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1, bias=False)
        self.optim_config = optim_config

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        return torch.nn.functional.mse_loss(self.layer(inputs), targets)


class UnfreezeEncoderAtEpoch1(BaseFinetuning):
    """Lightning's recipe (as ``BackboneFinetuning``): the encoder frozen, then its own parameter group at epoch 1."""

    def __init__(self, name: str | None) -> None:
        super().__init__()
        self.name = name

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        self.freeze(pl_module.encoder)

    def finetune_function(self, pl_module: L.LightningModule, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        if epoch == 1:
            self.unfreeze_and_add_param_group(pl_module.encoder, optimizer, initial_denom_lr=10.0)
            if self.name is not None:
                optimizer.param_groups[-1]["name"] = self.name


class TrainableOnly(RecordingModel):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.5)


@pytest.mark.parametrize("name", [None, "encoder"], ids=["unnamed", "named"])
def test_a_group_added_during_the_fit_is_named_as_learning_rate_monitor_names_it(tmp_path, name):
    # The lone group's lr-SGD becomes lr-SGD/pg1 (or lr-SGD/pg1 and lr-SGD/encoder) from the step the group joins.
    logged = {}
    lrs = {}
    for monitor in (LRMonitor(), LearningRateMonitor(logging_interval="step")):
        run = tmp_path / type(monitor).__name__
        logged[type(monitor)] = fit_logged(TrainableOnly(), run, [UnfreezeEncoderAtEpoch1(name), monitor], max_epochs=2)
        lrs[type(monitor)] = monitor.lrs
    added = f"lr-SGD/{name or 'pg2'}"
    assert logged[LRMonitor] == logged[LearningRateMonitor]
    assert {key: [step for step, _ in points] for key, points in logged[LRMonitor].items()} == {
        "lr-SGD": list(range(BATCHES)),
        "lr-SGD/pg1": list(range(BATCHES, 2 * BATCHES)),
        added: list(range(BATCHES, 2 * BATCHES)),
    }
    assert lrs[LRMonitor] == lrs[LearningRateMonitor]
    assert [len(lrs[LRMonitor][key]) for key in ("lr-SGD/pg1", added)] == [2 * BATCHES, BATCHES]


def test_the_table_covers_every_optimizer():
    assert set(SUFFIXES) >= set(OPTIMIZERS)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_logs_without_error_and_skips_what_it_lacks(tmp_path, name):
    # Muon's single Linear is the output head: the auxiliary side, at Muon's lr under match_rms_adamw.
    config = {
        "optimizer": {"name": name, "lr": 0.01, **({"adjust_lr_fn": "match_rms_adamw"} if name == "muon" else {})}
    }
    model = {"muon": BiasFree, "sparse_adam": SparseEmbedding}.get(name, MixinModel)(config)
    monitor = LRMonitor(log_momentum=True, log_weight_decay=True)
    _, logged = fit(config, tmp_path, monitor, model, max_epochs=None, max_steps=2)
    key = f"lr-{OPTIMIZERS[name].__name__}/{'aux' if name == 'muon' else 'default'}"
    assert logged.keys() == {key} | {key + suffix for suffix in SUFFIXES[name]}
    # LBFGS runs its closure several times per step; still one point per step.
    assert logged[key] == [(0, tb.float32(0.01)), (1, tb.float32(0.01))]
    if MOMENTUM in SUFFIXES[name]:
        group = model.trainer.optimizers[0].param_groups[0]
        beta1 = group["betas"][0] if "betas" in group else group["momentum"]
        assert logged[key + MOMENTUM] == [(0, tb.float32(beta1)), (1, tb.float32(beta1))]


# --------------------------------------------------------------------------- Lightning's model, no logger, defaults


class HalvingSGD(BoringModel):
    """Lightning's BoringModel with its own SGD at lr 0.1 and a StepLR that halves it every epoch."""

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)]


class EpochLRs(L.Callback):
    """The lr each training epoch runs at, read from the optimizer itself."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


NO_LOGGER_WARNING = (
    "LRMonitor: the Trainer has no logger (logger=False), so no learning rate is logged; the lr keys are only put"
    " into trainer.callback_metrics (for EarlyStopping or ModelCheckpoint)."
)


@pytest.mark.parametrize("val_batches", [0, 1], ids=["checked-at-train-epoch-end", "checked-after-validation"])
def test_without_a_logger_early_stopping_on_the_lr_stops_when_it_crosses_the_threshold(tmp_path, val_batches):
    epoch_lrs, stopping = EpochLRs(), EarlyStopping(monitor="lr-SGD", mode="min", stopping_threshold=0.01)
    fit = trainer(
        callbacks=[LRMonitor(), epoch_lrs, stopping],
        max_epochs=10,
        limit_train_batches=2,
        limit_val_batches=val_batches,
    )
    with pytest.warns(UserWarning) as warned:
        fit.fit(HalvingSGD())
    # 0.1 halved each epoch: epoch 4 runs at 0.00625, the first lr below 0.01, and is the last epoch.
    assert epoch_lrs.lrs == [0.1, 0.05, 0.025, 0.0125, 0.00625]
    assert stopping.stopped_epoch == 4
    assert fit.callback_metrics["lr-SGD"].item() == pytest.approx(0.00625)
    assert [str(w.message) for w in warned if str(w.message).startswith("LRMonitor")] == [NO_LOGGER_WARNING]


def test_without_a_logger_model_checkpoint_monitors_the_lr(tmp_path):
    checkpoint = ModelCheckpoint(tmp_path, monitor="lr-SGD", mode="max", filename="{epoch}")
    fit = trainer(
        callbacks=[LRMonitor(), checkpoint],
        max_epochs=3,
        limit_train_batches=2,
        limit_val_batches=0,
        enable_checkpointing=True,
    )
    with pytest.warns(UserWarning, match="has no logger"):
        fit.fit(HalvingSGD())
    assert checkpoint.best_model_score.item() == pytest.approx(0.1)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["epoch=0.ckpt"]


SHORT_RUN_WARNING = (
    "LRMonitor(logging_interval='step') logs on Lightning's logging steps only, and this run of 6 optimizer steps is"
    " shorter than log_every_n_steps=50: no learning rate is logged. Lower Trainer(log_every_n_steps=...), or pass"
    " logging_interval=None (LearningRateMonitor's default)."
)
EPOCH_STARTS = {"lr-SGD": [(0, tb.float32(0.1)), (3, tb.float32(0.05))]}


@pytest.mark.parametrize(
    ("monitor", "logged", "warning"),
    [
        (LRMonitor, {}, [SHORT_RUN_WARNING]),
        (lambda: LRMonitor(logging_interval=None), EPOCH_STARTS, []),
        (LearningRateMonitor, EPOCH_STARTS, []),
    ],
    ids=["LRMonitor", "LRMonitor-None", "LearningRateMonitor"],
)
def test_default_interval_beside_learning_rate_monitor_on_a_run_shorter_than_log_every_n_steps(
    tmp_path, monitor, logged, warning
):
    # 2 epochs of 3 optimizer steps, log_every_n_steps=50: no logging step. LearningRateMonitor (and LRMonitor with
    # its logging_interval=None) log the epoch schedule at each epoch start; LRMonitor's "step" default logs nothing.
    logger = TensorBoardLogger(tmp_path, name="tb", default_hp_metric=False)
    fit = trainer(callbacks=[monitor()], logger=logger, max_epochs=2, limit_train_batches=3, limit_val_batches=0)
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        fit.fit(HalvingSGD())
    assert tb.scalars(tmp_path) == logged
    # With a logger, callback_metrics holds what was logged last (LearningRateMonitor's own behaviour).
    assert {key: value.item() for key, value in fit.callback_metrics.items()} == (
        {"lr-SGD": pytest.approx(0.05)} if logged else {}
    )
    assert [str(w.message) for w in warned if str(w.message).startswith("LRMonitor")] == warning
