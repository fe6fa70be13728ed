"""``lightning-optim-train`` stopped by SIGTERM or SIGINT keeps its work: a checkpoint at the step it stopped after,
an exit status that is not success, and the command that resumes it, which runs to the end."""

from __future__ import annotations

import re
import shlex
import signal

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
