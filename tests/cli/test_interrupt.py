"""``lightning-optim-train`` stopped by SIGTERM or SIGINT keeps its work: a checkpoint at the step it stopped after,
an exit status that is not success, and the command that resumes it, which runs to the end."""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests import tb
from tests.cli.apps import TINY, run_app, run_app_expecting_failure

TRAIN = "lightning_optim.cli.train"
STOP_AFTER = 1
"""The optimizer step after which the run signals itself (TINY runs 3)."""


@pytest.fixture(scope="module", params=[signal.SIGTERM, signal.SIGINT], ids=lambda signum: signum.name)
def interrupted(request, tmp_path_factory):
    signum = request.param
    run_dir = tmp_path_factory.mktemp(signum.name) / "run dir"
    result = run_app_expecting_failure(
        TRAIN,
        *TINY,
        "+callbacks.signal._target_=tests.cli.signal_at_step.SignalAtStep",
        f"+callbacks.signal.step={STOP_AFTER}",
        f"+callbacks.signal.signum={int(signum)}",
        f"hydra.run.dir={run_dir}",
        cwd=run_dir.parent,
    )
    return signum, run_dir, result


def test_a_signal_saves_the_step_and_exits_with_128_plus_its_number(interrupted):
    signum, run_dir, result = interrupted
    assert result.returncode == 128 + signum
    checkpoint = run_dir / "checkpoints" / "interrupted.ckpt"
    assert torch.load(checkpoint, weights_only=True)["global_step"] == STOP_AFTER
    assert not (run_dir / "checkpoints" / "last.ckpt").exists()  # stopped before the epoch's end
    assert f"{signum.name} stopped training after step {STOP_AFTER}; checkpoint {checkpoint}" in result.stdout
    (command,) = re.findall(r"^resume with: (.+)$", result.stdout, re.M)
    assert shlex.split(command)[0] == "lightning-optim-train"
    assert shlex.split(command)[-1] == f"ckpt_path={checkpoint}"


def test_the_printed_command_resumes_the_run_to_its_end(interrupted):
    _, run_dir, result = interrupted
    (command,) = re.findall(r"^resume with: (.+)$", result.stdout, re.M)
    resumed = run_dir.parent / "resumed"
    overrides = shlex.split(command)[1:]
    run_app(TRAIN, *overrides, f"hydra.run.dir={resumed}", cwd=run_dir.parent)
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    logged = dict(tb.scalars(resumed / "tensorboard")["lr-SGD/default"])
    # The uninterrupted run's lr at steps 1 and 2 (test_train.py): the schedule continues where it stopped.
    assert logged == pytest.approx({1: 0.075, 2: 0.025})


