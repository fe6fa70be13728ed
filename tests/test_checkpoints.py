"""Checkpoints of OptimMixin models: plain hparams (weights_only loading), faithful resume, changed-config reports."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from lightning_optim import OptimConfig, OptimConfigError, OptimMixin, ResumeConfigWarning, preview_learning_rates
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
from tests.references import COSINE_TO_RUN_END, COSINE_WARMUP_RATIO, sgdr, warmup_cosine, wsd

SGD = {"name": "sgd", "lr": 0.5}

pytestmark = [
    # Mid-epoch resume restarts the (unshuffled) loader: the lr sequence depends only on the step counts.
    pytest.mark.filterwarnings("ignore:.*your dataloader is not resumable"),
    # The resumed run checkpoints into a folder of its own.
    pytest.mark.filterwarnings("ignore:The dirpath has changed"),
]


def assert_plain(value: Any, where: str = "hparams") -> None:
    """Every container in ``value`` is exactly a dict or list (no DictConfig, AttributeDict or dataclass)."""
    if isinstance(value, (dict, DictConfig)) or dataclass_like(value):
        assert type(value) is dict, f"{where} is a {type(value).__name__}"
        for key, item in value.items():
            assert type(key) is str, f"{where} has the key {key!r}"
            assert_plain(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)) or OmegaConf.is_list(value):
        assert type(value) is list, f"{where} is a {type(value).__name__}"
        for index, item in enumerate(value):
            assert_plain(item, f"{where}[{index}]")
    else:
        assert value is None or type(value) in (str, int, float, bool), f"{where} = {value!r}"


def dataclass_like(value: Any) -> bool:
    return hasattr(value, "__dataclass_fields__")


def fit_and_save(model: L.LightningModule, path, **trainer_kwargs: Any) -> L.Trainer:
    run = trainer(max_steps=3, **trainer_kwargs)
    run.fit(model, loader())
    run.save_checkpoint(path)
    return run


# ------------------------------------------------------------------------------------------------ plain hparams


CONFIG = {
    "optimizer": {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.98], "weight_decay": 0.01},
    "param_groups": [{"name": "no_decay", "params": r"\.bias$", "weight_decay": 0.0}],
    "scheduler": {"name": "warmup_cosine", "warmup_steps": 2, "min_lr_ratio": 0.1},
}
EXPECTED = {
    "optimizer": {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.98], "weight_decay": 0.01},
    "param_groups": [{"name": "no_decay", "params": r"\.bias$", "weight_decay": 0.0}],
    "scheduler": {"name": "warmup_cosine", "warmup_steps": 2, "min_lr_ratio": 0.1},
}


@pytest.mark.parametrize(
    "given",
    [
        pytest.param(CONFIG, id="dict"),
        pytest.param(OmegaConf.create(CONFIG), id="DictConfig"),
        pytest.param(OptimConfig(**CONFIG), id="OptimConfig"),
    ],
)
def test_hparams_hold_optim_config_as_plain_containers(given):
    model = MixinModel(given)
    assert model.hparams["optim_config"] == EXPECTED
    assert_plain(model.hparams["optim_config"], "hparams.optim_config")
    assert model.optim_config == EXPECTED
    # A copy: changing what the model holds does not change its hparams, nor the caller's config.
    assert model.hparams["optim_config"] is not model.optim_config
    assert CONFIG["optimizer"]["lr"] == 1e-3


def test_model_checkpoint_loads_with_weights_only(tmp_path):
    model = MixinModel(OmegaConf.create(CONFIG))
    checkpoint = ModelCheckpoint(dirpath=tmp_path, filename="last-{step}", save_top_k=-1, every_n_train_steps=3)
    trainer(max_steps=3, enable_checkpointing=True, callbacks=[checkpoint]).fit(model, loader())
    path = tmp_path / "last-step=3.ckpt"

    saved = torch.load(path, weights_only=True)
    assert saved["hyper_parameters"] == {"optim_config": EXPECTED}
    assert_plain(saved["hyper_parameters"], "hyper_parameters")
    assert not any(key.endswith("hparams_type") for key in saved)

    loaded = MixinModel.load_from_checkpoint(path)  # torch's default weights_only=True
    assert loaded.optim_config == model.optim_config == EXPECTED
    assert type(loaded.hparams["optim_config"]) is dict
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    loaded_explicitly = MixinModel.load_from_checkpoint(path, weights_only=True)
    assert loaded_explicitly.optim_config == EXPECTED


class WholeConfigModel(OptimMixin, RecordingModel):
    """The Hydra pattern: the whole run config is one ``DictConfig`` and becomes the hparams."""

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__()
        self.save_hyperparameters(cfg)
        self.optim_config = cfg["optim"]


class ConfigArgumentModel(OptimMixin, RecordingModel):
    """``save_hyperparameters()`` collecting init arguments, one of them a ``DictConfig``."""

    def __init__(self, cfg: DictConfig, width: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.optim_config = cfg["optim"]


def run_config(struct: bool) -> DictConfig:
    cfg = OmegaConf.create(
        {
            "optim": {"optimizer": {"name": "sgd", "lr": 0.1}, "scheduler": {"name": "step", "step_size": 2}},
            "data": {"sizes": [4, 8], "name": "toy"},
        }
    )
    OmegaConf.set_struct(cfg, struct)  # Hydra hands the task function a config in struct mode
    return cfg


OPTIM = {"optimizer": {"name": "sgd", "lr": 0.1}, "param_groups": [], "scheduler": {"name": "step", "step_size": 2}}


@pytest.mark.parametrize("struct", [False, True], ids=["plain", "struct"])
def test_save_hyperparameters_of_a_dictconfig_loads_with_weights_only(tmp_path, struct):
    cfg = run_config(struct)
    model = WholeConfigModel(cfg)
    assert model.optim_config == OPTIM
    # The caller's config is not changed by the mixin.
    assert OmegaConf.to_container(cfg) == OmegaConf.to_container(run_config(struct))
    fit_and_save(model, tmp_path / "run.ckpt")

    saved = torch.load(tmp_path / "run.ckpt", weights_only=True)
    # Lightning records the init argument the hparams came from; the mixin made them plain and left them as they
    # were, keeping optim_config beside them.
    assert saved["hparams_name"] == "cfg"
    assert saved["hyper_parameters"] == {
        "optim": {"optimizer": {"name": "sgd", "lr": 0.1}, "scheduler": {"name": "step", "step_size": 2}},
        "data": {"sizes": [4, 8], "name": "toy"},
    }
    assert saved["optim_config"] == OPTIM
    assert_plain(saved["hyper_parameters"], "hyper_parameters")
    assert "hparams_type" not in saved  # Lightning would store the DictConfig class itself here

    loaded = WholeConfigModel.load_from_checkpoint(tmp_path / "run.ckpt")
    assert loaded.optim_config == OPTIM
    assert loaded.hparams["data"] == {"sizes": [4, 8], "name": "toy"}


def test_save_hyperparameters_with_a_dictconfig_argument_loads_with_weights_only(tmp_path):
    model = ConfigArgumentModel(run_config(struct=True), width=3)
    assert isinstance(model.hparams["cfg"], DictConfig)  # what Lightning keeps in memory
    fit_and_save(model, tmp_path / "run.ckpt")

    saved = torch.load(tmp_path / "run.ckpt", weights_only=True)
    assert saved["hyper_parameters"] == {
        "cfg": {
            "optim": {"optimizer": {"name": "sgd", "lr": 0.1}, "scheduler": {"name": "step", "step_size": 2}},
            "data": {"sizes": [4, 8], "name": "toy"},
        },
        "width": 3,
        "optim_config": OPTIM,
    }
    assert_plain(saved["hyper_parameters"], "hyper_parameters")

    loaded = ConfigArgumentModel.load_from_checkpoint(tmp_path / "run.ckpt")
    assert loaded.optim_config == OPTIM
    assert loaded.hparams["width"] == 3
    assert loaded.hparams["cfg"]["data"] == {"sizes": [4, 8], "name": "toy"}


def test_plain_lightning_module_with_dictconfig_hparams_fails_weights_only(tmp_path):
    """The problem the mixin solves: without it the same checkpoint needs weights_only=False."""

    class WithoutMixin(RecordingModel):
        def __init__(self, cfg: DictConfig) -> None:
            super().__init__()
            self.save_hyperparameters(cfg)

    fit_and_save(WithoutMixin(run_config(struct=False)), tmp_path / "run.ckpt")
    with pytest.raises(Exception, match="weights_only"):
        torch.load(tmp_path / "run.ckpt", weights_only=True)


# ------------------------------------------------------------------------------------------------ faithful resume

BATCHES = 8  # loader(): 32 samples in batches of 4


def interrupted_and_resumed(
    make_model,
    tmp_path,
    crash_at: int,
    *,
    val_metric: list[float] | None = None,
    after_validation: bool = False,
    driver: Callable[[], list[L.Callback]] = list,
    **trainer_kwargs: Any,
) -> list[float]:
    """Per-batch lrs of a run that dies after optimizer step ``crash_at`` and resumes from its checkpoint.

    The checkpoint is written every ``crash_at`` optimizer steps, or with ``after_validation`` by Lightning's
    default ModelCheckpoint at the end of each validation run.
    """

    def checkpointing(folder: str) -> ModelCheckpoint:
        every = {} if after_validation else {"every_n_train_steps": crash_at}
        return ModelCheckpoint(dirpath=tmp_path / folder, filename="{step}", save_top_k=-1, **every)

    val_loader = loader(8) if val_metric else None
    first = make_model(val_metric)
    callbacks = [*driver(), checkpointing("first"), CrashAt(crash_at)]
    run = trainer(enable_checkpointing=True, callbacks=callbacks, **trainer_kwargs)
    with pytest.raises(Interrupted):
        run.fit(first, loader(), val_dataloaders=val_loader)
    path = tmp_path / "first" / f"step={crash_at}.ckpt"
    assert path.exists()
    assert len(first.lrs) == crash_at * trainer_kwargs.get("accumulate_grad_batches", 1)

    # A new process: a fresh model told only what the data will say from here on.
    second = make_model(val_metric[first.validation_runs :] if val_metric else None)
    resumed = trainer(enable_checkpointing=True, callbacks=[*driver(), checkpointing("resumed")], **trainer_kwargs)
    resumed.fit(second, loader(), val_dataloaders=val_loader, ckpt_path=path)
    assert resumed.global_step == run_steps(trainer_kwargs)
    return [lrs[0] for lrs in first.lrs + second.lrs]


def uninterrupted(
    make_model,
    *,
    val_metric: list[float] | None = None,
    driver: Callable[[], list[L.Callback]] = list,
    **trainer_kwargs: Any,
) -> list[float]:
    model = make_model(val_metric)
    trainer(callbacks=driver(), **trainer_kwargs).fit(
        model, loader(), val_dataloaders=loader(8) if val_metric else None
    )
    return [lrs[0] for lrs in model.lrs]


def run_steps(trainer_kwargs: dict[str, Any]) -> int:
    return trainer_kwargs["max_epochs"] * BATCHES // trainer_kwargs.get("accumulate_grad_batches", 1)


def mixin(scheduler: dict[str, Any]):
    return lambda val_metric: MixinModel({"optimizer": SGD, "scheduler": scheduler}, val_metric)


ENTRY_POINTS = ["mixin", "LRSchedule"]
"""The two ways to the same driver: OptimMixin, or LRSchedule over the model's own SGD(lr=0.5)."""


