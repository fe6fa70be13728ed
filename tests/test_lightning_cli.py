"""LightningCLI (jsonargparse) with the mixin: ``optim_config`` from YAML and dotted overrides, exactly; a missing one
is the CLI's usage error; ``--optimizer``/``--lr_scheduler`` cannot silently replace the mixin's optimizer."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.demos.boring_classes import BoringDataModule, BoringModel

from lightning_optim import OptimConfig, OptimConfigError, OptimMixin, validate_optim_config
from tests.references import warmup_cosine

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lightning_cli"

QUIET = ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]
QUIET += ["--trainer.enable_model_summary", "false", "--trainer.logger", "false"]

CONFIG = {
    "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
    "param_groups": [{"name": "no_decay", "params": r"\.bias$", "weight_decay": 0.0}],
    "scheduler": {"name": "warmup_cosine", "warmup_steps": 2, "total_steps": 8},
}


class CliBoring(OptimMixin, BoringModel):
    """Lightning's ``BoringModel`` (not written here) with the mixin; ``optim_config`` annotated for jsonargparse."""

    def __init__(self, optim_config: OptimConfig) -> None:
        super().__init__()
        self.optim_config = optim_config


class StepLrs(L.Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[-1]["lr"])


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    """LightningCLI saves its config, and Lightning its logs, under the working directory."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"model": {"optim_config": CONFIG}}))
    return path


def cli(args: list[str], **kwargs: Any) -> LightningCLI:
    return LightningCLI(CliBoring, BoringDataModule, args=[*QUIET, *args], run=False, **kwargs)


def test_yaml_and_dotted_overrides_reach_optim_config_exactly(config_file):
    overrides = ["--model.optim_config.optimizer.lr", "0.01", "--model.optim_config.scheduler.warmup_steps", "3"]
    model = cli(["--config", str(config_file), *overrides]).model
    expected = {
        "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
        "param_groups": CONFIG["param_groups"],
        "scheduler": {"name": "warmup_cosine", "warmup_steps": 3, "total_steps": 8},
    }
    assert model.optim_config == validate_optim_config(expected)
    assert model.optim_config["optimizer"]["lr"] == 0.01 and model.optim_config["scheduler"]["warmup_steps"] == 3
    assert model.hparams["optim_config"] == model.optim_config


def test_a_dotted_override_adds_a_key_and_a_whole_section_replaces_one(config_file):
    overrides = ["--model.optim_config.optimizer.nesterov", "true", "--model.optim_config.scheduler", "null"]
    model = cli(["--config", str(config_file), *overrides]).model
    assert model.optim_config["optimizer"] == {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True}
    assert model.optim_config["scheduler"] is None


def test_a_missing_optim_config_is_the_clis_usage_error(capsys):
    with pytest.raises(SystemExit) as exited:
        cli([])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "usage:" in error and "model.optim_config" in error


def test_a_bad_optim_config_value_names_the_key(config_file):
    with pytest.raises(OptimConfigError, match=r"optim_config\.optimizer\.momentu = 0\.5 .*Did you mean 'momentum'"):
        cli(["--config", str(config_file), "--model.optim_config.optimizer.momentu", "0.5"])


def test_lightning_clis_optimizer_argument_is_refused_before_training(config_file, tmp_path):
    steps = StepLrs()
    with pytest.warns(UserWarning, match="configure_optimizers` will be overridden"):  # Lightning's, easy to miss
        run = cli(["--config", str(config_file), "--optimizer", "Adam", "--optimizer.lr", "0.5"])
    run.trainer.callbacks.append(steps)
    with pytest.raises(OptimConfigError, match=r"replaced .* \(it builds Adam\(lr=0\.5\)\).*optimizer 'sgd'"):
        run.trainer.fit(run.model, run.datamodule)
    assert steps.lrs == [] and run.trainer.global_step == 0


def test_lightning_clis_lr_scheduler_argument_is_named_too(config_file):
    args = ["--optimizer", "SGD", "--optimizer.lr", "0.5", "--lr_scheduler", "StepLR", "--lr_scheduler.step_size", "2"]
    with pytest.warns(UserWarning, match="configure_optimizers` will be overridden"):
        run = cli(["--config", str(config_file), *args])
    with pytest.raises(OptimConfigError, match=r"builds SGD\(lr=0\.5\) and StepLR\)"):
        run.trainer.fit(run.model, run.datamodule)


def test_lightning_clis_lr_scheduler_alone_is_refused_before_training(config_file):
    steps = StepLrs()
    run = cli(["--config", str(config_file), "--lr_scheduler", "StepLR", "--lr_scheduler.step_size", "2"])
    run.trainer.callbacks.append(steps)
    with pytest.raises(
        OptimConfigError,
        match=r"^LightningCLI's --lr_scheduler StepLR without --optimizer: LightningCLI drops it without a word, and "
        r"CliBoring would train with optim_config's scheduler \('warmup_cosine'\)\. Set the schedule with "
        r"--model\.optim_config\.scheduler\.\* instead",
    ):
        run.trainer.fit(run.model, run.datamodule)
    assert steps.lrs == [] and run.trainer.global_step == 0


def test_without_auto_configure_optimizers_the_optimizer_argument_is_a_usage_error(config_file, capsys):
    with pytest.raises(SystemExit):
        cli(["--config", str(config_file), "--optimizer", "Adam"], auto_configure_optimizers=False)
    assert "--optimizer" in capsys.readouterr().err


@pytest.fixture
def example() -> Any:
    spec = importlib.util.spec_from_file_location("lightning_cli_example", EXAMPLE / "train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.mark.slow
def test_the_example_trains_with_the_yaml_and_overrides_and_its_checkpoint_holds_them(example, tmp_path):
    args = ["--trainer.max_epochs", "3", "--data.samples", "128", "--model.optim_config.optimizer.lr", "0.01"]
    args += ["--trainer.callbacks+", f"{__name__}.StepLrs", "--trainer.logger", "true"]
    run = example.main(["fit", "--config", str(EXAMPLE / "config.yaml"), *QUIET, *args])
    configured = yaml.safe_load((EXAMPLE / "config.yaml").read_text())["model"]["optim_config"]
    expected = validate_optim_config({**configured, "optimizer": {**configured["optimizer"], "lr": 0.01}})
    assert run.model.optim_config == expected
    # 128 samples in batches of 32 for 3 epochs: 12 steps; the YAML's warmup 8, total_steps null (the run), floor 0.1.
    (steps,) = (callback for callback in run.trainer.callbacks if isinstance(callback, StepLrs))
    assert steps.lrs == pytest.approx([warmup_cosine(k, 0.01, 8, 12, 0.1) for k in range(12)], rel=1e-12, abs=0)
    run_dir = tmp_path / "lightning_logs" / "version_0"
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["optim_config"]["optimizer"]["lr"] == 0.01
    (checkpoint,) = run_dir.glob("checkpoints/*.ckpt")
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["optim_config"] == expected and saved["hyper_parameters"]["optim_config"] == expected
    # save_hyperparameters under LightningCLI: load_from_checkpoint instantiates through jsonargparse again.
    assert saved["hyper_parameters"]["_instantiator"] == "lightning.pytorch.cli.instantiate_module"
    assert example.Regressor.load_from_checkpoint(checkpoint, weights_only=True).optim_config == expected


def test_the_example_refuses_lightning_clis_optimizer_argument(example, capsys):
    with pytest.raises(SystemExit):
        example.main(["fit", "--config", str(EXAMPLE / "config.yaml"), "--optimizer", "Adam"])
    assert "--optimizer" in capsys.readouterr().err
