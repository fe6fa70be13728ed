"""``lightning-optim-train``: a tiny run reports its accuracy and TensorBoard command and logs the lr it used."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lightning_optim.demos import DigitsCNN
from lightning_optim.preview import preview_learning_rates
from tests import tb
from tests.cli.apps import TINY, run_app


def scalars(logdir: Path) -> dict[str, dict[int, float]]:
    return {tag: dict(points) for tag, points in tb.scalars(logdir).items()}


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("train") / "run"
    stdout = run_app("lightning_optim.cli.train", *TINY, f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    return run_dir, stdout


def test_prints_accuracy_and_tensorboard_command(single_run):
    run_dir, stdout = single_run
    accuracy = float(re.search(r"^validation accuracy \(val/acc\): ([0-9.]+)$", stdout, re.M).group(1))
    logged = scalars(run_dir / "tensorboard")
    assert accuracy == pytest.approx(logged["val/acc"][max(logged["val/acc"])], abs=5e-5)
    command = re.search(r"^tensorboard --logdir (.+)$", stdout, re.M).group(1)
    assert Path(command) == (run_dir / "tensorboard").resolve() and Path(command).is_absolute()


def test_event_files_hold_metrics_and_the_scheduled_lr(single_run):
    run_dir, _ = single_run
    logged = scalars(run_dir / "tensorboard")
    assert {"train/loss", "val/loss", "val/acc", "lr-SGD/default"} <= set(logged)
    config = {
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True},
        "scheduler": {"name": "warmup_cosine", "warmup_ratio": 0.1, "total_steps": None, "min_lr_ratio": 0.0},
    }
    expected = preview_learning_rates(DigitsCNN(), config, 3)["default"]
    assert [logged["lr-SGD/default"][step] for step in range(3)] == pytest.approx(expected)
    assert expected == pytest.approx([0.1, 0.075, 0.025])
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_multirun_sweeps_optimizers(tmp_path):
    sweep_dir = tmp_path / "sweep"
    stdout = run_app(
        "lightning_optim.cli.train",
        "-m",
        "optimizer=sgd,adamw",
        *TINY,
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    assert len(re.findall(r"^validation accuracy \(val/acc\): [0-9.]+$", stdout, re.M)) == 2
    assert sorted(path.name for path in sweep_dir.iterdir() if path.is_dir()) == ["0", "1"]
    lr_keys = {job: {key for key in scalars(sweep_dir / job) if key.startswith("lr-")} for job in ("0", "1")}
    assert lr_keys == {
        job: {f"lr-{name}/default", f"lr-{name}/default-momentum", f"lr-{name}/default-weight_decay"}
        for job, name in (("0", "SGD"), ("1", "AdamW"))
    }
    assert (sweep_dir / "1" / ".hydra" / "overrides.yaml").read_text().count("optimizer=adamw") == 1


def test_lr_schedule_callback_drives_the_lr_instead_of_the_mixin(tmp_path):
    run_dir = tmp_path / "run"
    overrides = ["scheduler=none", "callbacks=[default,lr_schedule]", *TINY, f"hydra.run.dir={run_dir}"]
    run_app("lightning_optim.cli.train", *overrides, cwd=tmp_path)
    logged = scalars(run_dir / "tensorboard")
    assert [logged["lr-SGD/default"][step] for step in range(3)] == pytest.approx([0.1, 0.075, 0.025])
