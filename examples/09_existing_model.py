"""Adding the mixin to a model you already have: Lightning's own demo Transformer gains config-built AdamW with
warmup + cosine, parameter groups and the monitors, in a few lines.

``lightning.pytorch.demos.LightningTransformer`` (not written here) comes with its own ``configure_optimizers``
(plain SGD) and trains on WikiText-2, which it downloads. ``Tuned`` below puts ``OptimMixin`` first, so the mixin
takes over ``configure_optimizers``; its only other change is ``prepare_data``, because the data here is generated
(a next-token task on counting sequences) instead of downloaded. The Trainer gets clipping and the monitors.

Run::

    python examples/09_existing_model.py --out docs/images

Writes ``example_09_existing_model.png`` (lr per parameter group and gradient norm, from the TensorBoard logs) and
prints the logged keys and the loss before and after training.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from _common import QUIET_TRAINER, parse_args, quiet, save, tb_scalars
from lightning.pytorch.demos import LightningTransformer
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure
from torch.utils.data import DataLoader, TensorDataset

from lightning_optim import OptimMixin
from lightning_optim.callbacks import GradNormMonitor, LRMonitor, TensorBoardDashboard

VOCAB, LENGTH = 16, 12


class Tuned(OptimMixin, LightningTransformer):
    """Lightning's demo Transformer with its optimizer and schedule from ``optim_config``."""

    def __init__(self, optim_config: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.optim_config = optim_config

    def prepare_data(self) -> None:
        """Nothing to download: the data is generated."""


OPTIM_CONFIG = {
    "optimizer": {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.98], "weight_decay": 0.01},
    "param_groups": [{"name": "no_decay", "params": r"(bias$|norm)", "weight_decay": 0.0}],
    "scheduler": {"name": "warmup_cosine", "warmup_ratio": 0.1, "total_steps": None},
}


def counting_sequences(num: int, seed: int) -> TensorDataset:
    """Sequences start, start + step, ... (mod VOCAB); the target is each sequence shifted by one token."""
    generator = torch.Generator().manual_seed(seed)
    start = torch.randint(0, VOCAB, (num, 1), generator=generator)
    step = torch.randint(1, 4, (num, 1), generator=generator)
    tokens = (start + step * torch.arange(LENGTH + 1)) % VOCAB
    return TensorDataset(tokens[:, :-1], tokens[:, 1:])


def mean_loss(model: LightningTransformer, data: TensorDataset) -> float:
    model.eval()
    with torch.no_grad():
        inputs, targets = data.tensors
        loss = torch.nn.functional.nll_loss(model(inputs, targets), targets.reshape(-1))
    model.train()
    return float(loss)


def plot(logged: dict[str, list[tuple[int, float]]], out: Path) -> Path:
    figure = Figure(figsize=(13, 4.5))
    lr_ax, norm_ax = figure.subplots(1, 2)
    for key in sorted(k for k in logged if k.startswith("lr-AdamW/") and k.count("-") == 1):
        steps, values = np.array(logged[key]).T
        lr_ax.plot(steps, values, label=key)
    lr_ax.set(xlabel="optimizer step", ylabel="lr", title="LRMonitor: lr per parameter group")
    for key, style in (("grad_norm/total", "-"), ("grad_norm/clipped", "-"), ("grad_norm/threshold", "--")):
        steps, values = np.array(logged[key]).T
        norm_ax.plot(steps, values, style, label=key)
    norm_ax.set(xlabel="optimizer step", ylabel="gradient norm", title="GradNormMonitor: before / after clipping")
    for ax in (lr_ax, norm_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save(figure, out, "example_09_existing_model.png")


def main(argv: Sequence[str] | None = None) -> dict[str, list[tuple[int, float]]]:
    args = parse_args(__doc__, argv)
    quiet()
    L.seed_everything(0, verbose=False)
    train_set, val_set = counting_sequences(512, seed=0), counting_sequences(128, seed=1)
    model = Tuned(OPTIM_CONFIG, vocab_size=VOCAB)
    before = mean_loss(model, val_set)
    shutil.rmtree(args.runs / "09_existing_model", ignore_errors=True)
    logger = TensorBoardLogger(args.runs, name="09_existing_model", default_hp_metric=False)
    trainer = L.Trainer(
        max_steps=16 if args.quick else 120,
        gradient_clip_val=1.0,
        log_every_n_steps=1,
        logger=logger,
        callbacks=[LRMonitor(log_weight_decay=True), GradNormMonitor(), TensorBoardDashboard()],
        enable_checkpointing=False,
        **QUIET_TRAINER,
    )
    trainer.fit(model, DataLoader(train_set, batch_size=32, shuffle=True))
    after = mean_loss(model, val_set)
    logged = tb_scalars(logger.log_dir)
    print(f"logged keys: {', '.join(sorted(logged))}")
    print(
        f"validation nll before = {before:.4f}, after {trainer.global_step} steps = {after:.4f}; "
        f"groups: {[group['name'] for group in trainer.optimizers[0].param_groups]}"
    )
    print(f"wrote {plot(logged, args.out)}")
    return logged


if __name__ == "__main__":
    main()
