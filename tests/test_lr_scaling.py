"""``optimizer.lr_scaling``: the lr follows the effective batch size (loader batch x world size x accumulation), in
the arithmetic, the config, the preview, and a fit under accumulation, a GradientAccumulationScheduler, a
BatchSizeFinder, a resume and DDP on two CPU processes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import BatchSizeFinder, GradientAccumulationScheduler, ModelCheckpoint
from torch.utils.data import DataLoader

from lightning_optim import OptimConfigError
from lightning_optim.callbacks import LRMonitor
from lightning_optim.config.preview import preview_learning_rates
from lightning_optim.config.validation import resolve_optim_config
from lightning_optim.optim.build import build_optimizer
from lightning_optim.optim.lr_scaling import LrScaling
from tests.models import MemoryLogger, MixinModel, loader, step_lrs, trainer
from tests.references import warmup_cosine


def config(rule: str = "linear", base: int = 32, lr: float = 0.1, scheduler: Any = None) -> dict[str, Any]:
    return {
        "optimizer": {"name": "sgd", "lr": lr, "lr_scaling": {"rule": rule, "base_batch_size": base}},
        "param_groups": [{"name": "head", "params": "^head\\.", "lr_scale": 2.0}],
        "scheduler": scheduler,
    }


@pytest.mark.parametrize(
    ("rule", "batch_size", "factor"),
    [("linear", 512, 2.0), ("linear", 64, 0.25), ("sqrt", 1024, 2.0), ("sqrt", 64, 0.5), ("sqrt", 512, math.sqrt(2))],
)
def test_the_factor_of_each_rule(rule, batch_size, factor):
    assert LrScaling(rule, 256).factor(batch_size) == factor


def test_lr_scaling_is_kept_in_the_config_and_never_reaches_the_constructor():
    spec = resolve_optim_config(config(base=256.0))  # a command line's float
    assert spec.config["optimizer"]["lr_scaling"] == {"rule": "linear", "base_batch_size": 256}
    assert spec.optimizer.lr_scaling == LrScaling("linear", 256) and "lr_scaling" not in spec.optimizer.options
    optimizer = build_optimizer(torch.nn.Linear(2, 1), spec.optimizer)
    assert [group["lr"] for group in optimizer.param_groups] == [0.1]  # the config's lr until a fit knows B


@pytest.mark.parametrize(
    ("scaling", "scheduler", "message"),
    [
        ({"rule": "Linear", "base_batch_size": 8}, None, r"optimizer\.lr_scaling\.rule = 'Linear' .* mean 'linear'"),
        ({"rule": "sqrt", "base_batch_size": 0}, None, r"optimizer\.lr_scaling\.base_batch_size = 0 is not valid"),
        ({"rule": "sqrt", "base_batch_size": 8.5}, None, r"optimizer\.lr_scaling\.base_batch_size = 8\.5"),
        (
            {"rule": "sqrt", "base": 8},
            None,
            r"optimizer\.lr_scaling\.base = 8 is not valid\. Expected only rule and base_batch_size",
        ),
        ("sqrt", None, r"optimizer\.lr_scaling = 'sqrt' is not valid\. Expected a mapping"),
        (
            {"rule": "sqrt", "base_batch_size": 8},
            {"name": "onecycle", "max_lr": 0.1, "total_steps": 10},
            r"optimizer\.lr_scaling = .* no lr_scaling with scheduler 'onecycle'",
        ),
    ],
)
def test_bad_lr_scaling_names_the_key(scaling, scheduler, message):
    with pytest.raises(OptimConfigError, match=message):
        resolve_optim_config({"optimizer": {"name": "adam", "lr_scaling": scaling}, "scheduler": scheduler})


def test_the_preview_shows_the_scaled_curve_at_an_assumed_batch_size_and_says_when_it_cannot_know_it():
    schedule = {"name": "warmup_cosine", "warmup_steps": 2, "total_steps": 6}
    model = torch.nn.ModuleDict({"encoder": torch.nn.Linear(2, 2), "head": torch.nn.Linear(2, 1)})
    scaled = preview_learning_rates(model, config("sqrt", 32, scheduler=schedule), 6, batch_size=128)
    assert scaled == {
        "head": [warmup_cosine(k, 0.1 * 2.0 * 2.0, 2, 6) for k in range(6)],
        "default": [warmup_cosine(k, 0.1 * 2.0, 2, 6) for k in range(6)],
    }
    with pytest.warns(
        UserWarning, match=r"lr_scaling: the preview cannot know the effective batch size .* batch_size="
    ):
        unscaled = preview_learning_rates(model, config("sqrt", 32, scheduler=schedule), 6)
    assert unscaled["default"] == [warmup_cosine(k, 0.1, 2, 6) for k in range(6)]


# ------------------------------------------------------------------------------------------------ in a fit


def test_accumulation_scales_every_group_and_the_schedule_follows(caplog):
    schedule = {"name": "warmup_cosine", "warmup_steps": 2, "total_steps": None}
    model = MixinModel(config("linear", base=32, scheduler=schedule))
    logger = MemoryLogger()
    with caplog.at_level("INFO"):
        trainer(
            accumulate_grad_batches=2, logger=logger, log_every_n_steps=1, callbacks=[LRMonitor()], max_epochs=2
        ).fit(model, loader(batch_size=4))
    # B = 4 x 1 x 2 = 8 of 32: a quarter of each group's lr; 8 batches a epoch, 4 optimizer steps, 8 in all.
    expected = [[warmup_cosine(k, 0.2 * 0.25, 2, 8), warmup_cosine(k, 0.1 * 0.25, 2, 8)] for k in range(8)]
    assert step_lrs(model, accumulate=2) == [[pytest.approx(lr, rel=1e-15) for lr in step] for step in expected]
    logged = [metrics["lr-SGD/default"] for _, metrics in logger.logged if "lr-SGD/default" in metrics]
    assert logged == [pytest.approx(lrs[1], rel=1e-15) for lrs in expected]
    line = (
        "optim_config.optimizer.lr_scaling: effective batch size 8 (4 per device x 1 device x accumulation 2), "
        "8 / 32: lr x 0.25"
    )
    assert caplog.messages.count(line) == 1


def test_a_gradient_accumulation_schedule_changes_the_lr_at_its_epoch():
    model = MixinModel(config("linear", base=16))
    trainer(max_epochs=3, callbacks=[GradientAccumulationScheduler({0: 1, 1: 2, 2: 4})]).fit(
        model, loader(batch_size=4)
    )
    # 8 batches a epoch: B = 4, 8, 16 of 16; the lr of each batch (both groups).
    assert model.lrs == [[0.05, 0.025]] * 8 + [[0.1, 0.05]] * 8 + [[0.2, 0.1]] * 8


class BatchSizeModel(MixinModel):
    """Reads its train loader's batch size from ``batch_size``, which Lightning's ``BatchSizeFinder`` tunes."""

    def __init__(self, optim_config: Any) -> None:
        super().__init__(optim_config)
        self.batch_size = 2

    def train_dataloader(self) -> DataLoader:
        return loader(samples=64, batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return loader(samples=4)


def test_the_lr_follows_the_batch_size_finder_s_result():
    model = BatchSizeModel(config("linear", base=32))
    finder = BatchSizeFinder(mode="power", steps_per_trial=1, init_val=2, max_trials=3)
    trainer(max_epochs=1, callbacks=[finder], limit_val_batches=0).fit(model)
    assert (finder.optimal_batch_size, model.batch_size) == (8, 8)
    # The finder's 3 trial steps run at the config's lrs (the driver sits them out); then B = 8 of 32 (the initial
    # batch size 2 would give a sixteenth), over 64 samples: 8 batches.
    assert model.lrs == [[0.2, 0.1]] * 3 + [[0.2 * 8 / 32, 0.1 * 8 / 32]] * 8


def test_a_resume_keeps_the_scaled_lr_and_rescales_for_a_new_batch_size(tmp_path):
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    first = MixinModel(config("linear", base=16))
    trainer(max_epochs=1, callbacks=[checkpoints], enable_checkpointing=True).fit(first, loader(batch_size=4))
    assert first.lrs == [[0.05, 0.025]] * 8
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert checkpoint["optim_lr_scaling"] == [{"factor": 0.25, "batch_size": 4}]

    resumed = MixinModel(config("linear", base=16))
    trainer(max_epochs=2).fit(resumed, loader(batch_size=4), ckpt_path=tmp_path / "last.ckpt")
    assert resumed.lrs == [[0.05, 0.025]] * 8
    rescaled = MixinModel(config("linear", base=16))
    trainer(max_epochs=2, accumulate_grad_batches=4).fit(
        rescaled, loader(batch_size=4), ckpt_path=tmp_path / "last.ckpt"
    )
    assert rescaled.lrs == [[0.2, 0.1]] * 8


def test_a_loader_without_a_batch_size_is_refused_naming_the_key():
    model = MixinModel(config())
    loaders = {"a": loader(), "b": loader()}
    with pytest.raises(OptimConfigError, match=r"optim_config\.optimizer\.lr_scaling needs the train dataloader's"):
        trainer().fit(model, loaders)


class RankLrs(MixinModel):
    """Writes the lrs it trained with to ``rank<k>.json`` (DDP's processes keep their own model)."""

    def __init__(self, optim_config: Any, out_dir: str) -> None:
        super().__init__(optim_config)
        self.out_dir = out_dir

    def on_train_end(self) -> None:
        Path(self.out_dir, f"rank{self.global_rank}.json").write_text(json.dumps(self.lrs))


def test_ddp_s_world_size_scales_the_lr_on_every_rank(tmp_path):
    model = RankLrs(config("sqrt", base=32), str(tmp_path))
    trainer(devices=2, strategy="ddp_spawn").fit(model, loader(batch_size=4))
    # B = 4 per device x 2 devices = 8 of 32: sqrt(1/4) = 0.5; 32 samples split over 2 ranks: 4 batches each.
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == [[0.1, 0.05]] * 4
