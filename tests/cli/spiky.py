"""A quadratic model whose loss spikes on chosen data, for the rollback tests; it records the batches it trains on."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lightning_optim.demos import QuadraticMLP


class SpikyQuadratic(QuadraticMLP):
    """:class:`QuadraticMLP` whose training loss is multiplied by ``factor`` on a batch holding training sample
    ``spike_sample``, or on every step from ``spike_step`` on; each training batch's step, sample indices (positions
    in the training set) and logged ``train/loss`` (before the factor) are appended to ``seen.rank<global rank>.jsonl``
    in the working directory, a line per batch."""

    def __init__(
        self, spike_sample: int | None = None, spike_step: int | None = None, factor: float = 1e4, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.spike_sample = spike_sample
        self.spike_step = spike_step
        self.factor = factor

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x = batch[0].flatten()
        train_x = self.trainer.datamodule.train_set[:][0].flatten()
        samples = [int(torch.nonzero(train_x == value)[0]) for value in x]
        loss = super().training_step(batch, batch_idx)
        with Path(f"seen.rank{self.global_rank}.jsonl").open("a") as seen:
            record = {"step": self.trainer.global_step, "samples": samples, "loss": float(loss)}
            seen.write(json.dumps(record) + "\n")
        spikes = (self.spike_sample is not None and self.spike_sample in samples) or (
            self.spike_step is not None and self.trainer.global_step >= self.spike_step
        )
        return loss * self.factor if spikes else loss
