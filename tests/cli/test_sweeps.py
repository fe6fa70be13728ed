"""Hydra launchers and sweepers on the train app: Optuna, joblib, and the SLURM config."""

from __future__ import annotations

import re

import pytest
import yaml
from hydra import compose, initialize_config_module

from tests.cli.apps import TINY, run_app


def accuracies(stdout: str) -> list[float]:
    return [float(value) for value in re.findall(r"^val/acc = ([0-9.]+)$", stdout, re.M)]


def test_optuna_searches_lr_and_weight_decay_and_reports_the_best_trial(tmp_path):
    sweep_dir = tmp_path / "sweep"
    stdout = run_app(
        "lightning_optim.cli.train",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        *TINY,
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    values = accuracies(stdout)
    assert len(values) == 2
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(max(values), abs=5e-5)  # printed with 4 decimals
    assert set(results["best_params"]) == {"optimizer.lr", "optimizer.weight_decay"}
    assert 1e-4 <= results["best_params"]["optimizer.lr"] <= 1.0
    for trial in ("0", "1"):
        overrides = yaml.safe_load((sweep_dir / trial / ".hydra" / "overrides.yaml").read_text())
        assert {item.split("=")[0] for item in overrides} >= {"optimizer.lr", "optimizer.weight_decay"}


def test_joblib_launcher_runs_the_sweep_in_parallel_processes(tmp_path):
    sweep_dir = tmp_path / "sweep"
    stdout = run_app(
        "lightning_optim.cli.train",
        "-m",
        "launcher=joblib",
        "optimizer=sgd,adamw",
        *TINY,
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    assert len(accuracies(stdout)) == 2
    launcher = yaml.safe_load((sweep_dir / "multirun.yaml").read_text())["hydra"]["launcher"]
    assert (launcher["_target_"], launcher["n_jobs"]) == (
        "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
        2,
    )
    assert sorted(path.name for path in sweep_dir.iterdir() if path.is_dir()) == ["0", "1"]


def test_slurm_launcher_config_composes_with_ddp():
    overrides = ["launcher=slurm", "trainer=ddp", "trainer.devices=4", "hydra.launcher.partition=gpu"]
    with initialize_config_module("lightning_optim.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == ("gpu", 4, 4, 1)
    assert cfg.trainer.strategy == "ddp"
