"""One tiny training run, either on several processes (``python -m tests.sharded.runs CASE[,CASE...] OUT``: 2 or 4
CPU processes under ``ModelParallelStrategy``, or 2 under ``DDPStrategy``, run each case in turn and write
``OUT/CASE.rank<r>.json``) or in one process with plain modules on the same samples (:func:`run`): what each logged,
the parameters after the run, the ``all_reduce`` calls per step, the adaptive clipping's statistics, the optimizer
steps taken and the BatchNorm running statistics each step's forward started from.

Rank ``d`` of the data-parallel group takes items ``d, d + D, ...`` in batches of :data:`BATCH` (every
tensor-parallel rank of it the same); the one-process run
takes both ranks' batches of a step together and runs them as separate forwards (``chunks``), so BatchNorm
normalises each rank's batch alone, and only the first chunk moves the running statistics (rank 0's, which the
monitor logs and DDP broadcasts to every rank before each forward).
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import sys
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from lightning_optim import OptimMixin
from lightning_optim.callbacks import BatchNormMonitor, GradNormMonitor, LRMonitor, UpdateMonitor
from lightning_optim.fit.driver import driver_of
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
    "fsdp2_zclip_guard": {
        "parallel": "fsdp2",
        "clip": None,
        "clipping": {"name": "zclip", "z_threshold": 2.0, "alpha": 0.8, "warmup_steps": 2},
        "spike_guard": {"on": "grad_norm", "z_threshold": 4.0, "alpha": 0.8, "warmup_steps": 2},
        "fused": True,
        "spike_at": 4,
    },
    "tp": {"parallel": "tp", "clip": 0.95, "clipping": None, "fused": False},
    "tp_attention": {"parallel": "tp_attention", "clip": 0.5, "clipping": None, "fused": False},
    "fsdp2_tp": {
        "parallel": "fsdp2_tp",
        "clip": 0.95,
        "clipping": None,
        "spike_guard": {"on": "loss", "z_threshold": 4.0, "alpha": 0.8, "warmup_steps": 2},
        "fused": False,
        "spike_at": 3,
    },
    "ddp_loss_guard": {
        "parallel": "ddp",
        "clip": None,
        "clipping": None,
        "spike_guard": {"on": "loss", "z_threshold": 4.0, "alpha": 0.8, "warmup_steps": 2},
        "fused": False,
        "spike_at": 3,
    },
    "ddp_norm_guard_skip": {
        "parallel": "ddp",
        "clip": 0.95,
        "clipping": None,
        "spike_guard": {"on": "grad_norm", "z_threshold": 4.0, "alpha": 0.8, "warmup_steps": 2},
        "fused": True,
        "nan_at": 2,
        "spike_at": 4,
    },
    "ddp_autoclip": {
        "parallel": "ddp",
        "clip": None,
        "clipping": {"name": "autoclip", "percentile": 50, "history": 4},
        "fused": False,
    },
    "ddp_zclip": {
        "parallel": "ddp",
        "clip": None,
        "clipping": {"name": "zclip", "z_threshold": 2.0, "alpha": 0.8, "warmup_steps": 2},
        "fused": True,
        "clipped_spike_at": 4,
    },
}
"""Per case: how the model is split (``fsdp2``: data parallel over 2 ranks; ``tp``: tensor parallel over 2;
``tp_attention``: the q/k/v/output projections of :class:`Attention` tensor parallel over 2; ``fsdp2_tp``: both, 2-D
over 4 ranks; ``ddp``: plain modules under ``DDPStrategy``, data parallel over 2), the Trainer's
``gradient_clip_val`` and algorithm, ``optim_config.clipping`` and ``spike_guard``, whether AdamW is fused (folded
clipping), the step at which the last data-parallel rank's batch is NaN (``GradNormMonitor(nonfinite="skip")``) and
the step at which that rank's loss is scaled up 30-fold (a spike of the mean loss and of the gradient norm that only
one rank sees before the ranks reduce): ``spike_at`` for the guard to skip, ``clipped_spike_at`` for ZClip alone to
clip."""

LAUNCHES = [
    ("fsdp2_norm", "fsdp2_value", "fsdp2_autoclip_skip", "fsdp2_zclip_guard"),
    ("tp", "tp_attention"),
    ("fsdp2_tp",),
    ("ddp_loss_guard", "ddp_norm_guard_skip", "ddp_autoclip", "ddp_zclip"),
]
"""The cases of each launch of ``python -m tests.sharded.runs``, run one after the other in the same processes (the
start-up is most of a small case's time); the cases of one launch have the same :func:`mesh_shape`."""


def mesh_shape(case: str) -> tuple[int, int]:
    """``(data_parallel_size, tensor_parallel_size)`` of a case."""
    parallel = CASES[case]["parallel"]
    return (2 if parallel.startswith("fsdp2") or parallel == "ddp" else 1, 2 if "tp" in parallel else 1)


class Attention(nn.Module):
    """Self-attention with 2 heads; the head count is read from the projections' width, so that under tensor
    parallelism (Colwise q/k/v, Rowwise output) each rank attends with the heads it holds."""

    def __init__(self, width: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.head_width = width // heads
        # No key bias: attention is invariant to it, so its gradient is rounding noise that Adam would blow up.
        self.q, self.v, self.o = (nn.Linear(width, width) for _ in range(3))
        self.k = nn.Linear(width, width, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, length, _ = tokens.shape

        def heads(projection: nn.Module) -> torch.Tensor:
            return projection(tokens).view(batch, length, -1, self.head_width).transpose(1, 2)

        attended = F.scaled_dot_product_attention(heads(self.q), heads(self.k), heads(self.v))
        return self.o(attended.transpose(1, 2).reshape(batch, length, -1))


class MeanTokens(nn.Module):
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.mean(dim=1)


class Net(OptimMixin, L.LightningModule):
    """An MLP (with BatchNorm unless tensor parallel) whose ``configure_model`` shards it under
    ``ModelParallelStrategy``: ``fully_shard`` per layer and on the container, Colwise/Rowwise parallel, or both.
    ``running`` holds, per step, the BatchNorm buffers as the step's forward found them."""

    def __init__(self, case: str, chunks: int = 1) -> None:
        super().__init__()
        spec = CASES[case]
        self.tensor_parallel = "tp" in spec["parallel"]
        self.attention = spec["parallel"].endswith("attention")
        self.chunks = chunks
        self.mesh = mesh_shape(case)
        self.running: list[list[float]] = []
        torch.manual_seed(0)
        if self.attention:
            # Each item: 3 tokens of 2 features.
            self.net = nn.Sequential(
                nn.Unflatten(1, (3, 2)), nn.Linear(2, 8), Attention(), MeanTokens(), nn.Linear(8, 3)
            )
        else:
            norm: list[nn.Module] = [] if self.tensor_parallel else [nn.BatchNorm1d(8)]
            # No bias before BatchNorm: its gradient is rounding noise, which Adam would blow up to lr-sized steps.
            self.net = nn.Sequential(nn.Linear(6, 8, bias=self.tensor_parallel), *norm, nn.ReLU(), nn.Linear(8, 3))
        self.nan_at = spec.get("nan_at")
        self.spike_at = spec.get("spike_at", spec.get("clipped_spike_at"))
        self.optim_config = {
            "optimizer": {"name": "adamw", "lr": 0.05, "weight_decay": 0.01, "fused": spec["fused"]},
            "param_groups": [{"name": "no_decay", "params": r"bias$", "weight_decay": 0.0}],
            "scheduler": {"name": "warmup_cosine", "warmup_steps": 2, "total_steps": STEPS},
            "clipping": spec["clipping"],
            "spike_guard": spec.get("spike_guard"),
        }

    def configure_model(self) -> None:
        if not isinstance(self.trainer.strategy, ModelParallelStrategy):
            return
        from torch.distributed.fsdp import fully_shard
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

        if self.attention:
            projections = {f"2.{name}": ColwiseParallel() for name in "qkv"}
            parallelize_module(self.net, self.device_mesh["tensor_parallel"], {**projections, "2.o": RowwiseParallel()})
        elif self.tensor_parallel:
            mesh = self.device_mesh["tensor_parallel"]
            parallelize_module(self.net, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
        if self.device_mesh["data_parallel"].size() == 1:
            return
        mesh = self.device_mesh["data_parallel"]
        for layer in self.net:
            if any(True for _ in layer.parameters()):
                fully_shard(layer, mesh=mesh)
        fully_shard(self.net, mesh=mesh)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        norms = [module for module in self.net if isinstance(module, nn.BatchNorm1d)]
        # Under DDP after its broadcast of rank 0's buffers: what every rank's forward starts from.
        self.running.append(
            [value for norm in norms for buffer in norm.buffers() for value in buffer.flatten().tolist()]
        )
        data_parallel, tensor_parallel = self.mesh
        losses = []
        chunks = zip(inputs.chunk(self.chunks), targets.chunk(self.chunks), strict=True)
        for index, (chunk, target) in enumerate(chunks):
            if self.chunks > 1:
                last_rank = index == self.chunks - 1
            else:
                last_rank = self.global_rank // tensor_parallel == data_parallel - 1
            if self.global_step == self.nan_at and last_rank:
                chunk = chunk * torch.nan
            # Normalised by its own batch all the same, a later chunk leaves the running statistics (and their
            # batch count) alone.
            for norm in norms:
                norm.track_running_stats = index == 0
            # The loss, not the inputs, scaled: BatchNorm would normalise a scaled input away.
            scale = 30 if self.global_step == self.spike_at and last_rank else 1
            losses.append(F.cross_entropy(self.net(chunk), target) * scale)
        for norm in norms:
            norm.track_running_stats = True
        return torch.stack(losses).mean()


class RankItems(Sampler[int]):
    """Items ``rank, rank + ranks, ...`` of ``length``, from the ``start``-th of them on; its length stays that of the
    whole epoch, as a stateful loader restored mid-epoch would be (Lightning ends a resumed epoch by that length)."""

    def __init__(self, length: int, rank: int, ranks: int, start: int = 0) -> None:
        self.items = list(range(rank, length, ranks))
        self.start = start

    def __iter__(self):
        return iter(self.items[self.start :])

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
    """Each step's total norm and threshold as this rank's clipping saw them (``clip_state.last``), each step's lr
    per parameter group, and after each step the EMA mean and variance of ZClip and of the spike guard (NaN before
    they start, and for AutoClip, which keeps none), the steps the guard skipped and, per parameter, the steps AdamW
    took (a skip of any kind leaves its count as it was)."""

    def __init__(self) -> None:
        self.steps: list[list[float]] = []
        self.lrs: list[list[float]] = []
        self.statistics: list[list[float]] = []
        self.taken: list[list[int]] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        optimizer = trainer.optimizers[0]
        self.lrs.append([group["lr"] for group in optimizer.param_groups])
        states = [optimizer.state.get(p, {}) for group in optimizer.param_groups for p in group["params"]]
        self.taken.append([int(state["step"]) if "step" in state else 0 for state in states])
        last = pl_module.clip_state.last
        if last is not None and last.total is not None:
            self.steps.append([float(last.total), float(last.threshold)])
        driver = driver_of(pl_module)
        thresholds = driver.thresholds.state_dict() if driver.thresholds is not None else []
        guards = driver.guards.state_dict() if driver.guards is not None else []
        states = [record["state"] for record in thresholds] + [record["state"]["statistics"] for record in guards]
        moments = [
            math.nan if state.get(key) is None else float(state[key]) for state in states for key in ("mean", "var")
        ]
        self.statistics.append(moments + [float(record["state"]["skipped"] or 0) for record in guards])


def callbacks(case: str, updates: bool = False) -> list[L.Callback]:
    """The monitors of a case, grouped per layer (per parameter group with adaptive clipping); ``updates`` adds
    :class:`UpdateMonitor`."""
    grouped = CASES[case]["clipping"] is not None
    update_monitor = [UpdateMonitor(per_layer_depth=None if grouped else 2, per_param_group=grouped)]
    return [
        GradNormMonitor(
            per_layer_depth=None if grouped else 2,
            per_param_group=grouped,
            nonfinite="skip" if "nan_at" in CASES[case] else "warn",
        ),
        LRMonitor(),
        BatchNormMonitor(min_batch_size=2),
        RecordClipping(),
        *(update_monitor if updates else []),
    ]


def result(model: Net, trainer: L.Trainer, counter: CountAllReduce | None = None) -> dict[str, Any]:
    params = {name: full_tensor(p.detach()).tolist() for name, p in model.net.named_parameters()}
    logger = trainer.logger
    assert isinstance(logger, MemoryLogger)
    recorded = next(c for c in trainer.callbacks if isinstance(c, RecordClipping))
    return {
        "logged": logger.logged,
        "params": params,
        "all_reduce": counter.per_step if counter is not None else [],
        "clipping": recorded.steps,
        "lrs": recorded.lrs,
        "statistics": recorded.statistics,
        "taken": recorded.taken,
        "running": model.running,
    }


def run(case: str, accelerator: str = "cpu") -> dict[str, Any]:
    """The one-process reference: plain modules, both ranks' batches of a step in one batch."""
    data = dataset(2 * BATCH * STEPS)
    ranks = mesh_shape(case)[0]
    loader = DataLoader(data, batch_sampler=StepBatches(len(data), ranks))
    model = Net(case, chunks=ranks)
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        logger=MemoryLogger(),
        callbacks=callbacks(case, updates=True),
        **trainer_options(case),
    )
    trainer.fit(model, loader)
    return result(model, trainer)


def run_sharded(case: str, accelerator: str = "cpu") -> dict[str, Any]:
    """The sharded (or DDP) run, in this process and the ones Lightning's launcher starts (gloo on CPUs, NCCL on
    GPUs)."""
    data_parallel, tensor_parallel = mesh_shape(case)
    strategy = (
        DDPStrategy()
        if CASES[case]["parallel"] == "ddp"
        else ModelParallelStrategy(data_parallel_size=data_parallel, tensor_parallel_size=tensor_parallel)
    )
    model, counter = Net(case), CountAllReduce()
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=data_parallel * tensor_parallel,
        strategy=strategy,
        logger=MemoryLogger(),
        callbacks=[*callbacks(case, updates=True), counter],
        **trainer_options(case),
    )
    data = dataset(2 * BATCH * STEPS)
    # Ranks are laid out data-parallel major: the tensor-parallel ranks of one data-parallel rank see its batch.
    rank = trainer.global_rank // tensor_parallel
    loader = DataLoader(data, batch_size=BATCH, sampler=RankItems(len(data), rank, data_parallel))
    trainer.fit(model, loader)
    return result(model, trainer, counter)


def relative(a: float, b: float) -> float:
    """``|a - b|`` relative to the larger magnitude; 0 for equal numbers (infinities too) and for two NaNs."""
    if a == b:
        return 0.0
    if math.isnan(a) or math.isnan(b):
        return 0.0 if math.isnan(a) and math.isnan(b) else math.inf
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def differences(ranks: list[dict[str, Any]], reference: dict[str, Any]) -> dict[str, float]:
    """The largest relative difference of the sharded run (rank 0) to the one-process ``reference``, per kind: every
    logged number, the parameters (per tensor, the largest difference over its largest magnitude), the clipping's
    norms and thresholds, ZClip's and the spike guard's statistics and the BatchNorm buffers each step's forward
    started from; and ``ranks``: the largest of another rank's clipping, statistics, optimizer steps taken and
    parameters to rank 0's (0 when every rank decided alike)."""
    first = ranks[0]

    def worst(pairs: Iterable[tuple[list[float], list[float]]]) -> float:
        return max((relative(a, b) for pair in pairs for a, b in zip(*pair, strict=True)), default=0.0)

    def alike(rank: dict[str, Any]) -> Iterable[tuple[list[float], list[float]]]:
        for kind in ("clipping", "statistics", "taken"):
            yield from zip(rank[kind], first[kind], strict=True)
        for name, values in first["params"].items():
            yield torch.tensor(rank["params"][name]).flatten().tolist(), torch.tensor(values).flatten().tolist()

    logged = [
        ([metrics.get(key, math.inf) for key in expected], list(expected.values()))
        for (_, metrics), (_, expected) in zip(first["logged"], reference["logged"], strict=True)
    ]
    params = 0.0
    for name, values in reference["params"].items():
        expected, actual = torch.tensor(values), torch.tensor(first["params"][name])
        params = max(params, float((actual - expected).abs().max() / expected.abs().max().clamp(min=1e-12)))
    return {
        "logged": worst(logged),
        "params": params,
        "clipping": worst(zip(first["clipping"], reference["clipping"], strict=True)),
        "statistics": worst(zip(first["statistics"], reference["statistics"], strict=True)),
        "running": worst(zip(first["running"], reference["running"], strict=True)),
        "ranks": worst(pair for rank in ranks for pair in alike(rank)),
    }


def expected_all_reduce(case: str, logging: list[bool]) -> list[list[Any]]:
    """Per step, whether it logged and the ``all_reduce`` calls it should make: norm clipping one per optimizer step,
    which on logging steps carries every per-layer/per-group norm too; value clipping needs no norm, the monitor's
    norms before and after it, on logging steps only. ``UpdateMonitor`` adds one on logging steps (every update and
    state norm: they exist only after the step), a spike guard on the loss one per step (the mean loss over the
    ranks, before clipping). Under DDP the gradients are whole on every rank, so only the loss is reduced; DDP's own
    gradient all-reduces run in its C++ reducer on the process group, never through ``torch.distributed.all_reduce``,
    so :class:`CountAllReduce` counts none of them."""
    by_value = CASES[case].get("algorithm") == "value"
    on_loss = (CASES[case].get("spike_guard") or {}).get("on") == "loss"
    if CASES[case]["parallel"] == "ddp":
        return [[log, int(on_loss)] for log in logging]
    return [[log, ((2 if log else 0) if by_value else 1) + log + on_loss] for log in logging]


RESUME_CASE = "fsdp2_autoclip_skip"
"""The case :func:`run_resumed` stops halfway and resumes: AutoClip's history and a skipped step before the stop."""

CORRUPTIONS = {
    "directory": (
        "truncated_shard",
        "truncated_shard_unlisted",
        "flipped_byte_in_shard",
        "no_metadata",
        "code_in_metadata",
        "truncated_meta_pt",
    ),
    "file": ("truncated", "flipped_byte"),
}
"""What :func:`corrupt` does to a copy of each form of checkpoint (``_unlisted`` and ``code_in_metadata`` also remove
``checksums.json``, as a checkpoint saved without ``SafeModelParallelStrategy`` lacks it)."""

CODE_RAN = "code_ran"
"""The file that the pickle :func:`corrupt` plants in ``.metadata`` would create, if anything ran it."""


def corrupt(source: Path, target: Path, how: str) -> Path:
    """A copy of the checkpoint ``source`` at ``target`` damaged as ``how`` says; returns the file damaged."""
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copyfile(source, target)
    shard = target / "__1_0.distcp"
    damaged = {
        "truncated_shard": shard,
        "truncated_shard_unlisted": shard,
        "flipped_byte_in_shard": shard,
        "no_metadata": target / ".metadata",
        "code_in_metadata": target / ".metadata",
        "truncated_meta_pt": target / "meta.pt",
    }.get(how, target)
    if how.endswith("_unlisted") or how == "code_in_metadata":
        (target / "checksums.json").unlink()
    if how == "no_metadata":
        damaged.unlink()
    elif how == "code_in_metadata":
        marker = target.parent / CODE_RAN
        damaged.write_bytes(f"cbuiltins\nexec\n(Vopen({str(marker)!r}, 'w')\ntR.".encode())
    elif how.startswith("truncated"):
        with open(damaged, "r+b") as file:
            file.truncate(damaged.stat().st_size // 2)
    else:
        data = bytearray(damaged.read_bytes())
        data[data_offset(damaged)] ^= 0xFF
        damaged.write_bytes(bytes(data))
    return damaged


def data_offset(file: Path) -> int:
    """A byte of tensor data: the middle of a shard, or of a ``torch.save`` archive's largest entry (the middle of the
    file may be zip padding, which no check covers and no load reads)."""
    if not zipfile.is_zipfile(file):
        return file.stat().st_size // 2
    with zipfile.ZipFile(file) as archive:
        entry = max(archive.infolist(), key=lambda info: info.file_size)
    header = file.read_bytes()[entry.header_offset : entry.header_offset + 30]
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return entry.header_offset + 30 + name_length + extra_length + entry.file_size // 2


class CountBatches(L.Callback):
    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_start(self, *args: Any) -> None:
        self.batches += 1


def run_resumed(form: str, out: Path) -> dict[str, Any]:
    """Under ``SafeModelParallelStrategy`` saving a ``form`` checkpoint (``directory`` or ``file``): train half of
    :data:`STEPS`, save, resume in a new Trainer to the end (what it recorded per step), then try to resume from each
    of :data:`CORRUPTIONS` (the error and how many batches ran)."""
    from lightning_optim.errors import CheckpointError
    from lightning_optim.fit.sharded_checkpoints import SafeModelParallelStrategy

    data = dataset(2 * BATCH * STEPS)
    checkpoint = out / ("resume" if form == "directory" else "resume.ckpt")

    def trainer(max_steps: int, *extra: L.Callback) -> L.Trainer:
        strategy = SafeModelParallelStrategy(
            data_parallel_size=2, tensor_parallel_size=1, save_distributed_checkpoint=form == "directory"
        )
        options = {**trainer_options(RESUME_CASE), "max_steps": max_steps}
        return L.Trainer(
            accelerator="cpu",
            devices=2,
            strategy=strategy,
            logger=MemoryLogger(),
            callbacks=[*callbacks(RESUME_CASE), *extra],
            **options,
        )

    def loader(rank: int, start: int) -> DataLoader:
        return DataLoader(data, batch_size=BATCH, sampler=RankItems(len(data), rank, 2, start * BATCH))

    first = trainer(STEPS // 2)
    first.fit(Net(RESUME_CASE), loader(first.global_rank, 0))
    first.save_checkpoint(checkpoint)
    second = trainer(STEPS)
    second.fit(Net(RESUME_CASE), loader(second.global_rank, STEPS // 2), ckpt_path=checkpoint)
    resumed = result(second.lightning_module, second)
    refusals = {}
    for how in CORRUPTIONS[form]:
        target = out / f"{how}{checkpoint.suffix}"
        if dist.get_rank() == 0:
            corrupt(checkpoint, target, how)
        dist.barrier()
        counter = CountBatches()
        attempt = trainer(STEPS, counter)
        try:
            attempt.fit(Net(RESUME_CASE), loader(attempt.global_rank, STEPS // 2), ckpt_path=target)
            refusals[how] = {"error": None, "batches": counter.batches}
        except CheckpointError as error:
            refusals[how] = {"error": str(error), "batches": counter.batches}
        dist.barrier()
    return {"lrs": resumed["lrs"], "clipping": resumed["clipping"], "refusals": refusals}


if __name__ == "__main__":
    # python -m tests.sharded.runs CASE[,CASE...] OUT [ACCELERATOR]; python -m tests.sharded.runs resume FORM OUT
    if sys.argv[1] == "resume":
        outcome = run_resumed(sys.argv[2], Path(sys.argv[3]))
        Path(f"{sys.argv[3]}/{sys.argv[2]}.rank{dist.get_rank()}.json").write_text(json.dumps(outcome))
        sys.exit()
    for case in sys.argv[1].split(","):
        outcome = run_sharded(case, *sys.argv[3:])
        Path(f"{sys.argv[2]}/{case}.rank{dist.get_rank()}.json").write_text(json.dumps(outcome))
