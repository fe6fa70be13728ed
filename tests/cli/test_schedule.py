"""``lightning-optim-schedule``: draws a PNG and prints the same peak and final lr as ``preview_learning_rates``."""

from __future__ import annotations

import re

import pytest
from hydra import compose, initialize_config_module

from lightning_optim.cli.schedule import step_learning_rates
from lightning_optim.demos import DigitsCNN
from lightning_optim.schedulers import preview_learning_rates
from tests.cli.apps import run_app

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def printed_rows(stdout: str) -> dict[str, dict[str, tuple[int, float]]]:
    """``{group: {"peak": (step, lr), "final": (step, lr)}}`` from the printed tables."""
    tables: dict[str, dict[str, tuple[int, float]]] = {}
    group = None
    for line in stdout.splitlines():
        if match := re.search(r"group (\S+)", line):
            group = match.group(1)
            tables[group] = {}
        elif match := re.search(r"(peak|final)\s*│\s*(\d+)\s*│\s*(\S+)", line):
            tables[group][match.group(1)] = (int(match.group(2)), float(match.group(3)))
    return tables


def test_schedule_png_and_table_match_the_preview(tmp_path):
    out = tmp_path / "plot.png"
    rule = "{name: no_decay, params: '\\.bias$', weight_decay: 0.0, lr_scale: 0.5}"
    stdout = run_app(
        "lightning_optim.cli.schedule",
        "trainer.max_epochs=2",
        "trainer.accumulate_grad_batches=2",
        "scheduler=onecycle",
        f"param_groups=[{rule}]",
        f"out={out}",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert out.read_bytes().startswith(PNG_MAGIC)
    config = {
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True},
        "param_groups": [{"name": "no_decay", "params": r"\.bias$", "weight_decay": 0.0, "lr_scale": 0.5}],
        "scheduler": {"name": "onecycle", "max_lr": 0.1, "pct_start": 0.3},
    }
    # 1438 training images in batches of 64 -> 23 batches; accumulating 2 -> 12 optimizer steps per epoch.
    expected = preview_learning_rates(DigitsCNN(), config, 24)
    tables = printed_rows(stdout)
    assert set(tables) == set(expected) == {"no_decay", "default"}
    for group, lrs in expected.items():
        peak = max(range(len(lrs)), key=lrs.__getitem__)
        assert tables[group]["peak"][0] == peak
        assert tables[group]["peak"][1] == pytest.approx(lrs[peak], rel=1e-6)
        assert tables[group]["final"] == (23, pytest.approx(lrs[-1], rel=1e-6))
    assert tables["default"]["peak"][1] == pytest.approx(0.1, rel=0.01)


def test_schedule_default_out_is_in_the_run_dir_and_epoch_interval_expands(tmp_path):
    run_dir = tmp_path / "run"
    stdout = run_app(
        "lightning_optim.cli.schedule",
        "trainer.max_epochs=3",
        "scheduler=step",
        "scheduler.interval=epoch",
        "scheduler.step_size=1",
        "scheduler.gamma=0.5",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert (run_dir / "lr_schedule.png").read_bytes().startswith(PNG_MAGIC)
    tables = printed_rows(stdout)
    assert tables["default"]["peak"] == (0, pytest.approx(0.1))
    assert tables["default"]["final"] == (3 * 23 - 1, pytest.approx(0.1 * 0.5**2))


def test_ddp_counts_the_steps_of_one_rank():
    """1437 training digits over 2 ranks, 64 per batch: 12 steps per epoch, as the 2-process run takes them."""
    with initialize_config_module("lightning_optim.conf", version_base="1.3"):
        single = compose("train", overrides=["trainer.max_epochs=2"])
        ddp = compose("train", overrides=["trainer=ddp", "trainer.max_epochs=2"])
    assert len(step_learning_rates(single)[0]["default"]) == 2 * 23
    assert len(step_learning_rates(ddp)[0]["default"]) == 2 * 12
