"""Rollback after a loss spike in ``lightning-optim-train``: stop, resume from an earlier checkpoint, skip the batches
that follow it, go on (PaLM §5.1).

The ``rollback`` key of ``train.yaml`` turns it on. :class:`RollbackWatch` keeps the spike guard's EMA statistics
(:class:`~lightning_optim.clipping.adaptive.EmaStatistics`) of each optimizer step's training loss on the device and
reads the first spike once per logging step; the app then picks the checkpoint, records the rollback and fits again.
With rollback on, the training data is one seeded stream of batches (:class:`BatchStream`): data epoch ``k`` is
``torch.randperm(n, generator=torch.Generator().manual_seed(seed + k))`` cut into batches, batch ``i`` of it has the
global index ``k * batches_per_epoch + i``, and a skipped batch is left out of the stream, so the run goes on with the
batches a run that never saw it would take. Under DDP a global batch is one batch of every rank, split as
``DistributedSampler`` splits the epoch, and every rank decides on the loss averaged over the ranks.

Examples:
    >>> spec = resolve_rollback({"z_threshold": 8, "back_steps": 100})
    >>> spec.z_threshold, spec.checkpoint_every, spec.checkpoints_kept(log_every_n_steps=50)
    (8.0, 25, 7)
    >>> stream = BatchStream(num_samples=10, batch_size=4, drop_last=False, shuffle=False, seed=0, skipped={1})
    >>> len(stream), stream.global_indices(0, 4), list(stream)
    (3, [0, 2, 3, 4], [[0, 1, 2, 3], [8, 9], [0, 1, 2, 3]])
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import Strategy
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, IterableDataset, RandomSampler, Sampler, SequentialSampler
from typing_extensions import override

from lightning_optim.cli.common import saved_step
from lightning_optim.clipping.adaptive import EmaStatistics
from lightning_optim.errors import did_you_mean
from lightning_optim.internals import should_log

__all__ = [
    "ROLLBACK_EXHAUSTED_EXIT",
    "BatchStream",
    "RollbackSpec",
    "RollbackWatch",
    "Rollbacks",
    "Spike",
    "StreamPosition",
    "resolve_rollback",
    "rollback_loader",
]

log = logging.getLogger(__name__)

ROLLBACK_EXHAUSTED_EXIT = 3
"""The exit status of ``lightning-optim-train`` when a spike comes after ``rollback.max_times`` rollbacks."""

SPIKE_MARKER = "rollback/spike"
"""The TensorBoard tag of each rollback's spike: the spiking step's loss, at the step the loss was logged at."""

RESUME_MARKER = "rollback/resume"
"""The TensorBoard tag of each rollback's resume: the loss's EMA mean before the spike, at the checkpoint's step."""


