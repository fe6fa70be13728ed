"""``lightning-optim-lr-find``: the override it prints is the suggestion of Lightning's own ``Tuner.lr_find`` on the
same seed, model and data; the PNG marks it; what the override could not set is refused before any training."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from lightning.pytorch.tuner.tuning import Tuner
from matplotlib.image import imread
from matplotlib.lines import Line2D
from omegaconf import DictConfig
from torch import nn

from lightning_optim import OptimConfigError, OptimMixin, SafeCheckpointIO
from lightning_optim.cli.lr_find import LrRangeTest, check_options, find_lr, lr_override, plot
from lightning_optim.demos import DigitsCNN, DigitsDataModule
from lightning_optim.stats.lr_suggestion import suggest_lr
from tests.cli.apps import TINY, run_app, run_app_expecting_failure

LR_FIND = "lightning_optim.cli.lr_find"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STEPS = 16
SMALL_CNN = ["model.width=4", "model.hidden=16"]


def composed(*overrides: str) -> DictConfig:
    with initialize_config_module(version_base="1.3", config_module="lightning_optim.conf"):
        return compose(config_name="lr_find", overrides=list(overrides))


def reference_search(root: Path) -> tuple[list[float], list[float], float | None]:
    """Lightning's finder on what ``optimizer=adamw debug=tiny`` composes, written out without the app's helpers."""
    L.seed_everything(42, workers=True)
    data = DigitsDataModule(batch_size=64, val_fraction=0.2, split_seed=0, num_workers=0)
    optimizer = {
        "name": "adamw",
        "lr": 0.001,
        "betas": [0.9, 0.999],
        "eps": 1e-08,
        "weight_decay": 0.01,
        "amsgrad": False,
        "maximize": False,
        "foreach": None,
        "capturable": False,
        "differentiable": False,
        "fused": None,
    }
    scheduler = {
        "name": "warmup_cosine",
        "warmup_ratio": 0.1,
        "total_steps": None,
        "min_lr_ratio": 0.0,
        "interval": "step",
    }
    model = DigitsCNN(width=4, hidden=16, optim_config={"optimizer": optimizer, "scheduler": scheduler})
    trainer = L.Trainer(
        default_root_dir=root,
        accelerator="cpu",
        devices=1,
        max_epochs=-1,
        max_steps=STEPS,
        gradient_clip_val=1.0,
        limit_train_batches=3,
        limit_val_batches=2,
        log_every_n_steps=1,
        plugins=[SafeCheckpointIO()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    finder = Tuner(trainer).lr_find(model, datamodule=data, num_training=STEPS, update_attr=False)
    assert finder is not None
    return list(finder.results["lr"]), list(finder.results["loss"]), finder.suggestion()


def test_the_printed_override_is_the_log_lr_suggestion_on_tuner_lr_finds_curve_and_the_png_marks_it(tmp_path):
    run_dir = tmp_path / "run"
    overrides = ["optimizer=adamw", *TINY, *SMALL_CNN, f"lr_find.num_training={STEPS}", f"hydra.run.dir={run_dir}"]
    stdout = run_app(LR_FIND, *overrides, cwd=tmp_path)
    lrs, losses, lightnings = reference_search(tmp_path / "reference")
    found = suggest_lr(lrs, losses, skip_begin=10, skip_end=1)
    assert found is not None and lightnings is not None
    suggestion = found.lr
    lines = stdout.strip().splitlines()
    assert lines[-3] == (
        f"searched {STEPS} learning rates from 1e-08 to {lrs[-1]:.3g} (exponential); suggestion {suggestion!r} "
        f"(steepest descent of the smoothed loss against log(lr)); Lightning's suggestion() {lightnings!r} "
        "(steepest descent against lr itself, Lightning #21141)"
    )
    png = run_dir / "lr_find.png"
    assert lines[-2] == f"lr range test drawn to {png.resolve()}"
    assert lines[-1] == lr_override(suggestion) == f"optimizer.lr={suggestion:.3g}"
    # The finder's own checkpoint is gone; the PNG is the reference search drawn, byte for byte.
    assert sorted(path.name for path in run_dir.iterdir()) == [".hydra", "lr_find.log", "lr_find.png"]
    assert png.read_bytes().startswith(PNG_MAGIC) and imread(png).shape == (450, 800, 4)
    reference_png = tmp_path / "reference.png"
    title = f"lr range test: adamw on DigitsCNN, {STEPS} steps"
    plot(LrRangeTest(lrs, losses, suggestion, "exponential", lightnings), title).savefig(reference_png, dpi=100)
    assert png.read_bytes() == reference_png.read_bytes()


def markers(figure: Any) -> list[Line2D]:
    return [line for line in figure.axes[0].get_lines() if line.get_marker() == "o"]


def test_the_plot_marks_the_suggestion_on_a_log_axis():
    lrs = [10.0**k for k in range(-8, 1)]
    losses = [2.3, 2.3, 2.2, 2.0, 1.5, 0.9, 0.8, 1.5, 4.0]
    figure = plot(LrRangeTest(lrs, losses, 1e-4, "exponential"), "t")
    axes = figure.axes[0]
    assert axes.get_xscale() == "log" and axes.get_xlabel() == "learning rate"
    (marker,) = markers(figure)
    assert list(marker.get_xdata()) == [1e-4] and list(marker.get_ydata()) == [1.5]
    assert marker.get_label() == "optimizer.lr=0.0001"
    assert [text.get_text() for text in axes.get_legend().get_texts()] == [
        "training loss (smoothed)",
        "optimizer.lr=0.0001",
    ]
    vertical = [line for line in axes.get_lines() if list(line.get_xdata()) == [1e-4, 1e-4]]
    assert len(vertical) == 1
    linear = plot(LrRangeTest(lrs, losses, None, "linear"), "t")
    assert linear.axes[0].get_xscale() == "linear" and markers(linear) == []


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("min_lr", 0, "lr_find.min_lr = 0 is not valid. Expected a finite learning rate > 0, e.g. 1e-8."),
        ("min_lr", float("nan"), "lr_find.min_lr = nan is not valid. Expected a finite learning rate > 0, e.g. 1e-8."),
        ("min_lr", float("inf"), "lr_find.min_lr = inf is not valid. Expected a finite learning rate > 0"),
        (
            "max_lr",
            0.0,
            "lr_find.max_lr = 0.0 is not valid. Expected a finite learning rate above lr_find.min_lr = 1e-08 and at "
            "most 3.403e+38, e.g. 1.0.",
        ),
        ("max_lr", float("inf"), "lr_find.max_lr = inf is not valid. Expected a finite learning rate above"),
        ("max_lr", float("nan"), "lr_find.max_lr = nan is not valid. Expected a finite learning rate above"),
        ("max_lr", 1e300, "lr_find.max_lr = 1e+300 is not valid. Expected a finite learning rate above"),
        ("num_training", 12, "lr_find.num_training = 12 is not valid. Expected a whole number of steps in [13, 10000]"),
        ("num_training", 20.5, "lr_find.num_training = 20.5 is not valid."),
        (
            "num_training",
            1e12,
            "lr_find.num_training = 1000000000000.0 is not valid. Expected a whole number of steps in [13, 10000] (the "
            "suggestion leaves out the first 10 and the last 1 points and needs two more; each step trains), e.g. 100.",
        ),
        ("num_training", float("nan"), "lr_find.num_training = nan is not valid. Expected a whole number of steps"),
        ("early_stop_threshold", float("inf"), "lr_find.early_stop_threshold = inf is not valid. Expected a finite"),
        (
            "mode",
            "lin",
            "lr_find.mode = 'lin' is not valid. Did you mean 'linear'? Expected 'exponential' or 'linear'.",
        ),
        ("early_stop_threshold", 1.0, "lr_find.early_stop_threshold = 1.0 is not valid. Expected a finite factor > 1"),
    ],
)
def test_bad_finder_options_are_refused_with_the_key_and_value(key, value, message):
    options = {"min_lr": 1e-8, "max_lr": 1.0, "num_training": 100, "mode": "exponential", "early_stop_threshold": 4.0}
    with pytest.raises(ValueError) as error:
        check_options({**options, key: value})
    assert str(error.value).startswith(message)


@pytest.mark.parametrize(
    ("scheduler", "keys"),
    [("cyclic", "scheduler.base_lr and scheduler.max_lr"), ("onecycle", "scheduler.max_lr")],
)
def test_a_schedule_that_sets_the_lr_itself_is_refused_before_any_training(scheduler, keys, monkeypatch):
    monkeypatch.setattr(Tuner, "lr_find", lambda *args, **kwargs: pytest.fail("the search started"))
    with pytest.raises(OptimConfigError) as error:
        find_lr(composed(f"scheduler={scheduler}", *TINY))
    assert str(error.value) == (
        f"lightning-optim-lr-find finds optimizer.lr, and scheduler {scheduler!r} does not use it: it sets every "
        f"group's lr from {keys}. Run the range test with scheduler=none (during the search Lightning's finder "
        f"replaces any schedule with its own), then choose {keys} from the curve."
    )


def test_the_app_refuses_a_onecycle_schedule_before_training(tmp_path):
    run_dir = tmp_path / "run"
    result = run_app_expecting_failure(LR_FIND, "scheduler=onecycle", *TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert "OptimConfigError: lightning-optim-lr-find finds optimizer.lr, and scheduler 'onecycle'" in result.stderr
    assert "searched" not in result.stdout and "Finding best initial lr" not in result.stderr
    assert sorted(path.name for path in run_dir.iterdir()) == [".hydra", "lr_find.log"]


class PlainCNN(L.LightningModule):
    """A model that takes ``optim_config`` but has no ``OptimMixin``, so no ``model.lr``."""

    def __init__(self, optim_config: dict[str, Any]) -> None:
        super().__init__()


def test_a_model_without_the_mixin_is_refused():
    with pytest.raises(TypeError, match=r"^model tests\.cli\.test_lr_find\.PlainCNN does not use OptimMixin"):
        find_lr(composed("model=digits_cnn", "~model.width", "~model.hidden", f"model._target_={__name__}.PlainCNN"))


def test_a_search_with_too_few_finite_points_draws_the_curve_and_fails_without_an_override(tmp_path):
    run_dir = tmp_path / "run"
    # The smoothed loss rises over the first steps, so a threshold just above 1 stops the search at step 2.
    overrides = [*TINY, *SMALL_CNN, "lr_find.early_stop_threshold=1.01", f"hydra.run.dir={run_dir}"]
    result = run_app_expecting_failure(LR_FIND, *overrides, cwd=tmp_path)
    lines = result.stdout.strip().splitlines()
    assert lines[-2].startswith("searched 2 learning rates from 1e-08 to ")
    assert lines[-1] == f"lr range test drawn to {(run_dir / 'lr_find.png').resolve()}"
    assert "RuntimeError: No suggestion: after leaving out the first 10 and last 1 points" in result.stderr
    assert (run_dir / "lr_find.png").read_bytes().startswith(PNG_MAGIC)


def test_fast_dev_run_which_skips_the_search_is_an_error(tmp_path):
    cfg = composed(*TINY, "+trainer.fast_dev_run=true", f"trainer.default_root_dir={tmp_path}")
    skipped = pytest.warns(UserWarning, match="Skipping learning rate finder since `fast_dev_run` is enabled")
    with skipped, pytest.raises(RuntimeError, match=r"^Lightning's lr finder did not run: it skips the search when"):
        find_lr(cfg)


class TemplateDigitsModule(OptimMixin, L.LightningModule):
    """lightning-hydra-template's module on the digits: Hydra builds ``model.net``, and ``save_hyperparameters()``
    without ``ignore=["net"]`` puts the ``nn.Module`` into ``hparams``, which ``weights_only`` loading refuses."""

    def __init__(self, net: nn.Module, optim_config: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.net = net
        self.optim_config = optim_config

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        return F.cross_entropy(self.net(images.flatten(1)), labels)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Attribute 'net' is an instance of `nn.Module`")
def test_the_search_restores_a_model_whose_hparams_hold_a_module_and_leaves_no_checkpoint(tmp_path):
    net = ["+model.net._target_=torch.nn.Linear", "+model.net.in_features=64", "+model.net.out_features=10"]
    cfg = composed(
        *TINY,
        "~model",
        f"+model._target_={__name__}.TemplateDigitsModule",
        *net,
        f"lr_find.num_training={STEPS}",
        f"trainer.default_root_dir={tmp_path}",
    )
    search = find_lr(cfg)
    assert len(search.lrs) == STEPS and search.suggestion is not None
    assert os.listdir(tmp_path) == []


def test_with_lr_scaling_the_override_is_the_suggestion_at_the_base_batch_size(tmp_path):
    scaling = "+optimizer.lr_scaling={rule: linear, base_batch_size: 32}"
    cfg = composed("optimizer=sgd", scaling, *TINY, *SMALL_CNN, f"lr_find.num_training={STEPS}")
    cfg.trainer.default_root_dir = str(tmp_path)
    search = find_lr(cfg)
    assert search.suggestion is not None and search.configured is not None
    # The finder swept the lrs applied at batch 64; the config's lr is the lr at 32, which lr_scaling doubles.
    assert search.configured == (
        search.suggestion / 2,
        f"lr {search.suggestion:.6g} applied at effective batch size 64 (64 per device x 1 device x accumulation 1) "
        f"is optimizer.lr {search.suggestion / 2:.6g} at lr_scaling.base_batch_size 32 (linear: lr x 2)",
    )
    assert search.override == lr_override(search.suggestion / 2)
