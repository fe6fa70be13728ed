"""One tiny training run, either sharded (``python -m tests.sharded.runs CASE OUT``, 2 CPU processes under
``ModelParallelStrategy``) or in one process with plain modules on the same samples (:func:`run`): what each logged,
the parameters after the run and the ``all_reduce`` calls per step.

Rank ``d`` of the data-parallel group takes items ``d, d + D, ...`` in batches of :data:`BATCH`; the one-process run
takes both ranks' batches of a step together and runs them as separate forwards (``chunks``), so BatchNorm
normalises each rank's batch alone, and only the first chunk moves the running statistics (rank 0's, which the
monitor logs).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from lightning_optim import OptimMixin
from lightning_optim.callbacks import BatchNormMonitor, GradNormMonitor, LRMonitor
from lightning_optim.internals import should_log
from lightning_optim.stats.distributed import full_tensor
from tests.models import MemoryLogger

BATCH = 4
"""Items per rank and step."""
STEPS = 6
LOG_EVERY = 2

CASES: dict[str, dict[str, Any]] = {
    "fsdp2_norm": {"parallel": "fsdp2", "clip": 0.95, "clipping": None, "fused": False},
    "fsdp2_value": {"parallel": "fsdp2", "clip": 0.1, "algorithm": "value", "clipping": None, "fused": False},
    "fsdp2_autoclip_skip": {
        "parallel": "fsdp2",
        "clip": None,
        "clipping": {"name": "autoclip", "percentile": 50, "history": 4},
        "fused": True,
        "nan_at": 2,
    },
    "tp": {"parallel": "tp", "clip": 0.95, "clipping": None, "fused": False},
}
"""Per case: how the model is split (``fsdp2``: data parallel over 2 ranks; ``tp``: tensor parallel over 2), the
Trainer's ``gradient_clip_val`` and algorithm, ``optim_config.clipping``, whether AdamW is fused (folded clipping)
and the step at which the last rank's batch is NaN (``GradNormMonitor(nonfinite="skip")``)."""


