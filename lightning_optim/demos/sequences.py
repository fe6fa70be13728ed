"""The adding problem as a sequence classification task, with an LSTM and a tiny Transformer encoder for it.

Each sequence has ``seq_len`` steps of two features: a value drawn uniformly from [0, 1] and a marker that is 1 at
exactly two steps, one in the first half and one in the second half. The label is whether the two marked values
sum to more than 1. The answer depends on steps far apart, so recurrent models see rare, large gradient spikes
(the classic setting for gradient clipping; Hochreiter & Schmidhuber, 1997).

Examples:
    >>> import lightning as L
    >>> data = SequenceDataModule(num_samples=256, seq_len=16, batch_size=32)
    >>> model = SequenceLSTM(hidden_size=16, optim_config={"optimizer": {"name": "adam", "lr": 1e-2}})
    >>> trainer = L.Trainer(max_epochs=1, limit_train_batches=2, logger=False, enable_checkpointing=False,
    ...                     enable_progress_bar=False, enable_model_summary=False)
    >>> trainer.fit(model, data)
    >>> sorted(key for key in trainer.callback_metrics if key.startswith("val/"))
    ['val/acc', 'val/loss']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset
from typing_extensions import override

from lightning_optim.demos._classifier import Classifier
from lightning_optim.demos._data import SplitDataModule

__all__ = ["SequenceDataModule", "SequenceLSTM", "SequenceTransformer", "make_adding_problem"]

NUM_FEATURES = 2
NUM_CLASSES = 2


def make_adding_problem(num_samples: int, seq_len: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate ``num_samples`` sequences of the adding problem, the same for the same arguments.

    Args:
        num_samples: Number of sequences.
        seq_len: Steps per sequence (at least 2).
        seed: Seed of the generator; the global seed plays no part.

    Returns:
        Inputs of shape ``(num_samples, seq_len, 2)`` (value, marker) and labels of shape ``(num_samples,)``:
        1 where the two marked values sum to more than 1.

    Examples:
        >>> inputs, labels = make_adding_problem(4, 10, seed=0)
        >>> inputs.shape, inputs[..., 1].sum(dim=1).tolist()
        (torch.Size([4, 10, 2]), [2.0, 2.0, 2.0, 2.0])
    """
    if seq_len < 2:
        raise ValueError(f"seq_len = {seq_len} must be at least 2: the task marks one step in each half.")
    generator = torch.Generator().manual_seed(seed)
    values = torch.rand(num_samples, seq_len, generator=generator)
    half = seq_len // 2
    first = torch.randint(0, half, (num_samples,), generator=generator)
    second = torch.randint(half, seq_len, (num_samples,), generator=generator)
    markers = torch.zeros(num_samples, seq_len)
    rows = torch.arange(num_samples)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    labels = ((values * markers).sum(dim=1) > 1.0).long()
    return torch.stack([values, markers], dim=-1), labels


