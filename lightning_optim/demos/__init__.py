"""Small models and data modules for the main job and the examples; each trains in seconds on a CPU.

Examples:
    >>> from lightning_optim.demos import DigitsCNN, DigitsDataModule
    >>> DigitsCNN(width=4).hparams["optim_config"]["optimizer"]["name"]
    'sgd'
"""

from lightning_optim.demos.digits import DigitsCNN, DigitsDataModule
from lightning_optim.demos.quadratic import QuadraticDataModule, QuadraticMLP, make_quadratic
from lightning_optim.demos.sequences import (
    SequenceDataModule,
    SequenceLSTM,
    SequenceTransformer,
    make_adding_problem,
)

__all__ = [
    "DigitsCNN",
    "DigitsDataModule",
    "QuadraticDataModule",
    "QuadraticMLP",
    "SequenceDataModule",
    "SequenceLSTM",
    "SequenceTransformer",
    "make_adding_problem",
    "make_quadratic",
]
