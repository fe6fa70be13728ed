"""A ``ModelParallelStrategy`` mesh dimension that ``configure_model`` left unused, named before the first step.

Lightning's ``ModelParallelStrategy`` defaults to ``data_parallel_size="auto"`` (the number of nodes) and
``tensor_parallel_size="auto"`` (the devices of a node). A user who ``fully_shard``s over
``device_mesh["data_parallel"]`` with the defaults on one node shards over one rank: every device holds and trains a
whole copy on the same batches, and nothing says so. With ``data_parallel_size`` above 1 and nothing placed on it,
each rank trains its own copy on its own batches and the copies drift apart.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_warn

from lightning_optim.stats.distributed import unplaced_mesh_dims

__all__ = ["warn_unplaced_mesh_dims"]

_CONSEQUENCE = {
    "data_parallel": "each of its {size} ranks trains its own copy on its own batches and no gradient is averaged",
    "tensor_parallel": "each of its {size} ranks holds and trains a whole copy of the model on the same batches",
}


def warn_unplaced_mesh_dims(trainer: L.Trainer, module: L.LightningModule) -> None:
    """Warn once per unused dimension of the device mesh of ``trainer``'s ``ModelParallelStrategy`` (no other
    strategy has one); a dimension of one rank, or with any ``DTensor`` parameter on it, is used."""
    if not isinstance(trainer.strategy, ModelParallelStrategy):
        return
    mesh = trainer.strategy.device_mesh
    sizes = {name: mesh.size(index) for index, name in enumerate(mesh.mesh_dim_names or ())}
    for name in unplaced_mesh_dims(module.parameters(), sizes):
        consequence = _CONSEQUENCE.get(name, "its ranks hold whole copies").format(size=sizes[name])
        rank_zero_warn(
            f"ModelParallelStrategy's device mesh is {sizes}, but no parameter is a DTensor on {name!r}: {consequence}."
            " Shard over it in configure_model (fully_shard(..., mesh=self.device_mesh['data_parallel']),"
            " parallelize_module(..., self.device_mesh['tensor_parallel'], ...)), or give the strategy sizes that"
            " match what configure_model does: for FSDP2 alone, ModelParallelStrategy(data_parallel_size=<devices>,"
            " tensor_parallel_size=1) (its 'auto' puts every device of a node on tensor_parallel)."
        )
