"""Pure statistics the callbacks log: gradient norms (:mod:`.gradients`), BatchNorm health (:mod:`.batchnorm`; every
layer at once: :mod:`.batchnorm_layers`) and optimizer updates and state (:mod:`.updates`); and the lr range test's
suggestion from its finished curve (:mod:`.lr_suggestion`, plain Python numbers).

Nothing here imports Lightning or turns a tensor into a Python number. Pure torch: modules here import only the
top-level leaves (``internals``, ``names``), never ``optim``, ``schedule``, ``clipping``, ``config`` or ``fit``.
"""

from lightning_optim.stats.batchnorm import BatchStatistics, batch_statistics, rank_divergence
from lightning_optim.stats.batchnorm_layers import RunningStatsSnapshot
from lightning_optim.stats.gradients import (
    GradientNorms,
    GroupOf,
    dense_gradient,
    gradient_norms,
    module_path,
    total_norm,
)
from lightning_optim.stats.updates import (
    TensorNorms,
    TensorUpdates,
    UpdateSummary,
    combine_ranks,
    copy_parameters,
    measure_updates,
    members,
    state_norms,
)

__all__ = [
    "BatchStatistics",
    "GradientNorms",
    "GroupOf",
    "RunningStatsSnapshot",
    "TensorNorms",
    "TensorUpdates",
    "UpdateSummary",
    "batch_statistics",
    "combine_ranks",
    "copy_parameters",
    "dense_gradient",
    "gradient_norms",
    "measure_updates",
    "members",
    "module_path",
    "rank_divergence",
    "state_norms",
    "total_norm",
]
