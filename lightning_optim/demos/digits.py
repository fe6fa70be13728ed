"""scikit-learn's 8x8 handwritten digits as a LightningDataModule, and a small BatchNorm CNN for them.

Examples:
    >>> import lightning as L
    >>> data = DigitsDataModule(batch_size=64)
    >>> model = DigitsCNN(width=8, optim_config={"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}})
    >>> trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=2, logger=False,
    ...                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    >>> trainer.fit(model, data)
    >>> sorted(key for key in trainer.callback_metrics if key.startswith("val/"))
    ['val/acc', 'val/loss']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset, random_split
from typing_extensions import override

from lightning_optim.demos._classifier import Classifier
from lightning_optim.demos._data import SplitDataModule
from lightning_optim.demos._sharding import shard_under_model_parallel

__all__ = ["DEMOS_EXTRA", "DigitsCNN", "DigitsDataModule"]


class DigitsDataModule(SplitDataModule):
    """The 1797 8x8 digits of :func:`sklearn.datasets.load_digits`, scaled to [0, 1], as ``(N, 1, 8, 8)``.

    The train/validation split depends only on ``split_seed``, never on the global seed, so runs with
    different seeds validate on the same images.

    Args:
        batch_size: Training and validation batch size.
        val_fraction: Fraction of the images held out for validation.
        split_seed: Seed of the train/validation split.
        num_workers: DataLoader workers; 0 keeps the tiny dataset in the main process.

    Examples:
        >>> data = DigitsDataModule(batch_size=32)
        >>> data.setup("fit")
        >>> len(data.train_set), len(data.val_set), next(iter(data.train_dataloader()))[0].shape
        (1438, 359, torch.Size([32, 1, 8, 8]))
    """

    num_classes = 10

    def __init__(
        self, batch_size: int = 64, val_fraction: float = 0.2, split_seed: int = 0, num_workers: int = 0
    ) -> None:
        super().__init__(batch_size, num_workers)
        self.save_hyperparameters()
        self.val_fraction = val_fraction
        self.split_seed = split_seed

    @override
    def make_splits(self) -> tuple[Dataset, Dataset]:
        digits = _load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        dataset = TensorDataset(images, torch.tensor(digits.target, dtype=torch.long))
        num_val = round(len(dataset) * self.val_fraction)
        generator = torch.Generator().manual_seed(self.split_seed)
        train_set, val_set = random_split(dataset, [len(dataset) - num_val, num_val], generator=generator)
        return train_set, val_set


class DigitsCNN(Classifier):
    """Two conv-BatchNorm-ReLU blocks, max pooling and a linear head, for ``(N, 1, 8, 8)`` digits.

    Args:
        width: Channels of the first conv block (the second has twice as many).
        hidden: Units of the hidden linear layer before the classifier.
        optim_config: The ``optim_config``; ``None`` uses Nesterov momentum SGD at lr 0.1.

    Examples:
        >>> DigitsCNN(width=4)(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(self, width: int = 16, hidden: int = 64, optim_config: Mapping[str, Any] | None = None) -> None:
        super().__init__(num_classes=DigitsDataModule.num_classes)
        self.save_config(optim_config)
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * 16, hidden), nn.ReLU(), nn.Linear(hidden, DigitsDataModule.num_classes)
        )

    @override
    def configure_model(self) -> None:
        shard_under_model_parallel(self, self.features, self.head)

    @override
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


DEMOS_EXTRA = "pip install 'lightning-optim[demos]'"
"""The install line for the demos' own dependencies (scikit-learn), named when one is missing."""


def _load_digits() -> Any:
    """scikit-learn's digits, imported here so that the other demos import without scikit-learn."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError(f"The digits demo needs scikit-learn: {DEMOS_EXTRA}") from error
    return load_digits()
