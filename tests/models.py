"""Tiny Lightning models and data for the tests (fast, deterministic, recording the lr of every step), and the quiet
CPU trainers that fit them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader, TensorDataset

from lightning_optim import OptimMixin
from tests import tb


def loader(samples: int = 32, batch_size: int = 4, seed: int = 0) -> DataLoader:
    """A regression data loader of ``samples // batch_size`` batches."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(samples, 4, generator=generator)
    targets = inputs.sum(dim=1, keepdim=True)
    return DataLoader(TensorDataset(inputs, targets), batch_size=batch_size)


class RecordingModel(L.LightningModule):
    """A linear regression that records, per optimizer step, the lr of every parameter group.

    ``lrs`` holds one list per training batch; under accumulation several batches share an optimizer step.
    ``val_metric`` may hold a sequence of values to log as ``val/metric`` at successive validation runs.
    """

    def __init__(self, val_metric: list[float] | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = torch.nn.Linear(4, 8)
        self.head = torch.nn.Linear(8, 1)
        self.lrs: list[list[float]] = []
        self.val_metric = list(val_metric or [])
        self.validation_runs = 0

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.encoder(inputs)))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.lrs.append([group["lr"] for group in self.trainer.optimizers[0].param_groups])
        inputs, targets = batch
        return torch.nn.functional.mse_loss(self(inputs), targets)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        inputs, targets = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self(inputs), targets))

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        if self.val_metric:
            self.log("val/metric", self.val_metric[min(self.validation_runs, len(self.val_metric) - 1)])
        self.validation_runs += 1

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.5)


class MixinModel(OptimMixin, RecordingModel):
    """``RecordingModel`` with the mixin first in its bases: the mixin's ``configure_optimizers`` takes over."""

    def __init__(self, optim_config: Any, val_metric: list[float] | None = None) -> None:
        super().__init__(val_metric)
        self.optim_config = optim_config


class NetInHparams(OptimMixin, L.LightningModule):
    """lightning-hydra-template's module: the network comes in built, and ``save_hyperparameters()`` is called without
    ``ignore=["net"]``, so ``hparams`` (and every checkpoint) hold an ``nn.Module``, which ``weights_only`` refuses.
    ``batch_size`` is what Lightning's batch-size finder scales."""

    def __init__(self, net: torch.nn.Module, optim_config: Any, batch_size: int = 2) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.net = net
        self.batch_size = batch_size
        self.optim_config = optim_config

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        return torch.nn.functional.mse_loss(self.net(inputs), targets)

    def train_dataloader(self) -> DataLoader:
        return loader(samples=32, batch_size=self.batch_size)


class OwnSGD(torch.optim.SGD):
    """A user's own optimizer class, outside the modules a ``_target_`` may name until they are allowed."""


class SparseEmbedding(OptimMixin, L.LightningModule):
    """Sparse gradients only (what SparseAdam accepts; SGD's momentum of them is a sparse tensor)."""

    def __init__(self, optim_config: Any) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(10, 1, sparse=True)
        self.optim_config = optim_config

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        index = (inputs[:, 0].abs() * 3).long().clamp(max=9)
        return torch.nn.functional.mse_loss(self.embedding(index), targets)


def trainer(**kwargs: Any) -> L.Trainer:
    """A quiet CPU trainer; ``kwargs`` override the defaults."""
    defaults: dict[str, Any] = {
        "accelerator": "cpu",
        "max_epochs": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }
    return L.Trainer(**{**defaults, **kwargs})


class MemoryLogger(Logger):
    """Keeps every ``log_metrics`` call as ``(step, metrics)`` in ``logged``; ``save_dir`` is where the trainer's
    ``log_dir`` points."""

    def __init__(self, save_dir: Path | None = None) -> None:
        super().__init__()
        self._save_dir = save_dir
        self.logged: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    @property
    def save_dir(self) -> str | None:
        return None if self._save_dir is None else str(self._save_dir)

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.logged.append((step, dict(metrics)))

    def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
        """Hyperparameters are not kept."""

    def steps_of(self, key: str) -> list[int | None]:
        """The steps at which ``key`` reached the logger."""
        return [step for step, metrics in self.logged if key in metrics]


def fit_logged(
    model: L.LightningModule, tmp_path: Path, callbacks: list[L.Callback], **trainer_kwargs: Any
) -> dict[str, list[tuple[int, float]]]:
    """Fit ``model`` on :func:`loader` with ``callbacks``, logging every step to TensorBoard under ``tmp_path``.

    ``trainer_kwargs`` override :func:`trainer`'s defaults and ``log_every_n_steps=1``. Returns every scalar logged,
    read back from the event files (:func:`tests.tb.scalars`).
    """
    logger = TensorBoardLogger(tmp_path, name="tb", default_hp_metric=False)
    trainer(callbacks=callbacks, logger=logger, **{"log_every_n_steps": 1, **trainer_kwargs}).fit(model, loader())
    return tb.scalars(tmp_path)


