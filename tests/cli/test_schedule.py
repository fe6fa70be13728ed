"""``lightning-optim-schedule``: draws a PNG and prints the same peak and final lr as ``preview_learning_rates``."""

from __future__ import annotations

import math
import re

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig
from rich.console import Console

from lightning_optim import OptimConfigError
from lightning_optim.cli.schedule import branch_learning_rates, group_table, plot, step_learning_rates
from lightning_optim.config.preview import PREVIEW_POINTS, LearningRatePreview, preview_learning_rates
from lightning_optim.demos import DigitsCNN
from tests.cli.apps import run_app
from tests.previews import count_schedule_calls
from tests.references import sgdr, wsd

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


def test_schedule_default_out_is_in_the_run_dir_epoch_interval_expands_and_lr_scaling_is_shown(tmp_path):
    run_dir = tmp_path / "run"
    stdout = run_app(
        "lightning_optim.cli.schedule",
        "trainer.max_epochs=3",
        "scheduler=step",
        "scheduler.interval=epoch",
        "scheduler.step_size=1",
        "scheduler.gamma=0.5",
        "+optimizer.lr_scaling={rule: linear, base_batch_size: 32}",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert (run_dir / "lr_schedule.png").read_bytes().startswith(PNG_MAGIC)
    assert (
        "lr_scaling: effective batch size 64 (assumed; batch_size=<B> sets it), 64 / 32: lr x 2 (a BatchSizeFinder "
        "in the run would change it)"
    ) in stdout.splitlines()
    tables = printed_rows(stdout)
    assert tables["default"]["peak"] == (0, pytest.approx(0.2))
    assert tables["default"]["final"] == (3 * 23 - 1, pytest.approx(0.2 * 0.5**2))


def test_ddp_counts_the_steps_of_one_rank():
    """1437 training digits over 2 ranks, 64 per batch: 12 steps per epoch, as the 2-process run takes them."""
    with initialize_config_module("lightning_optim.conf", version_base="1.3"):
        single = compose("train", overrides=["trainer.max_epochs=2"])
        ddp = compose("train", overrides=["trainer=ddp", "trainer.max_epochs=2"])
    assert step_learning_rates(single)[0].total_steps == 2 * 23
    assert step_learning_rates(ddp)[0].total_steps == 2 * 12


def composed(*overrides: str) -> DictConfig:
    with initialize_config_module("lightning_optim.conf", version_base="1.3"):
        return compose("schedule", overrides=list(overrides))


def table_rows(preview: LearningRatePreview, first_steps: int) -> dict[str, dict[str, tuple[int, float]]]:
    """What the app prints for ``preview``, parsed back."""
    console = Console(record=True, width=120)
    for name, values in preview.lrs.items():
        console.print(group_table(name, preview.steps, values, first_steps))
    return printed_rows(console.export_text())


def test_a_billion_steps_preview_at_a_bounded_cost(monkeypatch):
    cfg = composed("+trainer.max_steps=1e9", "trainer.max_epochs=-1", "scheduler.min_lr_ratio=0.1")
    calls = count_schedule_calls(monkeypatch, most=3 * PREVIEW_POINTS)
    preview, optim_config = step_learning_rates(cfg, first_steps=5)
    assert optim_config["scheduler"]["warmup_ratio"] == 0.1  # the main job's warmup_cosine: 10**8 warmup steps
    assert 0 < len(calls) <= 3 * PREVIEW_POINTS
    values = preview.lrs["default"]
    assert preview.total_steps == 10**9 and type(preview.total_steps) is int  # 1e9 is a YAML float
    assert preview.steps[:5] == [0, 1, 2, 3, 4] and values[:5] == [0.1 * (k / 10**8) for k in range(5)]
    tables = table_rows(preview, 5)
    assert tables["default"]["peak"] == (10**8, 0.1)
    final = 0.1 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (10**9 - 1 - 10**8) / (10**9 - 10**8))))
    assert tables["default"]["final"] == (10**9 - 1, pytest.approx(final, rel=1e-6))


