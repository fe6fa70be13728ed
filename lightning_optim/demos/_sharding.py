"""FSDP2 for the demo models: ``fully_shard`` in ``configure_model`` when the strategy is ``ModelParallelStrategy``."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from lightning_optim.internals import attached_trainer


def shard_under_model_parallel(module: L.LightningModule, *containers: nn.Module) -> None:
    """Under ``ModelParallelStrategy``, ``fully_shard`` every child of ``containers`` that has parameters, then each
    container, over the data-parallel mesh; under any other strategy (or none) leave the model as it is.

    The LightningModule itself is not sharded (its own forward calls the containers), as Lightning's examples do.

    Examples:
        >>> model = L.LightningModule()
        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> shard_under_model_parallel(model, net)  # no Trainer: nothing to shard for
        >>> type(net[0].weight).__name__
        'Parameter'
    """
    trainer = attached_trainer(module)
    if trainer is None or not isinstance(trainer.strategy, ModelParallelStrategy):
        return
    from torch.distributed.fsdp import FSDPModule, fully_shard

    mesh = trainer.strategy.device_mesh["data_parallel"]
    # Lightning calls configure_model again for each stage (fit, then test); fully_shard may run only once.
    for container in (container for container in containers if not isinstance(container, FSDPModule)):
        for child in container.children():
            if any(True for _ in child.parameters()):
                fully_shard(child, mesh=mesh)
        fully_shard(container, mesh=mesh)
