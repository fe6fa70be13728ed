"""The data-module shape every demo shares: two datasets made once, served in batches."""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override


class SplitDataModule(L.LightningDataModule):
    """A training and a validation dataset, made once by :meth:`make_splits`, served in batches.

    Args:
        batch_size: Batch size of both loaders; None serves each split as one batch (batch gradient descent).
        num_workers: DataLoader workers.
    """

    def __init__(self, batch_size: int | None, num_workers: int = 0) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers

    def make_splits(self) -> tuple[Dataset, Dataset]:
        """The training and validation datasets."""
        raise NotImplementedError

    @override
    def setup(self, stage: str | None = None) -> None:
        if not hasattr(self, "train_set"):
            self.train_set, self.val_set = self.make_splits()

    def loader(self, dataset: Dataset, batch_size: int | None, shuffle: bool = False) -> DataLoader:
        """``dataset`` in batches of ``batch_size`` (None: the whole dataset)."""
        size = batch_size or len(dataset)  # type: ignore[arg-type]  # the splits are Subsets, which have a length
        return DataLoader(dataset, batch_size=size, shuffle=shuffle, num_workers=self.num_workers)

    @override
    def train_dataloader(self) -> DataLoader:
        return self.loader(self.train_set, self.batch_size, shuffle=True)

    @override
    def val_dataloader(self) -> DataLoader:
        return self.loader(self.val_set, self.batch_size)