def sigint_during(phase: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    """The app's run (and its directory) with a SIGINT sent during ``phase`` of ``SignalAtStep``."""
    run_dir = tmp_path / "run"
    result = run_app_expecting_failure(
        TRAIN,
        *TINY,
        "+callbacks.signal._target_=tests.cli.signal_at_step.SignalAtStep",
        "+callbacks.signal.step=0",
        f"+callbacks.signal.signum={int(signal.SIGINT)}",
        f"+callbacks.signal.during={phase}",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    return result, run_dir


def test_sigint_during_the_sanity_check_exits_130_with_a_checkpoint_before_the_first_step(tmp_path):
    result, run_dir = sigint_during("sanity_check", tmp_path)
    assert result.returncode == 130, result.stderr[-2000:]
    checkpoint = run_dir / "checkpoints" / "interrupted.ckpt"
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 0
    assert f"SIGINT stopped training after step 0; checkpoint {checkpoint}" in result.stdout
    (command,) = re.findall(r"^resume with: (.+)$", result.stdout, re.M)
    assert shlex.split(command)[-1] == f"ckpt_path={checkpoint}"


def test_sigint_during_the_final_validation_exits_130(tmp_path):
    result, run_dir = sigint_during("final_validation", tmp_path)
    assert result.returncode == 130, result.stderr[-2000:]
    assert "SIGINT stopped the final validation; training had finished (3 steps)" in result.stdout
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    assert not (run_dir / "checkpoints" / "interrupted.ckpt").exists()


def test_a_full_disk_while_saving_the_interrupted_checkpoint_names_the_last_checkpoint_and_exits_143(tmp_path):
    """Epoch 0 (steps 1-3) ends with last.ckpt; SIGTERM after step 4 finds the disk full for interrupted.ckpt."""
    run_dir = tmp_path / "run"
    result = run_app_expecting_failure(
        TRAIN,
        *TINY,
        "trainer.max_epochs=2",
        "+callbacks.signal._target_=tests.cli.signal_at_step.SignalAtStep",
        "+callbacks.signal.step=4",
        f"+callbacks.signal.signum={int(signal.SIGTERM)}",
        "+callbacks.full_disk._target_=tests.cli.signal_at_step.FullDisk",
        "+callbacks.full_disk.name=interrupted.ckpt",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 143, result.stderr[-2000:]
    checkpoints = run_dir / "checkpoints"
    interrupted, last = checkpoints / "interrupted.ckpt", checkpoints / "last.ckpt"
    assert sorted(path.name for path in checkpoints.iterdir()) == ["epoch=0-step=3.ckpt", "last.ckpt"]
    assert f"SIGTERM stopped training after step 4, but {interrupted} was not saved" in result.stdout
    assert "No space left on device" in result.stdout
    assert f"The newest checkpoint saved is {last} (step 3)" in result.stdout
    (command,) = re.findall(r"^resume with: (.+)$", result.stdout, re.M)
    assert shlex.split(command)[-1] == f"ckpt_path={last}"
    resumed = tmp_path / "resumed"
    overrides = [item for item in shlex.split(command)[1:] if "callbacks.signal" not in item]
    run_app(TRAIN, *overrides, f"hydra.run.dir={resumed}", cwd=tmp_path)
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6


DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
DDP_EXIT_SECONDS = 30
"""How long two CPU ranks may take from the signal to the exit of rank zero (plain Lightning: about 9 s)."""


@pytest.fixture(scope="module", params=[0, None], ids=["rank 0", "both ranks"])
def ddp_interrupted(request, tmp_path_factory):
    """A DDP run of 2 CPU processes sent SIGTERM after step 1, by rank 0 alone or by both ranks."""
    tmp_path = tmp_path_factory.mktemp("ddp")
    run_dir, stamp = tmp_path / "run", tmp_path / "signalled"
    signalled_by = [] if request.param is None else [f"+callbacks.signal.rank={request.param}"]
    result = run_app_expecting_failure(
        TRAIN,
        *TINY,
        *DDP,
        "+callbacks.signal._target_=tests.cli.signal_at_step.SignalAtStep",
        f"+callbacks.signal.step={STOP_AFTER}",
        f"+callbacks.signal.signum={int(signal.SIGTERM)}",
        f"+callbacks.signal.stamp={stamp}",
        *signalled_by,
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        timeout=240,
    )
    exited = time.time()
    return run_dir, result, exited - min(float(line) for line in stamp.read_text().split())


@pytest.mark.slow
def test_sigterm_under_ddp_saves_the_step_and_exits_143_in_seconds(ddp_interrupted):
    run_dir, result, seconds = ddp_interrupted
    assert result.returncode == 143, result.stderr[-3000:]
    assert seconds < DDP_EXIT_SECONDS
    checkpoint = run_dir / "checkpoints" / "interrupted.ckpt"
    assert torch.load(checkpoint, weights_only=True)["global_step"] == STOP_AFTER
    assert f"SIGTERM stopped training after step {STOP_AFTER}; checkpoint {checkpoint}" in result.stdout


@pytest.mark.slow
def test_the_command_printed_after_sigterm_under_ddp_resumes_the_run_to_its_end(ddp_interrupted):
    run_dir, result, _ = ddp_interrupted
    (command,) = re.findall(r"^resume with: (.+)$", result.stdout, re.M)
    assert all(override in shlex.split(command) for override in DDP)
    resumed = run_dir.parent / "resumed"
    run_app(TRAIN, *shlex.split(command)[1:], f"hydra.run.dir={resumed}", cwd=run_dir.parent)
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    logged = dict(tb.scalars(resumed / "tensorboard")["lr-SGD/default"])
    assert logged == pytest.approx({1: 0.075, 2: 0.025})