def entry_point(entry: str, scheduler: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :func:`uninterrupted` and :func:`interrupted_and_resumed` for ``entry``."""
    if entry == "mixin":
        return {"make_model": mixin(scheduler)}
    return {"make_model": RecordingModel, "driver": lambda: [LRSchedule(scheduler)]}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("crash_at", [5, 8, 11])
def test_resume_continues_warmup_cosine_per_step(tmp_path, crash_at, entry):
    run = entry_point(entry, {"name": "warmup_cosine", "warmup_steps": 3, "min_lr_ratio": 0.1})
    straight = uninterrupted(**run, max_epochs=3)
    assert straight == pytest.approx([warmup_cosine(k, 0.5, 3, 24, 0.1) for k in range(24)], abs=1e-12)
    assert interrupted_and_resumed(**run, tmp_path=tmp_path, crash_at=crash_at, max_epochs=3) == pytest.approx(
        straight, abs=1e-12
    )


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("crash_at", [12, 16], ids=["mid-epoch", "end-of-epoch"])
def test_resume_continues_step_decay_per_epoch(tmp_path, crash_at, entry):
    run = entry_point(entry, {"name": "step", "step_size": 1, "gamma": 0.5, "interval": "epoch"})
    straight = uninterrupted(**run, max_epochs=4)
    assert straight == pytest.approx([0.5 * 0.5 ** (k // BATCHES) for k in range(32)], abs=1e-12)
    assert interrupted_and_resumed(**run, tmp_path=tmp_path, crash_at=crash_at, max_epochs=4) == pytest.approx(
        straight, abs=1e-12
    )


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize(
    ("crash_at", "after_validation"), [(20, False), (24, True)], ids=["mid-epoch", "after-validation"]
)
def test_resume_continues_plateau(tmp_path, crash_at, after_validation, entry):
    run = entry_point(entry, {"name": "plateau", "monitor": "val/metric", "patience": 1, "factor": 0.5})
    metric = [1.0, 0.9, 0.95, 0.97, 0.8, 0.85, 0.86]  # no gain at validation runs 2, 3 and 5, 6
    straight = uninterrupted(**run, val_metric=metric, max_epochs=7)
    # patience 1: the second run in a row without a gain halves the lr, for the epochs after it.
    per_epoch = [0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25]
    assert straight == pytest.approx([lr for lr in per_epoch for _ in range(BATCHES)], abs=1e-12)
    resumed = interrupted_and_resumed(
        **run, tmp_path=tmp_path, crash_at=crash_at, val_metric=metric, after_validation=after_validation, max_epochs=7
    )
    assert resumed == pytest.approx(straight, abs=1e-12)


def test_resume_continues_sequential(tmp_path):
    scheduler = {
        "name": "sequential",
        "schedulers": [{"name": "warmup_cosine", "warmup_steps": 2}, {"name": "exponential", "gamma": 0.8}],
        "milestones": [6],
    }
    make = mixin(scheduler)
    straight = uninterrupted(make, max_epochs=2)
    expected = [warmup_cosine(k, 0.5, 2, 6, 0.0) for k in range(6)] + [0.5 * 0.8 ** (k - 6) for k in range(6, 16)]
    assert straight == pytest.approx(expected, abs=1e-12)
    assert interrupted_and_resumed(make, tmp_path, 9, max_epochs=2) == pytest.approx(straight, abs=1e-12)


RESTARTING = {
    "wsd": {"name": "wsd", "warmup_steps": 3, "decay_ratio": 0.5, "decay_shape": "sqrt", "min_lr_ratio": 0.1},
    "cosine_restarts": {
        "name": "cosine_restarts",
        "cycle_steps": 3,
        "cycle_mult": 2,
        "cycle_decay": 0.5,
        "warmup_ratio": 0.125,
        "min_lr_ratio": 0.1,
    },
}
"""Schedules whose lr turns within the run: the stable phase and the decay, the restarts."""
RESTARTING_LRS = {
    "wsd": [wsd(k, 0.5, 3, 24, 0.5, "sqrt", 0.1) for k in range(24)],
    "cosine_restarts": [sgdr(k, 0.5, 3, 3, 2, 0.5, 0.1) for k in range(24)],  # warmup 12.5% of 24; restarts 6, 12
}


@pytest.mark.parametrize("crash_at", [5, 14])
@pytest.mark.parametrize("name", RESTARTING)
def test_resume_continues_wsd_and_cosine_restarts(tmp_path, name, crash_at):
    make = mixin(RESTARTING[name])
    straight = uninterrupted(make, max_epochs=3)
    assert straight == pytest.approx(RESTARTING_LRS[name], abs=1e-12)
    assert interrupted_and_resumed(make, tmp_path, crash_at, max_epochs=3) == pytest.approx(straight, abs=1e-12)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("crash_at", [3, 4, 5])
def test_resume_with_frequency_under_gradient_accumulation(tmp_path, crash_at, entry):
    run = entry_point(entry, {"name": "warmup_cosine", "warmup_steps": 2, "frequency": 2})
    straight = uninterrupted(**run, max_epochs=3, accumulate_grad_batches=2)
    # 12 optimizer steps; the lr changes every 2 optimizer steps, to the schedule's value at that step.
    per_step = [warmup_cosine(k - k % 2, 0.5, 2, 12, 0.0) for k in range(12)]
    assert straight[::2] == pytest.approx(per_step, abs=1e-12)
    assert straight[1::2] == straight[::2]
    resumed = interrupted_and_resumed(
        **run, tmp_path=tmp_path, crash_at=crash_at, max_epochs=3, accumulate_grad_batches=2
    )
    assert resumed == pytest.approx(straight, abs=1e-12)


# ------------------------------------------------------------------------------------------------ changed config


def saved_run(tmp_path, optimizer: dict[str, Any], scheduler: dict[str, Any]):
    path = tmp_path / "first.ckpt"
    fit_and_save(MixinModel({"optimizer": optimizer, "scheduler": scheduler}), path)
    return path


def resume(path, optimizer: dict[str, Any], scheduler: dict[str, Any]) -> MixinModel:
    model = MixinModel({"optimizer": optimizer, "scheduler": scheduler})
    trainer(max_steps=5, max_epochs=2).fit(model, loader(), ckpt_path=path)
    return model


WARMUP = {"name": "warmup_linear", "warmup_steps": 2, "total_steps": 10}


def test_resume_with_changed_options_warns_each_key(tmp_path):
    path = saved_run(tmp_path, {"name": "sgd", "lr": 0.1}, WARMUP)
    with pytest.warns(ResumeConfigWarning) as record:
        resume(path, {"name": "sgd", "lr": 0.2, "momentum": 0.9}, {**WARMUP, "warmup_steps": 3})
    messages = [str(warning.message) for warning in record if warning.category is ResumeConfigWarning]
    assert len(messages) == 1
    assert messages[0].startswith(
        "Resuming with a changed optim_config: optimizer.lr (0.1 -> 0.2), optimizer.momentum (None -> 0.9), "
        "scheduler.warmup_steps (2 -> 3). "
    )


def test_resume_with_changed_schedule_name_warns(tmp_path):
    path = saved_run(tmp_path, {"name": "sgd", "lr": 0.1}, WARMUP)
    with pytest.warns(ResumeConfigWarning, match=r"scheduler\.name \('warmup_linear' -> 'warmup_cosine'\)"):
        resume(path, {"name": "sgd", "lr": 0.1}, {**WARMUP, "name": "warmup_cosine"})


def test_resume_with_another_optimizer_is_refused(tmp_path):
    path = saved_run(tmp_path, {"name": "sgd", "lr": 0.1}, WARMUP)
    with pytest.raises(OptimConfigError) as error:
        resume(path, {"name": "adam", "lr": 0.1}, WARMUP)
    assert "the checkpoint's optimizer is 'sgd' and optim_config now asks for 'adam'" in str(error.value)


def test_resume_with_the_same_config_does_not_warn(tmp_path):
    path = saved_run(tmp_path, {"name": "sgd", "lr": 0.1}, WARMUP)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model = resume(path, {"name": "sgd", "lr": 0.1}, WARMUP)
    assert [str(w.message) for w in record if issubclass(w.category, ResumeConfigWarning)] == []
    # It did resume: steps 3 and 4 of the warmup_linear schedule (2 warmup steps, 10 in all).
    assert [lrs[0] for lrs in step_lrs(model)] == pytest.approx([0.1 * (10 - 3) / 8, 0.1 * (10 - 4) / 8], abs=1e-12)


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

    Returns the per-batch lrs of both parts, the ``ResumeConfigWarning`` messages and the resumed run's last checkpoint.
    """
    first = MixinModel({"optimizer": SGD, "scheduler": scheduler})
    saving = ModelCheckpoint(dirpath=tmp_path / "first", filename="{step}", every_n_train_steps=crash_at)
    run = trainer(max_epochs=2, enable_checkpointing=True, callbacks=[saving, CrashAt(crash_at)])
    with pytest.raises(Interrupted):
        run.fit(first, loader())
    second = MixinModel({"optimizer": SGD, "scheduler": resumed_scheduler})
    resumed = trainer(max_epochs=max_epochs, strategy=strategy)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        resumed.fit(second, loader(), ckpt_path=tmp_path / "first" / f"step={crash_at}.ckpt")
    assert resumed.global_step == max_epochs * BATCHES
    resumed.save_checkpoint(tmp_path / "resumed.ckpt")
    messages = [str(w.message) for w in record if issubclass(w.category, ResumeConfigWarning)]
    saved = torch.load(tmp_path / "resumed.ckpt", weights_only=True)
    return [lrs[0] for lrs in first.lrs + second.lrs], messages, saved


def original_schedule(scheduler: dict[str, Any], total_steps: int, steps: int) -> list[float]:
    """The lrs of ``scheduler`` fixed to ``total_steps``, previewed over ``steps`` steps."""
    config = {"optimizer": SGD, "scheduler": {**scheduler, "total_steps": total_steps}}
    return preview_learning_rates(MixinModel(config), config, steps)["default"]


@pytest.mark.parametrize(
    ("scheduler", "warmup", "crash_at"),
    [(COSINE_TO_RUN_END, 3, 10), (COSINE_WARMUP_RATIO, 4, 2)],
    ids=["total_steps-null", "warmup_ratio"],
)
@pytest.mark.parametrize("after_setup", [False, True], ids=["restore-then-setup", "setup-then-restore"])
def test_resume_with_more_epochs_keeps_the_lr_curve(tmp_path, scheduler, warmup, crash_at, after_setup):
    strategy = RestoresAfterSetup() if after_setup else "auto"
    lrs, messages, saved = resumed_with_max_epochs(
        tmp_path, scheduler, scheduler, crash_at, max_epochs=4, strategy=strategy
    )
    # The 16-step schedule of the first run (warmup 3, or 25% of 16), then its floor: not a 32-step one.
    expected = [warmup_cosine(k, 0.5, warmup, 16, 0.1) for k in range(32)]
    assert lrs == pytest.approx(expected, abs=1e-12)
    assert lrs == pytest.approx(original_schedule(scheduler, 16, 32), abs=1e-12)
    assert messages == [
        "Resuming with a different run length: the checkpoint's run was 16 steps long, this one is 32 steps. The lr "
        "schedule of optim_config.scheduler ('warmup_cosine') continues as it began, over 16 steps. To stretch it "
        "over the new run on purpose, set optim_config.scheduler.total_steps: 32 (an explicit value wins over the "
        "checkpoint's)."
    ]
    # A second resume goes on with the first run's length too.
    assert saved["optim_run_lengths"] == [{"interval": "step", "length": 16}]


@pytest.mark.parametrize(
    ("scheduler", "warmup"), [(COSINE_TO_RUN_END, 3), (COSINE_WARMUP_RATIO, 8)], ids=["total_steps", "warmup_ratio"]
)
def test_resume_with_an_explicit_total_steps_stretches_the_schedule(tmp_path, scheduler, warmup):
    lrs, messages, saved = resumed_with_max_epochs(
        tmp_path, scheduler, {**scheduler, "total_steps": 32}, crash_at=2, max_epochs=4
    )
    # Steps 0 and 1 ran on the 16-step schedule; from the resume on, the new 32-step one (warmup 3, or 25% of 32).
    assert lrs[:2] == pytest.approx(original_schedule(scheduler, 16, 16)[:2], abs=1e-12)
    assert lrs[2:] == pytest.approx([warmup_cosine(k, 0.5, warmup, 32, 0.1) for k in range(2, 32)], abs=1e-12)
    assert lrs[2:] == pytest.approx(original_schedule(scheduler, 32, 32)[2:], abs=1e-12)
    assert [message.split(": ", 1)[0] for message in messages] == ["Resuming with a changed optim_config"]
    assert "scheduler.total_steps (None -> 32)" in messages[0]
    assert saved["optim_run_lengths"] == [{"interval": "step", "length": 32}]


@pytest.mark.parametrize("scheduler", [COSINE_TO_RUN_END, COSINE_WARMUP_RATIO], ids=["total_steps", "warmup_ratio"])
def test_resume_with_the_same_run_length_does_not_warn(tmp_path, scheduler):
    lrs, messages, saved = resumed_with_max_epochs(tmp_path, scheduler, scheduler, crash_at=10, max_epochs=2)
    assert messages == []
    assert lrs == pytest.approx(original_schedule(scheduler, 16, 16), abs=1e-12)
    assert saved["optim_run_lengths"] == [{"interval": "step", "length": 16}]


def test_resume_with_more_epochs_keeps_the_wsd_of_the_first_run(tmp_path):
    scheduler = {"name": "wsd", "warmup_steps": 3, "decay_ratio": 0.25, "decay_shape": "linear", "min_lr_ratio": 0.1}
    lrs, messages, saved = resumed_with_max_epochs(tmp_path, scheduler, scheduler, 10, max_epochs=4)
    # The first run's 16 steps (the decay over its last 4), then the floor: not a 32-step schedule.
    assert lrs == pytest.approx([wsd(k, 0.5, 3, 16, 0.25, "linear", 0.1) for k in range(32)], abs=1e-12)
    assert messages[0].endswith(
        "set optim_config.scheduler.total_steps: 32 (an explicit value wins over the checkpoint's)."
    )
    assert saved["optim_run_lengths"] == [{"interval": "step", "length": 16}]


def test_resume_with_more_epochs_keeps_the_warmup_of_cosine_restarts(tmp_path):
    scheduler = {"name": "cosine_restarts", "cycle_steps": 5, "warmup_ratio": 0.25}
    lrs, messages, saved = resumed_with_max_epochs(tmp_path, scheduler, scheduler, 2, max_epochs=4)
    # The warmup of the first run (25% of 16 steps), not of the resumed one (25% of 32).
    assert lrs == pytest.approx([sgdr(k, 0.5, 4, 5, 1) for k in range(32)], abs=1e-12)
    assert messages[0].endswith(
        "set optim_config.scheduler.warmup_steps: 8 (an explicit value wins over the checkpoint's)."
    )
    assert saved["optim_run_lengths"] == [{"interval": "step", "length": 16}]


def test_resume_per_epoch_keeps_the_run_length_in_epochs(tmp_path):
    scheduler = {"name": "cosine", "interval": "epoch", "min_lr_ratio": 0.2}
    lrs, messages, saved = resumed_with_max_epochs(tmp_path, scheduler, scheduler, crash_at=12, max_epochs=3)
    # Two epochs of cosine (0.5, then halfway), then the floor for the third: the first run's 2-epoch schedule.
    per_epoch = [0.5, 0.5 * (0.2 + 0.8 * 0.5), 0.5 * 0.2]
    assert lrs == pytest.approx([lr for lr in per_epoch for _ in range(BATCHES)], abs=1e-12)
    assert messages[0].startswith(
        "Resuming with a different run length: the checkpoint's run was 2 epochs long, this one is 3 epochs."
    )
    assert saved["optim_run_lengths"] == [{"interval": "epoch", "length": 2}]
