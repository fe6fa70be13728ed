"""The train app under DDP with two CPU (gloo) processes, alone and inside a Hydra multirun."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from tests.cli.apps import run_app
from tests.tb import scalars

REPO = Path(__file__).resolve().parents[2]
DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_epochs=1"]
SMALL = ["+trainer.limit_val_batches=2", "+trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false"]


def test_two_ranks_see_the_same_synchronised_gradient_norms_and_log_once(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    records = tmp_path / "ranks"
    run_dir = tmp_path / "run"
    run_app(
        "lightning_optim.cli.train",
        *DDP,
        *SMALL,
        "trainer.log_every_n_steps=1",
        "+callbacks.rank_recorder._target_=tests.cli.rank_recorder.RankRecorder",
        f"+callbacks.rank_recorder.out={records}",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    rank0, rank1 = (json.loads((records / f"rank{rank}.json").read_text()) for rank in (0, 1))
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["norms"] == rank1["norms"]  # the gradients DDP synchronised, bit for bit
    # 1437 training images of the digits split, 64 per batch: 1437 / 2 ranks = 719 per rank -> 12 steps, not 23.
    assert rank0["global_step"] == rank0["estimated_stepping_batches"] == 12
    assert rank0["final_lr"] == rank1["final_lr"]
    logged = scalars(run_dir / "tensorboard")
    assert [step for step, _ in logged["grad_norm/total"]] == list(range(12))  # once per step, from rank zero
    assert [value for _, value in logged["grad_norm/total"]] == pytest.approx(rank0["norms"], rel=1e-6)


def test_multirun_with_ddp_runs_one_job_per_sweep_point(tmp_path):
    sweep_dir = tmp_path / "sweep"
    stdout = run_app(
        "lightning_optim.cli.train",
        "-m",
        "optimizer=sgd,adamw",
        *DDP,
        *SMALL,
        "+trainer.limit_train_batches=4",
        "trainer.log_every_n_steps=1",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    assert len(re.findall(r"^val/acc = [0-9.]+$", stdout, re.M)) == 2
    assert sorted(path.name for path in sweep_dir.iterdir() if path.is_dir()) == ["0", "1"]
    assert not (tmp_path / "multirun").exists() and not (tmp_path / "outputs").exists()
    for job, optimizer in (("0", "SGD"), ("1", "AdamW")):
        logged = scalars(sweep_dir / job / "tensorboard")
        assert f"lr-{optimizer}/default" in logged
        assert (sweep_dir / job / "train_ddp_process_1.log").exists()  # rank 1 ran this job, in its directory


def test_resuming_a_ddp_run_continues_the_lr_sequence_and_the_monitor_counters(tmp_path):
    """Resume at the end of epoch 0 (4 steps per rank) and compare steps 4..7 with an uninterrupted run.

    With a log every 3 steps, the clip-fraction window of the log at step 5 spans the resume (steps 3, 4, 5).
    """
    settings = [
        *DDP,
        *SMALL,
        "trainer.max_epochs=2",
        "+trainer.limit_train_batches=4",
        "trainer.log_every_n_steps=3",
        "trainer.gradient_clip_val=0.5",
        "+callbacks.model_checkpoint.save_top_k=-1",
    ]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_app("lightning_optim.cli.train", *settings, f"hydra.run.dir={straight}", cwd=tmp_path)
    (checkpoint,) = (straight / "checkpoints").glob("epoch=0-step=4.ckpt")
    run_app(
        "lightning_optim.cli.train", *settings, f"ckpt_path='{checkpoint}'", f"hydra.run.dir={resumed}", cwd=tmp_path
    )
    before, after = scalars(straight / "tensorboard"), scalars(resumed / "tensorboard")
    for key in ("lr-SGD/default", "grad_norm/total", "grad_norm/clip_fraction", "grad_norm/nonfinite"):
        assert [point for point in before[key] if point[0] >= 4] == after[key], key
    assert [step for step, _ in after["grad_norm/clip_fraction"]] == [5]