class Net(OptimMixin, L.LightningModule):
    """An MLP (with BatchNorm unless tensor parallel) whose ``configure_model`` shards it under
    ``ModelParallelStrategy``: ``fully_shard`` per layer and on the container, or Colwise/Rowwise parallel."""

    def __init__(self, case: str, chunks: int = 1) -> None:
        super().__init__()
        spec = CASES[case]
        self.tensor_parallel = spec["parallel"] == "tp"
        self.chunks = chunks
        torch.manual_seed(0)
        norm: list[nn.Module] = [] if self.tensor_parallel else [nn.BatchNorm1d(8)]
        # No bias before BatchNorm: its gradient is rounding noise, which Adam would blow up to lr-sized steps.
        self.net = nn.Sequential(nn.Linear(6, 8, bias=self.tensor_parallel), *norm, nn.ReLU(), nn.Linear(8, 3))
        self.nan_at = spec.get("nan_at")
        self.optim_config = {
            "optimizer": {"name": "adamw", "lr": 0.05, "weight_decay": 0.01, "fused": spec["fused"]},
            "param_groups": [{"name": "no_decay", "params": r"bias$", "weight_decay": 0.0}],
            "scheduler": {"name": "warmup_cosine", "warmup_steps": 2, "total_steps": STEPS},
            "clipping": spec["clipping"],
        }

    def configure_model(self) -> None:
        if not isinstance(self.trainer.strategy, ModelParallelStrategy):
            return
        from torch.distributed.fsdp import fully_shard
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

        if self.tensor_parallel:
            mesh = self.device_mesh["tensor_parallel"]
            parallelize_module(self.net, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
            return
        mesh = self.device_mesh["data_parallel"]
        for layer in self.net:
            if any(True for _ in layer.parameters()):
                fully_shard(layer, mesh=mesh)
        fully_shard(self.net, mesh=mesh)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        norms = [module for module in self.net if isinstance(module, nn.BatchNorm1d)]
        momenta = [norm.momentum for norm in norms]
        losses = []
        chunks = zip(inputs.chunk(self.chunks), targets.chunk(self.chunks), strict=True)
        for index, (chunk, target) in enumerate(chunks):
            last_rank = index == self.chunks - 1 if self.chunks > 1 else self.global_rank == 1
            if self.global_step == self.nan_at and last_rank:
                chunk = chunk * torch.nan
            for norm, momentum in zip(norms, momenta, strict=True):
                norm.momentum = momentum if index == 0 else 0.0
            losses.append(F.cross_entropy(self.net(chunk), target))
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        return torch.stack(losses).mean()


class RankItems(Sampler[int]):
    """Items ``rank, rank + ranks, ...`` of ``length``."""

    def __init__(self, length: int, rank: int, ranks: int) -> None:
        self.items = list(range(rank, length, ranks))

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


class StepBatches(Sampler[list[int]]):
    """One-process batches: each step's batches of ``ranks`` ranks, rank 0's first."""

    def __init__(self, length: int, ranks: int) -> None:
        per_rank = [list(range(rank, length, ranks)) for rank in range(ranks)]
        steps = len(per_rank[0]) // BATCH
        self.batches = [
            [item for items in per_rank for item in items[step * BATCH : (step + 1) * BATCH]] for step in range(steps)
        ]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def dataset(items: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(items, 6, generator=generator) * 3
    return TensorDataset(inputs, torch.randint(0, 3, (items,), generator=generator))


class CountAllReduce(L.Callback):
    """Counts ``torch.distributed.all_reduce`` calls per training batch, keyed by whether it was a logging step."""

    def __init__(self) -> None:
        self.calls = 0
        self.per_step: list[tuple[bool, int]] = []
        original = dist.all_reduce

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return original(*args, **kwargs)

        dist.all_reduce = counted

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self.calls = 0
        self._logging = should_log(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.per_step.append((self._logging, self.calls))


def trainer_options(case: str) -> dict[str, Any]:
    spec = CASES[case]
    return {
        "max_steps": STEPS,
        "log_every_n_steps": LOG_EVERY,
        "gradient_clip_val": spec["clip"],
        "gradient_clip_algorithm": spec.get("algorithm", "norm"),
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "use_distributed_sampler": False,
    }


class RecordClipping(L.Callback):
    """Each step's total norm and threshold as this rank's clipping saw them (``clip_state.last``)."""

    def __init__(self) -> None:
        self.steps: list[list[float]] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        last = pl_module.clip_state.last
        if last is not None and last.total is not None:
            self.steps.append([float(last.total), float(last.threshold)])


def callbacks(case: str) -> list[L.Callback]:
    grouped = CASES[case]["clipping"] is not None
    return [
        GradNormMonitor(
            per_layer_depth=None if grouped else 2,
            per_param_group=grouped,
            nonfinite="skip" if "nan_at" in CASES[case] else "warn",
        ),
        LRMonitor(),
        BatchNormMonitor(min_batch_size=2),
        RecordClipping(),
    ]


def result(model: Net, trainer: L.Trainer, counter: CountAllReduce | None = None) -> dict[str, Any]:
    params = {name: full_tensor(p.detach()).tolist() for name, p in model.net.named_parameters()}
    logger = trainer.logger
    assert isinstance(logger, MemoryLogger)
    return {
        "logged": logger.logged,
        "params": params,
        "all_reduce": counter.per_step if counter is not None else [],
        "clipping": next(c for c in trainer.callbacks if isinstance(c, RecordClipping)).steps,
    }


def run(case: str) -> dict[str, Any]:
    """The one-process reference: plain modules, both ranks' batches of a step in one batch."""
    data = dataset(2 * BATCH * STEPS)
    ranks = 1 if CASES[case]["parallel"] == "tp" else 2
    loader = DataLoader(data, batch_sampler=StepBatches(len(data), ranks))
    model = Net(case, chunks=ranks)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=MemoryLogger(), callbacks=callbacks(case), **trainer_options(case)
    )
    trainer.fit(model, loader)
    return result(model, trainer)


def run_sharded(case: str) -> dict[str, Any]:
    """The sharded run, in this process and the one Lightning's launcher starts."""
    tensor_parallel = CASES[case]["parallel"] == "tp"
    strategy = ModelParallelStrategy(
        data_parallel_size=1 if tensor_parallel else 2, tensor_parallel_size=2 if tensor_parallel else 1
    )
    model, counter = Net(case), CountAllReduce()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        logger=MemoryLogger(),
        callbacks=[*callbacks(case), counter],
        **trainer_options(case),
    )
    data = dataset(2 * BATCH * STEPS)
    ranks = 1 if tensor_parallel else 2
    rank = 0 if tensor_parallel else trainer.global_rank
    loader = DataLoader(data, batch_size=BATCH, sampler=RankItems(len(data), rank, ranks))
    trainer.fit(model, loader)
    return result(model, trainer, counter)


if __name__ == "__main__":
    outcome = run_sharded(sys.argv[1])
    Path(f"{sys.argv[2]}.rank{dist.get_rank()}.json").write_text(json.dumps(outcome))