def test_a_billion_steps_per_epoch_preview_at_a_bounded_cost(monkeypatch):
    cfg = composed(
        "trainer.max_epochs=100000000",
        "scheduler=step",
        "scheduler.interval=epoch",
        "scheduler.step_size=30000000",
        "scheduler.gamma=0.5",
    )
    calls = count_schedule_calls(monkeypatch, most=3 * PREVIEW_POINTS)
    preview, _ = step_learning_rates(cfg, first_steps=5)
    assert 0 < len(calls) <= 3 * PREVIEW_POINTS
    steps = 23 * 10**8  # 23 optimizer steps per epoch
    assert preview.total_steps == steps
    lrs = dict(zip(preview.steps, preview.lrs["default"], strict=True))
    assert [lrs[step] for step in range(5)] == [0.1] * 5
    # Each stair drawn from the first step of the epoch that starts it; the last epoch by its last step.
    assert lrs[23 * 30_000_000 - 1] == 0.1 and lrs[23 * 30_000_000] == 0.05
    assert lrs[23 * 90_000_000] == 0.1 * 0.5**3
    tables = table_rows(preview, 5)
    assert tables["default"]["peak"] == (0, 0.1)
    assert tables["default"]["final"] == (steps - 1, 0.1 * 0.5**3)


def test_epoch_interval_preview_equals_each_epoch_repeated_per_step():
    cfg = composed("trainer.max_epochs=3", "scheduler=step", "scheduler.interval=epoch", "scheduler.step_size=1")
    preview, optim_config = step_learning_rates(cfg, first_steps=5)
    per_epoch = preview_learning_rates(DigitsCNN(), optim_config, 3)["default"]
    every_step = [lr for lr in per_epoch for _ in range(23)]
    assert preview.steps == [0, 1, 2, 3, 4, 22, 23, 45, 46, 68]
    assert preview.lrs["default"] == [every_step[step] for step in preview.steps]


def test_a_stateful_schedule_beyond_the_limit_is_refused_before_stepping():
    cfg = composed("scheduler=onecycle", "+trainer.max_steps=2e6", "trainer.max_epochs=-1")
    with pytest.raises(OptimConfigError) as error:
        step_learning_rates(cfg)
    assert str(error.value).startswith(
        "Cannot preview 2000000 steps of the scheduler OneCycleLR: a stateful scheduler is stepped through every "
        "step, and a preview stops at PREVIEW_STEP_LIMIT = 1000000 steps. Preview a run of at most 1000000 steps "
        "(e.g. trainer.max_steps=1000000)"
    )


def test_wsd_composes_and_previews_the_main_job():
    preview, optim_config = step_learning_rates(composed("scheduler=wsd", "scheduler.min_lr_ratio=0.1"))
    assert optim_config["scheduler"] == {
        "name": "wsd",
        "warmup_ratio": 0.1,
        "decay_ratio": None,
        "decay_start_step": None,
        "decay_shape": "sqrt",
        "total_steps": None,
        "min_lr_ratio": 0.1,
        "interval": "step",
    }
    # 5 epochs of 23 digit batches: a warmup of round(11.5) = 12 steps, the decay from 115 - round(23.0) = 92 on.
    assert preview.total_steps == 115
    expected = [wsd(k, 0.1, 12, 115, 0.2, "sqrt", 0.1) for k in range(115)]
    assert {11, 12, 91, 92, 114} <= set(preview.steps)
    assert preview.lrs["default"] == pytest.approx([expected[step] for step in preview.steps], rel=1e-12)
    assert table_rows(preview, 5)["default"]["peak"] == (12, pytest.approx(0.1))


def test_cosine_restarts_composes_and_previews_the_main_job():
    preview, optim_config = step_learning_rates(composed("scheduler=cosine_restarts"))
    assert optim_config["scheduler"] == {
        "name": "cosine_restarts",
        "cycle_steps": 10,
        "cycle_mult": 2,
        "cycle_decay": 1.0,
        "min_lr_ratio": 0.0,
        "warmup_steps": 0,
        "interval": "step",
    }
    # Restarts at 10, 30 and 70 of the 115 steps, each back at the full lr.
    assert {9, 10, 29, 30, 69, 70} <= set(preview.steps)
    expected = [sgdr(k, 0.1, 0, 10, 2) for k in range(115)]
    assert preview.lrs["default"] == pytest.approx([expected[step] for step in preview.steps], rel=1e-12)
    assert [preview.lrs["default"][preview.steps.index(step)] for step in (10, 30, 70)] == [0.1] * 3


def test_a_fractional_max_steps_is_refused():
    with pytest.raises(ValueError, match=r"^trainer\.max_steps = 1000\.5 is not valid\. Expected a whole number"):
        step_learning_rates(composed("+trainer.max_steps=1000.5", "trainer.max_epochs=-1"))


