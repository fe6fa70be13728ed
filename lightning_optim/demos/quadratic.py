"""Regression of y = 0.3 x² + noise with a small MLP: the setting of batch vs stochastic vs mini-batch descent.

Examples:
    >>> import lightning as L
    >>> data = QuadraticDataModule(num_samples=64, batch_size=None)
    >>> model = QuadraticMLP(hidden=8, optim_config={"optimizer": {"name": "sgd", "lr": 0.05}})
    >>> trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
    ...                     enable_model_summary=False)
    >>> trainer.fit(model, data)
    >>> trainer.global_step, sorted(key for key in trainer.callback_metrics if key.startswith("val/"))
    (2, ['val/loss'])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from typing_extensions import override

from lightning_optim.demos._data import SplitDataModule
from lightning_optim.demos._sharding import shard_under_model_parallel
from lightning_optim.fit.mixin import OptimMixin

__all__ = ["QuadraticDataModule", "QuadraticMLP", "make_quadratic"]


def make_quadratic(
    num_samples: int, seed: int, noise: float = 0.3, x_range: float = 3.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_samples`` points ``x ~ U(-x_range, x_range)``, ``y = 0.3 x² + N(0, noise²)``, as ``(N, 1)`` tensors.

    Examples:
        >>> x, y = make_quadratic(4, seed=0, noise=0.0)
        >>> x.shape, bool(torch.allclose(y, 0.3 * x**2))
        (torch.Size([4, 1]), True)
    """
    generator = torch.Generator().manual_seed(seed)
    x = (torch.rand(num_samples, 1, generator=generator) * 2 - 1) * x_range
    y = 0.3 * x**2 + noise * torch.randn(num_samples, 1, generator=generator)
    return x, y


class QuadraticDataModule(SplitDataModule):
    """Generated ``y = 0.3 x² + noise`` points; ``batch_size=None`` is full-batch (one batch per epoch).

    Args:
        num_samples: Training points.
        num_val_samples: Validation points (generated with ``seed + 1``).
        batch_size: Training batch size; None: the whole training set (batch gradient descent).
        noise: Standard deviation of the noise on y.
        seed: Seed of the generated data; the global seed plays no part.
        num_workers: DataLoader workers.

    Examples:
        >>> data = QuadraticDataModule(num_samples=100, batch_size=None)
        >>> data.setup("fit")
        >>> len(data.train_dataloader()), next(iter(data.train_dataloader()))[0].shape
        (1, torch.Size([100, 1]))
    """

    def __init__(
        self,
        num_samples: int = 512,
        num_val_samples: int = 256,
        batch_size: int | None = None,
        noise: float = 0.3,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        self.save_hyperparameters()
        self.num_samples = num_samples
        self.num_val_samples = num_val_samples
        self.noise = noise
        self.seed = seed

    @override
    def make_splits(self) -> tuple[Dataset, Dataset]:
        train_set = TensorDataset(*make_quadratic(self.num_samples, self.seed, self.noise))
        val_set = TensorDataset(*make_quadratic(self.num_val_samples, self.seed + 1, self.noise))
        return train_set, val_set

    @override
    def val_dataloader(self) -> DataLoader:
        return self.loader(self.val_set, None)


class QuadraticMLP(OptimMixin, L.LightningModule):
    """A one-hidden-layer tanh MLP from x to y, trained with mean squared error.

    Logs ``train/loss`` (per step) and ``val/loss``.

    Args:
        hidden: Hidden units.
        optim_config: The ``optim_config``; ``None`` uses plain SGD at lr 0.05.

    Examples:
        >>> QuadraticMLP(hidden=4)(torch.zeros(3, 1)).shape
        torch.Size([3, 1])
    """

    def __init__(self, hidden: int = 32, optim_config: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optim_config"])
        self.optim_config = optim_config or {"optimizer": {"name": "sgd", "lr": 0.05}}
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    @override
    def configure_model(self) -> None:
        shard_under_model_parallel(self, self.net)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @override
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    @override
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val/loss", F.mse_loss(self(x), y), prog_bar=True)
