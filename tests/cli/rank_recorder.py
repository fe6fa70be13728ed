"""A callback the DDP tests add to the train app: each rank writes what it measured to its own JSON file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L


class RankRecorder(L.Callback):
    """Write, per rank, the pre-clip gradient norm of every optimizer step and the run's length in steps."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.norms: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.norms.append(float(pl_module.clip_state.last.total))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        record = {
            "norms": self.norms,
            "global_step": trainer.global_step,
            "estimated_stepping_batches": trainer.estimated_stepping_batches,
            "world_size": trainer.world_size,
            "final_lr": trainer.optimizers[0].param_groups[0]["lr"],
        }
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