@pytest.mark.slow
def test_lr_scaling_previews_at_the_assumed_batch_size():
    """The digits loader's 64 per batch x accumulation 2 = 128 of 32: lr x 4 (linear); batch_size=8 gives a quarter."""
    scaling = "+optimizer.lr_scaling={rule: linear, base_batch_size: 32}"
    accumulated = ("trainer.accumulate_grad_batches=2", "trainer.max_epochs=1")
    plain = step_learning_rates(composed(*accumulated))[0].lrs
    assumed = step_learning_rates(composed(scaling, *accumulated))[0].lrs
    given = step_learning_rates(composed(scaling, "batch_size=8", *accumulated))[0].lrs
    assert assumed == {name: [lr * 4 for lr in lrs] for name, lrs in plain.items()}
    assert given == {name: [lr / 4 for lr in lrs] for name, lrs in plain.items()}


BRANCHES = (
    "branches=[{decay_start_step: 40, total_steps: 60}, {decay_start_step: 70, total_steps: 80, decay_shape: linear}]"
)
"""Two cooldowns from the stable phase (steps 12..91) of the main job's wsd over 115 steps: 20 steps of 1-sqrt from
step 40, 10 linear ones from step 70."""


def test_cooldown_branches_are_drawn_from_the_checkpoints_lr_to_the_floor_at_s_plus_d(tmp_path):
    cfg = composed("scheduler=wsd", "scheduler.min_lr_ratio=0.1", BRANCHES)
    preview, optim_config = step_learning_rates(cfg, include=[40, 70])
    figure = plot(preview, "wsd", tmp_path / "wsd.png", branch_learning_rates(cfg, preview.total_steps))
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in figure.axes[0].get_lines()}
    assert list(lines) == ["default", "default, branch 40-60", "default, branch 70-80"]
    # The main run: its scheduler stepped through the 115 steps, at the steps drawn (the branch points among them).
    run = preview_learning_rates(DigitsCNN(), optim_config, 115)["default"]
    assert {40, 70} <= set(preview.steps)
    assert lines["default"] == (preview.steps, [run[step] for step in preview.steps])
    for start, end, shape in ((40, 60, "sqrt"), (70, 80, "linear")):
        branch = {"decay_ratio": None, "decay_start_step": start, "total_steps": end, "decay_shape": shape}
        config = {**optim_config, "scheduler": {**optim_config["scheduler"], **branch}}
        # The branch's scheduler stepped `end` times: the lr of each step, and at [end] the one its last step leaves.
        stepped = preview_learning_rates(DigitsCNN(), config, end + 1)["default"]
        steps, lrs = lines[f"default, branch {start}-{end}"]
        assert steps == list(range(start, end + 1))
        assert lrs == stepped[start:]
        assert lrs[0] == run[start] == 0.1  # the checkpoint's lr
        assert lrs[-2] > lrs[-1] == 0.1 * 0.1  # the floor first at s + D
    assert lines["default, branch 70-80"][1] == [0.1 * (0.1 + 0.9 * (1 - j / 10)) for j in range(11)]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["branches=[{decay_start_step: 40}]"],
            "branches[0] = {'decay_start_step': 40} is not valid. Expected integer decay_start_step and total_steps",
        ),
        (
            ["branches=[{decay_start_step: 40, total_steps: 60}]"],
            "branches draws cooldowns of a wsd schedule stepped every optimizer step (scheduler=wsd, "
            "scheduler.interval=step) of a single optimizer; this run has scheduler = {'name': 'warmup_cosine'",
        ),
        (
            ["scheduler=wsd", "branches=[{decay_start_step: 200, total_steps: 300}]"],
            "branches[0].decay_start_step = 200 is after the run's end (115 optimizer steps)",
        ),
        (
            [
                "scheduler=wsd",
                "branches=[{decay_start_step: 40, total_steps: 60}, {decay_start_step: 70, total_steps: 65}]",
            ],
            "branches[1]: optim_config.scheduler: decay_start_step = 70 is not valid; expected an integer step from "
            "the warmup's end (6) to total_steps (65).",
        ),
    ],
)
def test_a_bad_branch_is_refused_naming_it(overrides, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        branch_learning_rates(composed(*overrides), 115)


def test_the_schedule_app_prints_each_branch_from_its_checkpoints_lr_to_the_floor(tmp_path):
    stdout = run_app(
        "lightning_optim.cli.schedule",
        "scheduler=wsd",
        "scheduler.min_lr_ratio=0.1",
        BRANCHES,
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert (tmp_path / "run/lr_schedule.png").read_bytes().startswith(PNG_MAGIC)
    rows = re.findall(r"│ default\s*│\s*(\d+) │\s*(\S+) │\s*(\d+) │\s*(\S+) │", stdout)
    assert rows == [("40", "1.000000e-01", "60", "1.000000e-02"), ("70", "1.000000e-01", "80", "1.000000e-02")]
