"""``lightning-optim-train``: a tiny run reports its metric and TensorBoard command, logs what the console showed and
the lr it used, and keeps its run directory to itself."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from lightning_optim.config.preview import preview_learning_rates
from lightning_optim.demos import DigitsCNN, DigitsDataModule
from tests import tb
from tests.cli.apps import REPO, TINY, run_app, run_app_expecting_failure

TRAIN = "lightning_optim.cli.train"


def scalars(logdir: Path) -> dict[str, dict[int, float]]:
    return {tag: dict(points) for tag, points in tb.scalars(logdir).items()}


def file_contents(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes() for path in directory.rglob("*") if path.is_file()}


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("train") / "run dir"  # a space: the printed command must quote it
    stdout = run_app(TRAIN, *TINY, f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    return run_dir, stdout


def test_prints_the_metric_and_a_quoted_tensorboard_command(single_run):
    run_dir, stdout = single_run
    accuracy = float(re.search(r"^val/acc = ([0-9.]+)$", stdout, re.M).group(1))
    logged = scalars(run_dir / "tensorboard")
    assert accuracy == pytest.approx(logged["val/acc"][max(logged["val/acc"])], abs=5e-5)
    (command,) = re.findall(r"^tensorboard --logdir .+$", stdout, re.M)
    assert shlex.split(command) == ["tensorboard", "--logdir", str((run_dir / "tensorboard").resolve())]


def test_train_log_holds_what_the_console_showed(single_run):
    run_dir, stdout = single_run
    records = re.findall(r"^\[[^]]+\]\[([^]]+)\]\[[A-Z]+\] - (.*)$", (run_dir / "train.log").read_text(), re.M)
    messages = [message for _, message in records]
    console = iter(stdout.splitlines())
    assert all(message in console for message in messages)  # every logged line, in the console's order
    assert {"lightning.fabric.utilities.seed", "lightning.pytorch.utilities.rank_zero"} <= {name for name, _ in records}
    assert "GPU available: False, used: False" in messages
    assert "BatchNorm health" in (run_dir / "train.log").read_text()  # BatchNormMonitor's table, a multi-line record
    assert messages[-2:] == [line for line in stdout.splitlines() if line.startswith(("val/acc = ", "tensorboard "))]


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


def test_a_fresh_run_in_a_used_run_dir_is_refused_and_leaves_the_first_runs_files(single_run):
    run_dir, _ = single_run
    before = file_contents(run_dir)
    result = run_app_expecting_failure(TRAIN, *TINY, f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    assert (
        f"FileExistsError: The run directory {run_dir} already holds an earlier run's outputs (checkpoints, "
        "tensorboard); a fresh run there would mix its checkpoints and curves with them. Start it in a new "
        "directory (leave hydra.run.dir at its default, or name an empty one), or resume that run with "
        f"ckpt_path=<{run_dir}/checkpoints/last.ckpt>."
    ) in result.stderr
    after = file_contents(run_dir)
    log_before, log_after = before.pop("train.log"), after.pop("train.log")
    before.pop(".run.lock"), after.pop(".run.lock")  # the claim: the refused run held the directory to check it
    assert after == before
    assert log_after.startswith(log_before)  # Hydra appends to the job's log before the app starts


def test_runs_started_together_get_their_own_run_dirs(tmp_path):
    # An unknown Trainer argument stops each run right after Hydra made its directory.
    command = [sys.executable, "-m", TRAIN, "+trainer.no_such_argument=1"]
    runs = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in "ab"]
    for run in runs:
        assert run.wait(timeout=300) == 1
    run_dirs = [path.name for path in (tmp_path / "outputs").glob("*/*")]
    assert len(run_dirs) == 2
    # <hour>-<minute>-<second>.<microsecond>-<pid>
    pids = {re.fullmatch(r"\d\d-\d\d-\d\d\.\d{6}-(\d+)", name).group(1) for name in run_dirs}
    assert pids == {str(run.pid) for run in runs}


class DigitsOnceReleased(DigitsDataModule):
    """The digits data, built only once the file ``release`` exists: a run held after its run-directory check and
    before its first output, the moment in which a second run started in the same directory used to pass the check."""

    def __init__(self, release: str, **kwargs: Any) -> None:
        while not Path(release).exists():
            time.sleep(0.1)
        super().__init__(**kwargs)


def test_a_second_run_started_in_a_run_dir_whose_run_has_not_written_yet_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}

    def start(*overrides: str) -> subprocess.Popen[str]:
        command = [sys.executable, "-m", TRAIN, *TINY, f"hydra.run.dir={run_dir}", *overrides]
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        return subprocess.Popen(command, cwd=tmp_path, text=True, env=environment, **pipes)

    release = tmp_path / "release"
    first = start("data._target_=tests.cli.test_train.DigitsOnceReleased", f"+data.release={release}")
    deadline = time.monotonic() + 120
    while "Seed set to" not in ((run_dir / "train.log").read_text() if (run_dir / "train.log").exists() else ""):
        assert time.monotonic() < deadline and first.poll() is None, "the first run never got past its checks"
        time.sleep(0.2)
    second = start()
    _, refusal = second.communicate(timeout=300)
    release.touch()
    first.communicate(timeout=300)
    assert (first.returncode, second.returncode) == (0, 1)
    assert (
        f"FileExistsError: The run directory {run_dir} is in use by another run (process {first.pid}); two runs "
        "there would write into each other's checkpoints and curves."
    ) in refusal
    assert sorted(path.name for path in (run_dir / "checkpoints").iterdir()) == ["epoch=0-step=3.ckpt", "last.ckpt"]
    writers = {path.name.split(".")[-2] for path in (run_dir / "tensorboard").rglob("events.out.tfevents.*")}
    assert writers == {str(first.pid)}


def test_an_optimizer_target_given_on_the_command_line_trains(tmp_path):
    run_dir = tmp_path / "run"
    run_app(
        TRAIN,
        *TINY,
        "++optimizer._target_=torch.optim.SGD",
        "~optimizer.name",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    logged = scalars(run_dir / "tensorboard")
    assert {key for key in logged if key.startswith("lr-")} == {
        "lr-SGD/default",
        "lr-SGD/default-momentum",
        "lr-SGD/default-weight_decay",
    }
    assert [logged["lr-SGD/default"][step] for step in range(3)] == pytest.approx([0.1, 0.075, 0.025])


def test_a_target_whose_module_runs_code_at_import_is_refused_by_the_app_before_it_is_imported(tmp_path):
    run_dir = tmp_path / "run"
    result = run_app_expecting_failure(
        TRAIN,
        *TINY,
        "++optimizer._target_=venv.__main__.EnvBuilder",
        "~optimizer.name",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert (
        "optim_config.optimizer._target_ = 'venv.__main__.EnvBuilder' is not valid. Expected a dotted path to a "
        "torch.optim.optimizer.Optimizer subclass, e.g. 'torch.optim.AdamW'; module 'venv.__main__' was not imported: "
        "'__main__' is never imported from a config (importing it runs code), whatever the allow-list holds."
    ) in result.stderr
    # Imported, venv's __main__ builds a virtualenv in each of its command-line arguments: the app's overrides.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run"]


def test_a_users_optimizer_trains_once_its_module_is_allowed_on_the_command_line(tmp_path):
    target = ["++optimizer._target_=tests.models.OwnSGD", "~optimizer.name"]
    refused = run_app_expecting_failure(TRAIN, *TINY, *target, f"hydra.run.dir={tmp_path / 'a'}", cwd=tmp_path)
    assert "allowed_target_modules=[tests.models] on the command line" in refused.stderr
    run_dir = tmp_path / "b"
    run_app(TRAIN, *TINY, *target, "allowed_target_modules=[tests.models]", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert "lr-OwnSGD/default" in scalars(run_dir / "tensorboard")


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch 2.9")
def test_muon_trains_the_default_model_and_prints_its_split(tmp_path):
    run_dir = tmp_path / "run"
    stdout = run_app(TRAIN, *TINY, "optimizer=muon", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    split = "Muon takes 3 tensors (37,520 parameters), AdamW takes 7 tensors (810 parameters)"
    assert stdout.splitlines().count(split) == 1
    logged = scalars(run_dir / "tensorboard")
    assert {key for key in logged if key.startswith("lr-") and "-m" not in key[3:]} >= {
        "lr-MuonWithAux/muon",
        "lr-MuonWithAux/aux",
    }
    # warmup_cosine over the 3 steps, each side from its own base lr (Muon's 0.02, AdamW's default 1e-3)
    assert [logged["lr-MuonWithAux/muon"][step] for step in range(3)] == pytest.approx([0.02, 0.015, 0.005])
    assert [logged["lr-MuonWithAux/aux"][step] for step in range(3)] == pytest.approx([1e-3, 7.5e-4, 2.5e-4])


def test_multirun_sweeps_optimizers(tmp_path):
    sweep_dir = tmp_path / "sweep"
    stdout = run_app(TRAIN, "-m", "optimizer=sgd,adamw", *TINY, f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert len(re.findall(r"^val/acc = [0-9.]+$", stdout, re.M)) == 2
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
    run_app(TRAIN, *overrides, cwd=tmp_path)
    logged = scalars(run_dir / "tensorboard")
    assert [logged["lr-SGD/default"][step] for step in range(3)] == pytest.approx([0.1, 0.075, 0.025])


def test_cooldown_branches_from_one_checkpoint_reach_the_floor_in_their_own_run_dirs(tmp_path):
    run_dir, sweep_dir = tmp_path / "run", tmp_path / "branches"
    wsd = ["scheduler=wsd", "scheduler.warmup_ratio=0.0", "optimizer.lr=0.1"]
    run_app(TRAIN, *TINY, *wsd, "scheduler.total_steps=100", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    branches = [
        "scheduler.decay_start_step=3",
        "scheduler.total_steps=5,6",
        "+trainer.max_steps=${scheduler.total_steps}",
    ]
    stdout = run_app(
        TRAIN,
        "-m",
        *TINY,
        *wsd,
        *branches,
        "trainer.max_epochs=3",
        f"ckpt_path={checkpoint}",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    assert stdout.count("Resuming at step 3 with optim_config.resume: optimizer_state=keep, schedule=keep") == 2
    for job, decay_steps in (("0", 2), ("1", 3)):
        saved = torch.load(sweep_dir / job / "checkpoints" / "last.ckpt", weights_only=True)
        assert saved["global_step"] == 3 + decay_steps
        assert saved["lr_schedulers"][0]["_last_lr"] == [0.0]  # the floor, after exactly D steps
        lrs = scalars(sweep_dir / job)["lr-SGD/default"]  # float32 in the event files
        assert [lr for _, lr in sorted(lrs.items())] == pytest.approx(
            [0.1 * (1 - (j / decay_steps) ** 0.5) for j in range(decay_steps)], rel=1e-6
        )
