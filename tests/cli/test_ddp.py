"""The train app under DDP with two CPU (gloo) processes, alone and inside a Hydra multirun."""

from __future__ import annotations

import json
import os
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
    assert stdout.count("validation accuracy (val/acc):") == 2
    assert sorted(path.name for path in sweep_dir.iterdir() if path.is_dir()) == ["0", "1"]
    assert not (tmp_path / "multirun").exists() and not (tmp_path / "outputs").exists()
    for job, optimizer in (("0", "SGD"), ("1", "AdamW")):
        logged = scalars(sweep_dir / job / "tensorboard")
        assert f"lr-{optimizer}/default" in logged
        assert (sweep_dir / job / "train_ddp_process_1.log").exists()  # rank 1 ran this job, in its directory