class SequenceDataModule(SplitDataModule):
    """The adding problem (see :func:`make_adding_problem`) with a fixed train/validation split.

    Args:
        num_samples: Number of training sequences.
        num_val_samples: Number of validation sequences (generated with ``seed + 1``).
        seq_len: Steps per sequence.
        batch_size: Training and validation batch size.
        seed: Seed of the generated data.
        num_workers: DataLoader workers.

    Examples:
        >>> data = SequenceDataModule(num_samples=64, num_val_samples=16, seq_len=8, batch_size=16)
        >>> data.setup("fit")
        >>> next(iter(data.train_dataloader()))[0].shape
        torch.Size([16, 8, 2])
    """

    def __init__(
        self,
        num_samples: int = 2048,
        num_val_samples: int = 512,
        seq_len: int = 32,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        self.save_hyperparameters()
        self.num_samples = num_samples
        self.num_val_samples = num_val_samples
        self.seq_len = seq_len
        self.seed = seed

    @override
    def make_splits(self) -> tuple[Dataset, Dataset]:
        train_set = TensorDataset(*make_adding_problem(self.num_samples, self.seq_len, self.seed))
        val_set = TensorDataset(*make_adding_problem(self.num_val_samples, self.seq_len, self.seed + 1))
        return train_set, val_set


class SequenceLSTM(Classifier):
    """An LSTM reading the whole sequence; its last hidden state is classified.

    Args:
        hidden_size: LSTM units.
        num_layers: Stacked LSTM layers.
        recurrent_init_scale: Factor on the initial hidden-to-hidden weights (``weight_hh``) of every layer; above 1
            the backward pass through time amplifies gradients, so they can explode (1: torch's initialization).
        forget_bias: Added to the initial forget-gate bias (in ``bias_hh``) of every layer; positive values make the
            cell keep its state longer at the start of training (0: torch's initialization).
        optim_config: The ``optim_config``; ``None`` uses Nesterov momentum SGD at lr 0.1.

    Examples:
        >>> SequenceLSTM(hidden_size=8)(torch.zeros(3, 10, 2)).shape
        torch.Size([3, 2])
        >>> _ = torch.manual_seed(0)
        >>> plain = SequenceLSTM(hidden_size=8).lstm.weight_hh_l0.abs().max()
        >>> _ = torch.manual_seed(0)
        >>> scaled = SequenceLSTM(hidden_size=8, recurrent_init_scale=3.0, forget_bias=1.0).lstm
        >>> torch.allclose(scaled.weight_hh_l0.abs().max(), 3 * plain), scaled.bias_hh_l0[8:16].min().item() > 0.5
        (True, True)
    """

    def __init__(
        self,
        hidden_size: int = 32,
        num_layers: int = 1,
        recurrent_init_scale: float = 1.0,
        forget_bias: float = 0.0,
        optim_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(num_classes=NUM_CLASSES)
        self.save_config(optim_config)
        self.lstm = nn.LSTM(NUM_FEATURES, hidden_size, num_layers=num_layers, batch_first=True)
        with torch.no_grad():
            for layer in range(num_layers):
                getattr(self.lstm, f"weight_hh_l{layer}").mul_(recurrent_init_scale)
                # torch orders the gates input, forget, cell, output: the second chunk is the forget gate's.
                getattr(self.lstm, f"bias_hh_l{layer}")[hidden_size : 2 * hidden_size].add_(forget_bias)
        self.head = nn.Linear(hidden_size, NUM_CLASSES)

    @override
    def forward(self, sequences: torch.Tensor) -> torch.Tensor:
        outputs, _ = self.lstm(sequences)
        return self.head(outputs[:, -1])


class SequenceTransformer(Classifier):
    """A tiny pre-norm Transformer encoder with learned positions; the mean over steps is classified.

    Args:
        d_model: Width of the encoder.
        nhead: Attention heads.
        num_layers: Encoder layers.
        dim_feedforward: Width of each feed-forward block.
        max_len: Longest sequence the position embedding covers.
        dropout: Dropout inside the encoder.
        optim_config: The ``optim_config``; ``None`` uses Nesterov momentum SGD at lr 0.1.

    Examples:
        >>> SequenceTransformer(d_model=16, nhead=2, max_len=10)(torch.zeros(3, 10, 2)).shape
        torch.Size([3, 2])
    """

    def __init__(
        self,
        d_model: int = 32,
        nhead: int = 4,
        num_layers: int = 2,
        dim_feedforward: int = 64,
        max_len: int = 64,
        dropout: float = 0.0,
        optim_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(num_classes=NUM_CLASSES)
        self.save_config(optim_config)
        self.embed = nn.Linear(NUM_FEATURES, d_model)
        self.position = nn.Parameter(torch.zeros(1, max_len, d_model))
        nn.init.normal_(self.position, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d_model, nhead, dim_feedforward, dropout=dropout, batch_first=True, norm_first=True
        )
        # Nested tensors only apply without norm_first; disabling them avoids torch's warning.
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, NUM_CLASSES)

    @override
    def forward(self, sequences: torch.Tensor) -> torch.Tensor:
        length = sequences.shape[1]
        hidden = self.encoder(self.embed(sequences) + self.position[:, :length])
        return self.head(self.norm(hidden).mean(dim=1))
