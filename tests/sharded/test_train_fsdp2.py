"""The train app with ``trainer=fsdp2``: two CPU processes under ``ModelParallelStrategy``, the demo CNN sharded by
its ``configure_model``, log the gradient norm that ``trainer=ddp`` logs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.cli.apps import run_app
from tests.tb import scalars

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "+trainer.max_steps=2",
    "+trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1",
    "+trainer.enable_progress_bar=false",
    "+trainer.enable_model_summary=false",
    "model.width=4",
    "model.hidden=8",
]


def test_fsdp2_logs_the_gradient_norm_ddp_logs_at_the_first_step(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    norms = {}
    for trainer in ("fsdp2", "ddp"):
        run_dir = tmp_path / trainer
        run_app("lightning_optim.cli.train", f"trainer={trainer}", *TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path)
        norms[trainer] = [value for _, value in scalars(run_dir / "tensorboard")["grad_norm/total"]]
    assert len(norms["fsdp2"]) == 2
    assert norms["fsdp2"][0] == pytest.approx(norms["ddp"][0], rel=1e-5)
