"""Pure statistics the callbacks log: gradient norms (:mod:`.gradients`) and BatchNorm health (:mod:`.batchnorm`).

Nothing here imports Lightning or turns a tensor into a Python number. Pure torch: modules here import only the
top-level leaves (``internals``, ``names``), never ``optim``, ``schedule``, ``clipping``, ``config`` or ``fit``.
"""

from lightning_optim.stats.batchnorm import BatchStatistics, RunningStatsSnapshot, batch_statistics, rank_divergence
from lightning_optim.stats.gradients import (
    GradientNorms,
    GroupOf,
    dense_gradient,
    gradient_norms,
    module_path,
    total_norm,
)

__all__ = [
    "BatchStatistics",
    "GradientNorms",
    "GroupOf",
    "RunningStatsSnapshot",
    "batch_statistics",
    "dense_gradient",
    "gradient_norms",
    "module_path",
    "rank_divergence",
    "total_norm",
]