def step_lrs(model: RecordingModel, accumulate: int = 1) -> list[list[float]]:
    """The lr of each optimizer step: one entry per ``accumulate`` batches."""
    return model.lrs[::accumulate]


class Interrupted(RuntimeError):
    """Raised by :class:`CrashAt` to stand for a run that dies (preemption, out of time)."""


class CrashAt(L.Callback):
    """Kill the run at the start of the first batch after optimizer step ``step`` (the checkpoint is written)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step >= self.step:
            raise Interrupted(f"interrupted at optimizer step {trainer.global_step}")


class RestoresAfterSetup(SingleDeviceStrategy):
    """The CPU strategy with the order of FSDP and DeepSpeed: optimizers are built before a checkpoint is restored."""

    def __init__(self) -> None:
        super().__init__(device=torch.device("cpu"))

    @property
    def restore_checkpoint_after_setup(self) -> bool:
        return True


GAN_CONFIG: dict[str, Any] = {
    "optimizers": {
        "generator": {
            "params": r"^generator\.",
            "optimizer": {"name": "adam", "lr": 0.02, "betas": [0.5, 0.999]},
            "scheduler": {"name": "warmup_cosine", "warmup_steps": 2, "min_lr_ratio": 0.1},
        },
        "discriminator": {
            "params": r"^discriminator\.",
            "optimizer": {"name": "adam", "lr": 0.01, "betas": [0.5, 0.999]},
            "param_groups": [{"name": "bias", "params": r"\.bias$", "lr_scale": 2.0}],
            "scheduler": {"name": "step", "step_size": 3, "gamma": 0.5},
        },
    }
}
"""Two Adam optimizers (the same class) with different schedules, for :class:`GAN`."""


class GAN(OptimMixin, L.LightningModule):
    """Shaped like Lightning's basic GAN example: ``generator`` and ``discriminator`` submodules, manual optimization,
    one optimizer each (``self.optimizers()``), ``toggle_optimizer`` around each step.

    Each batch records, before any step, both optimizers' group lrs and each optimizer's total gradient norm taken
    with ``torch.nn.utils.get_total_norm`` right after its backward (before ``clip_gradients``). The generator's
    gradients are clipped by norm at ``clip`` (None: not clipped); ``step_schedulers`` False never steps them.
    """

    def __init__(self, optim_config: Any = GAN_CONFIG, clip: float | None = 0.05, step_schedulers: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.automatic_optimization = False
        self.generator = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.LeakyReLU(0.2), torch.nn.Linear(8, 4))
        self.discriminator = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LeakyReLU(0.2), torch.nn.Linear(8, 1))
        self.optim_config = optim_config
        self.clip = clip
        self.step_schedulers = step_schedulers
        self.records: list[dict[str, Any]] = []

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return self.generator(noise)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        real, _ = batch
        optimizer_g, optimizer_d = self.optimizers()  # type: ignore[misc]
        loss = torch.nn.functional.binary_cross_entropy_with_logits
        ones, zeros = torch.ones(real.shape[0], 1), torch.zeros(real.shape[0], 1)
        record: dict[str, Any] = {
            "lr_g": [group["lr"] for group in optimizer_g.param_groups],
            "lr_d": [group["lr"] for group in optimizer_d.param_groups],
        }
        fake = self(torch.randn(real.shape[0], 2))

        self.toggle_optimizer(optimizer_g)
        self.manual_backward(loss(self.discriminator(fake), ones))
        record["norm_g"] = float(torch.nn.utils.get_total_norm([p.grad for p in self.generator.parameters()]))
        if self.clip is not None:
            self.clip_gradients(optimizer_g, gradient_clip_val=self.clip, gradient_clip_algorithm="norm")
        optimizer_g.step()
        optimizer_g.zero_grad()
        self.untoggle_optimizer(optimizer_g)

        self.toggle_optimizer(optimizer_d)
        d_loss = (loss(self.discriminator(real), ones) + loss(self.discriminator(fake.detach()), zeros)) / 2
        self.manual_backward(d_loss)
        record["norm_d"] = float(torch.nn.utils.get_total_norm([p.grad for p in self.discriminator.parameters()]))
        optimizer_d.step()
        optimizer_d.zero_grad()
        self.untoggle_optimizer(optimizer_d)

        if self.step_schedulers:
            schedulers = self.lr_schedulers()
            for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
                scheduler.step()  # type: ignore[union-attr]
        self.records.append(record)