@dataclass(frozen=True)
class RollbackSpec:
    """The checked ``rollback`` section: see ``docs/guides/checkpoints.md``.

    ``every_n_steps`` (None: ``back_steps // 4``, at least 1) is the interval of the rollback checkpoints; ``alpha``
    and ``warmup_steps`` are the EMA's, as the spike guard's.
    """

    on: str = "loss"
    z_threshold: float = 8.0
    back_steps: int = 100
    skip_batches: int = 200
    lr_factor: float = 1.0
    max_times: int = 3
    every_n_steps: int | None = None
    alpha: float = 0.99
    warmup_steps: int = 25

    @property
    def checkpoint_every(self) -> int:
        """Optimizer steps between two rollback checkpoints."""
        return self.every_n_steps or max(1, self.back_steps // 4)

    def checkpoints_kept(self, log_every_n_steps: int) -> int:
        """How many rollback checkpoints are kept: enough that the newest one ``back_steps`` before a spike is still
        there when the spike is read, up to ``log_every_n_steps - 1`` steps after it."""
        every = self.checkpoint_every
        return (self.back_steps + log_every_n_steps + every - 2) // every + 1

    def checkpoint_callback(self, dirpath: Path, log_every_n_steps: int) -> ModelCheckpoint:
        """The ModelCheckpoint that keeps the newest :meth:`checkpoints_kept` checkpoints, every
        :attr:`checkpoint_every` optimizer steps."""
        return ModelCheckpoint(
            dirpath=dirpath,
            filename="{step}",
            monitor="step",
            mode="max",
            save_top_k=self.checkpoints_kept(log_every_n_steps),
            every_n_train_steps=self.checkpoint_every,
        )


def _whole(minimum: int) -> tuple[Any, str]:
    return (lambda v: isinstance(v, int) and v >= minimum, f"an integer >= {minimum}")


_CHECKS: dict[str, tuple[Any, str]] = {
    "on": (lambda v: v == "loss", "'loss' (the training loss of each optimizer step)"),
    "z_threshold": (lambda v: v > 0, "a number > 0, e.g. 8.0"),
    "back_steps": _whole(0),
    "skip_batches": _whole(0),
    "lr_factor": (lambda v: 0 < v <= 1e6, "a number > 0, e.g. 1.0 (unchanged) or 0.5"),
    "max_times": _whole(1),
    "every_n_steps": (lambda v: v is None or (isinstance(v, int) and v >= 1), "an integer >= 1, or null"),
    "alpha": (lambda v: 0 < v < 1, "a number in (0, 1), e.g. 0.99 (the EMA's weight of the past)"),
    "warmup_steps": _whole(1),
}


def resolve_rollback(section: DictConfig | Mapping[str, Any] | None) -> RollbackSpec | None:
    """The ``rollback`` section checked: None when it is null.

    Raises:
        ValueError: naming ``rollback.<key>``, the value and what works.

    Examples:
        >>> resolve_rollback(None) is None
        True
        >>> resolve_rollback({"back_steps": -1})
        Traceback (most recent call last):
        ...
        ValueError: rollback.back_steps = -1 is not valid. Expected an integer >= 0.
        >>> resolve_rollback({"z_treshold": 8})
        Traceback (most recent call last):
        ...
        ValueError: rollback.z_treshold is not a key of rollback. Did you mean 'z_threshold'? Expected one of ...
    """
    if section is None:
        return None
    if isinstance(section, DictConfig):
        section = OmegaConf.to_container(section, resolve=True)  # type: ignore[assignment]
    if not isinstance(section, Mapping):
        raise ValueError(f"rollback = {section!r} is not valid. Expected null or a mapping, e.g. rollback={{}}.")
    values: dict[str, Any] = {}
    for key, value in section.items():
        if key not in _CHECKS:
            raise ValueError(
                f"rollback.{key!s} is not a key of rollback.{did_you_mean(key, _CHECKS)} Expected one of "
                f"{', '.join(_CHECKS)}."
            )
        check, expected = _CHECKS[key]
        if isinstance(value, float) and value.is_integer() and "integer" in expected:
            value = int(value)
        numeric = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not ((numeric or key == "on" or value is None) and _holds(check, value)):
            raise ValueError(f"rollback.{key} = {value!r} is not valid. Expected {expected}.")
        values[key] = float(value) if key in ("z_threshold", "lr_factor", "alpha") else value
    return RollbackSpec(**values)


def _holds(check: Any, value: Any) -> bool:
    try:
        return bool(check(value))
    except TypeError:
        return False


@dataclass
class StreamPosition:
    """Where training is in the stream: batches consumed, and the stream position where the Trainer's epoch began."""

    consumed: int = 0
    epoch: int = 0
    epoch_start: int = 0


class BatchStream(Sampler[list[int]]):
    """The training batches as one seeded stream, less the ``skipped`` global batch indices (a batch sampler).

    Each ``iter`` serves the current Trainer epoch from ``position.consumed`` on, so a run resumed mid-epoch goes on
    with the batch after the checkpoint's. ``len`` is one data epoch's batches, skips not counted: a skip shifts the
    later batches forward and leaves the run's length (and its schedule) as it was.

    With ``num_replicas`` ranks each rank serves its share of every global batch, as ``DistributedSampler`` (seeded
    ``seed + k`` in data epoch ``k``) and a ``DataLoader`` over it would: the epoch's order padded with its own start
    to a multiple of the ranks, rank ``r`` taking every ``num_replicas``-th sample from the ``r``-th, cut into batches.
    Global batch ``i`` is batch ``i`` of every rank, so all ranks skip and replay the same ones.

    Args:
        num_samples: The dataset's length.
        batch_size: Samples per batch (of one rank).
        drop_last: Whether a data epoch's incomplete last batch is left out.
        shuffle: Whether each data epoch is a seeded permutation (else the dataset's order).
        seed: The seed of data epoch 0's permutation (data epoch ``k`` uses ``seed + k``).
        skipped: Global batch indices left out.
        position: The shared position (kept in checkpoints by :class:`RollbackWatch`).
        num_replicas: The data-parallel ranks.
        rank: This process's rank among them.

    Examples:
        >>> stream = BatchStream(num_samples=4, batch_size=2, drop_last=True, shuffle=True, seed=0)
        >>> [stream.batch(index) for index in range(4)]
        [[0, 1], [3, 2], [1, 3], [2, 0]]
        >>> [BatchStream(5, 2, False, False, 0, num_replicas=2, rank=rank).batch(1) for rank in (0, 1)]
        [[4], [0]]
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        drop_last: bool,
        shuffle: bool,
        seed: int,
        skipped: frozenset[int] | set[int] = frozenset(),
        position: StreamPosition | None = None,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.skipped = frozenset(skipped)
        self.position = position or StreamPosition()
        self.num_replicas = num_replicas
        self.rank = rank
        self.per_rank = -(-num_samples // num_replicas)
        whole, rest = divmod(self.per_rank, batch_size)
        self.batches_per_epoch = whole + (1 if rest and not drop_last else 0)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def batch(self, index: int) -> list[int]:
        """The sample indices of the batch with global index ``index``."""
        epoch, offset = divmod(index, self.batches_per_epoch)
        if self.shuffle:
            order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed + epoch))
        else:
            order = torch.arange(self.num_samples)
        padded = self.per_rank * self.num_replicas
        mine = order.repeat(-(-padded // self.num_samples))[:padded][self.rank :: self.num_replicas]
        return mine[offset * self.batch_size : (offset + 1) * self.batch_size].tolist()

    def _indices_from(self, position: int) -> Iterator[int]:
        """The global batch indices from stream position ``position`` on (an endless stream)."""
        index = 0
        while True:
            if index not in self.skipped:
                if position == 0:
                    yield index
                else:
                    position -= 1
            index += 1

    def global_indices(self, position: int, count: int) -> list[int]:
        """The global indices of the ``count`` batches from stream position ``position``."""
        indices = self._indices_from(position)
        return [next(indices) for _ in range(count)]

    @override
    def __iter__(self) -> Iterator[list[int]]:
        left = self.position.epoch_start + self.batches_per_epoch - self.position.consumed
        for index in self.global_indices(self.position.consumed, max(left, 0)):
            yield self.batch(index)


def rollback_loader(
    loader: Any, seed: int, skipped: frozenset[int], position: StreamPosition, num_replicas: int = 1, rank: int = 0
) -> DataLoader:
    """``loader`` (the data module's training loader) served as a :class:`BatchStream`, this ``rank``'s share of it
    among ``num_replicas`` (the Trainer's ``use_distributed_sampler`` must be off: the stream splits the data).

    Raises:
        ValueError: for an iterable dataset (its batches have no index to skip or replay by) or a loader whose
            batches the stream cannot reproduce (a custom sampler or batch sampler, ``batch_size=None``).
    """
    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        raise ValueError(
            "rollback needs a DataLoader over a map-style dataset: an iterable dataset has no batch indices to skip "
            "and cannot be replayed from a checkpoint in the same order. Set rollback=null, or serve the data as a "
            "map-style Dataset."
        )
    if loader.batch_size is None or not isinstance(loader.sampler, RandomSampler | SequentialSampler):
        raise ValueError(
            f"rollback serves the training data as a seeded stream of batches, which replaces the loader's sampler; "
            f"{type(loader.sampler).__name__} with batch_size={loader.batch_size} cannot be reproduced. Use "
            "DataLoader(dataset, batch_size=..., shuffle=True|False), or set rollback=null."
        )
    stream = BatchStream(
        num_samples=len(loader.dataset),  # type: ignore[arg-type]  # map-style, checked above
        batch_size=loader.batch_size,
        drop_last=loader.drop_last,
        shuffle=isinstance(loader.sampler, RandomSampler),
        seed=seed,
        skipped=skipped,
        position=position,
        num_replicas=num_replicas,
        rank=rank,
    )
    return DataLoader(
        loader.dataset,
        batch_sampler=stream,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        worker_init_fn=loader.worker_init_fn,
        persistent_workers=loader.persistent_workers,
    )


@dataclass(frozen=True)
class Spike:
    """A loss spike: the optimizer step (``global_step`` after it), its z-score, the loss and the loss's EMA mean
    before it (the level the run was at)."""

    step: int
    z: float
    loss: float
    mean: float


class RollbackWatch(L.Callback):
    """Watch each optimizer step's training loss for a spike, and stop the fit at the step boundary after one.

    The loss is the one ``training_step`` returns, summed over the step's batches and under DDP averaged over the
    ranks (one ``all_reduce`` a step), so every rank decides alike; its z-score against the EMA statistics is computed
    on the device, and a value above ``z_threshold`` (or a NaN) is kept as the first spike (a device tensor of
    :class:`Spike`'s numbers) and stays out of the statistics. The spike is read on the host once per logging
    step; when there is one, ``trainer.should_stop`` stops the fit after that step. The statistics, the lr scale
    applied and the stream position (``position``, shared with the :class:`BatchStream`) go into checkpoints.

    Args:
        spec: The ``rollback`` section.
        lr_scale: The factor the lr should have against the configured schedule (``lr_factor ** rollbacks``).

    Examples:
        >>> watch = RollbackWatch(RollbackSpec(), lr_scale=1.0)
        >>> watch.spike() is None, watch.position
        (True, StreamPosition(consumed=0, epoch=0, epoch_start=0))
    """

    dashboard_category = "Rollback"
    """The category of :meth:`dashboard_charts` on the TensorBoard dashboard."""

    def __init__(self, spec: RollbackSpec, lr_scale: float) -> None:
        self.spec = spec
        self.position = StreamPosition()
        self.target_lr_scale = lr_scale
        self.lr_scale = 1.0
        self._statistics = EmaStatistics(spec.alpha, spec.warmup_steps)
        self._step_loss: torch.Tensor | None = None
        self._spike: torch.Tensor | None = None
        self._stepped = 0

    def spike(self) -> Spike | None:
        """The first spike, or None (one host read)."""
        if self._spike is None:
            return None
        step, z, loss, mean = self._spike.tolist()
        return None if step < 0 else Spike(int(step), z, loss, mean)

    @staticmethod
    def dashboard_charts() -> dict[str, list[str]]:
        """The dashboard's loss chart: the demo models' ``train/loss`` with the rollback markers
        (:meth:`Rollbacks.mark`)."""
        return {"Training loss": ["train/loss$", f"{SPIKE_MARKER}$", f"{RESUME_MARKER}$"]}

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stepped = trainer.global_step
        ratio = self.target_lr_scale / self.lr_scale
        if ratio != 1.0:
            for optimizer in trainer.optimizers:
                for group in optimizer.param_groups:
                    group["lr"] *= ratio
                    if "initial_lr" in group:
                        group["initial_lr"] *= ratio
            for config in trainer.lr_scheduler_configs:
                config.scheduler.base_lrs = [lr * ratio for lr in config.scheduler.base_lrs]
        self.lr_scale = self.target_lr_scale

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch != self.position.epoch:
            self.position.epoch = trainer.current_epoch
            self.position.epoch_start = self.position.consumed

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.position.consumed += 1
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, torch.Tensor):
            raise ValueError(
                f"rollback.on = {self.spec.on!r} needs the loss training_step returns (automatic optimization); "
                f"{type(pl_module).__name__}.training_step returned {type(outputs).__name__}. Set rollback=null."
            )
        loss = loss.detach()
        self._step_loss = loss if self._step_loss is None else self._step_loss + loss
        if trainer.global_step == self._stepped:
            return
        self._stepped = trainer.global_step
        value, self._step_loss = self._step_loss, None
        if trainer.world_size > 1:
            value = trainer.strategy.reduce(value.clone(), reduce_op="mean")
        statistics = self._statistics
        if statistics.warming:
            statistics.warm(value)
        else:
            z = statistics.z(value)
            exceeds = ~(z <= self.spec.z_threshold)  # a NaN loss is a spike too
            if self._spike is None:
                self._spike = torch.tensor([-1.0, math.nan, math.nan, math.nan], dtype=z.dtype, device=z.device)
            mean, _ = statistics.moments(z)
            step = torch.tensor(float(trainer.global_step), dtype=z.dtype, device=z.device)
            spike = torch.stack([step, z, statistics.cast(value), mean])
            self._spike = torch.where(exceeds & (self._spike[0] < 0), spike, self._spike)
            statistics.update(value, ~exceeds)
        if should_log(trainer) and self.spike() is not None:
            trainer.should_stop = True

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "statistics": self._statistics.state_dict(),
            "consumed": self.position.consumed,
            "epoch": self.position.epoch,
            "epoch_start": self.position.epoch_start,
            "lr_scale": self.lr_scale,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._statistics.load_state_dict(state_dict["statistics"], where="callbacks.RollbackWatch", what="loss")
        self.position.consumed = int(state_dict["consumed"])
        self.position.epoch = int(state_dict["epoch"])
        self.position.epoch_start = int(state_dict["epoch_start"])
        self.lr_scale = float(state_dict["lr_scale"])


@dataclass
class Rollbacks:
    """The rollbacks of one app run: the skipped global batch indices so far, and ``rollbacks.json``.

    Args:
        spec: The ``rollback`` section.
        run_dir: The run directory (``rollbacks.json``, ``checkpoints/rollback/``).
    """

    spec: RollbackSpec
    run_dir: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: frozenset[int] = frozenset()

    @property
    def checkpoint_dir(self) -> Path:
        """Where the rollback checkpoints are saved."""
        return self.run_dir / "checkpoints" / "rollback"

    def roll_back(self, spike: Spike, stream: BatchStream, strategy: Strategy) -> Path | None:
        """Record a rollback for ``spike`` and return the checkpoint to resume from (None: from the start).

        Rank zero picks the checkpoint, deletes the newer ones (they belong to the abandoned steps) and writes the
        record; every rank goes on with the record it broadcasts, so all resume from one checkpoint and skip the
        same batches.

        Raises:
            SystemExit: with :data:`ROLLBACK_EXHAUSTED_EXIT` (on every rank) when ``max_times`` rollbacks were made
                already.
        """
        if len(self.records) >= self.spec.max_times:
            if strategy.is_global_zero:
                log.error(
                    f"Loss spike at step {spike.step} (z = {spike.z:.1f} > rollback.z_threshold = "
                    f"{self.spec.z_threshold}) after rollback.max_times = {self.spec.max_times} rollbacks: training "
                    f"stops (exit status {ROLLBACK_EXHAUSTED_EXIT}). See {self.run_dir / 'rollbacks.json'}; resume a "
                    f"checkpoint from {self.checkpoint_dir} with another config, or raise rollback.max_times."
                )
            raise SystemExit(ROLLBACK_EXHAUSTED_EXIT)
        record = strategy.broadcast(self._choose(spike, stream) if strategy.is_global_zero else {})
        self.records.append(record)
        self.skipped = self.skipped | frozenset(record["skipped_batches"])
        checkpoint = None if record["checkpoint"] is None else Path(record["checkpoint"])
        if strategy.is_global_zero:
            (self.run_dir / "rollbacks.json").write_text(json.dumps(self.records, indent=1) + "\n")
            source = "the start (no checkpoint is that old)" if checkpoint is None else str(checkpoint)
            skipped = record["skipped_batches"]
            log.warning(
                f"Rollback {len(self.records)}/{self.spec.max_times}: loss spike at step {spike.step} (z = "
                f"{spike.z:.1f} > {self.spec.z_threshold}); resuming from {source} at step "
                f"{record['checkpoint_step']}, skipping {len(skipped)} batches ({_span(skipped)}), lr x "
                f"{record['lr_scale']:g}."
            )
        return checkpoint

    def _choose(self, spike: Spike, stream: BatchStream) -> dict[str, Any]:
        """The next record: the checkpoint to resume from and the batches to skip; deletes the newer checkpoints."""
        kept = {path: saved_step(path) for path in self.checkpoint_dir.glob("*.ckpt")}
        far_enough = [path for path, saved_at in kept.items() if saved_at <= spike.step - self.spec.back_steps]
        before = [path for path, saved_at in kept.items() if saved_at < spike.step]
        if far_enough:
            checkpoint: Path | None = max(far_enough, key=kept.__getitem__)
        else:  # a spike within back_steps of the last rollback's checkpoint: the oldest kept is the furthest back
            checkpoint = min(before, key=kept.__getitem__, default=None)
        checkpoint_step = 0 if checkpoint is None else kept[checkpoint]
        # Checkpoints saved after it hold the abandoned steps; last.ckpt among them would shadow the new ones.
        for path in (self.run_dir / "checkpoints").rglob("*.ckpt"):
            if path.name != "interrupted.ckpt" and saved_step(path) > checkpoint_step:
                path.unlink()
        consumed = 0 if checkpoint is None else _consumed(checkpoint)
        return {
            "spike_step": spike.step,
            "z": spike.z,
            "loss": spike.loss,
            "loss_mean": spike.mean,
            "checkpoint": None if checkpoint is None else str(checkpoint.resolve()),
            "checkpoint_step": checkpoint_step,
            "skipped_batches": stream.global_indices(consumed, self.spec.skip_batches),
            "lr_scale": self.spec.lr_factor ** (len(self.records) + 1),
        }

    def resumed_loggers(self, logger_group: DictConfig | None, loggers: list[Any]) -> list[Any]:
        """The loggers of the fit from the last rollback's checkpoint at step ``N``: each ``TensorBoardLogger`` made
        again from its config entry (``logger_group``, as ``loggers`` were) in its own version directory with
        ``purge_step=N``, so TensorBoard hides the abandoned steps from ``N`` on and shows the re-run's; the other
        loggers as they were. The markers the purge hid are written again (:meth:`mark`)."""
        step = self.records[-1]["checkpoint_step"]
        nodes = [node for node in (logger_group or {}).values() if node is not None]
        resumed = [
            instantiate(node, version=logger.version, purge_step=step)
            if isinstance(logger, TensorBoardLogger)
            else logger
            for node, logger in zip(nodes, loggers, strict=True)
        ]
        self.mark(resumed, step)
        return resumed

    def mark(self, loggers: list[Any], purged_from: int) -> None:
        """Write each rollback's markers at steps from ``purged_from`` on to the TensorBoard loggers (rank zero):
        :data:`SPIKE_MARKER` at the spiking step's logging step (``spike_step - 1``, where its loss is logged),
        :data:`RESUME_MARKER` at the checkpoint's step (where the re-run's first loss is logged)."""
        for record in self.records:
            for key, step, value in (
                (SPIKE_MARKER, record["spike_step"] - 1, record["loss"]),
                (RESUME_MARKER, record["checkpoint_step"], record["loss_mean"]),
            ):
                if step >= purged_from:
                    for logger in loggers:
                        if isinstance(logger, TensorBoardLogger):
                            logger.log_metrics({key: value}, step=step)


def _consumed(checkpoint: Path) -> int:
    """The stream position a checkpoint was saved at."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    return int(state["callbacks"][RollbackWatch.__qualname__]["consumed"])


def _span(indices: list[int]) -> str:
    """Global batch indices for a log line: ``a..b`` when they run without a gap."""
    if not indices:
        return "none"
    if indices == list(range(indices[0], indices[-1] + 1)):
        return f"global batch indices {indices[0]}..{indices[-1]}"
    return f"global batch indices {indices}"
