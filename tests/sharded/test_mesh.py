"""A ``ModelParallelStrategy`` mesh dimension on which ``configure_model`` placed no parameter is named before the
first step (Lightning's ``auto`` sizes put every device of a node on ``tensor_parallel``)."""

from __future__ import annotations

import tempfile
import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Replicate, distribute_tensor

from lightning_optim.fit.mesh import warn_unplaced_mesh_dims
from lightning_optim.stats.distributed import unplaced_mesh_dims


class Mesh:
    """A device mesh's names and sizes, as ``warn_unplaced_mesh_dims`` reads them."""

    def __init__(self, sizes: dict[str, int]) -> None:
        self.mesh_dim_names, self._sizes = tuple(sizes), list(sizes.values())

    def size(self, index: int) -> int:
        return self._sizes[index]


def trainer_with_mesh(sizes: dict[str, int]) -> SimpleNamespace:
    strategy = ModelParallelStrategy()
    strategy._device_mesh = Mesh(sizes)
    return SimpleNamespace(strategy=strategy)


@pytest.fixture
def one_rank_mesh():
    dist.init_process_group("gloo", init_method=f"file://{tempfile.mktemp()}", rank=0, world_size=1)
    yield init_device_mesh("cpu", (1,), mesh_dim_names=("data_parallel",))
    dist.destroy_process_group()


def test_a_dimension_counts_as_placed_when_a_dtensor_lives_on_it(one_rank_mesh) -> None:
    placed = distribute_tensor(torch.zeros(2), one_rank_mesh, [Replicate()])
    sizes = {"data_parallel": 2, "tensor_parallel": 2}
    assert unplaced_mesh_dims([placed, torch.zeros(2)], sizes) == ["tensor_parallel"]
    assert unplaced_mesh_dims([torch.zeros(2)], sizes) == ["data_parallel", "tensor_parallel"]
    assert unplaced_mesh_dims([torch.zeros(2)], {"data_parallel": 1, "tensor_parallel": 1}) == []


def test_the_auto_sizes_with_an_unsharded_model_are_named() -> None:
    module = nn.Linear(2, 2)
    with pytest.warns(UserWarning) as caught:
        warn_unplaced_mesh_dims(trainer_with_mesh({"data_parallel": 1, "tensor_parallel": 2}), module)
    assert [str(w.message) for w in caught] == [
        "ModelParallelStrategy's device mesh is {'data_parallel': 1, 'tensor_parallel': 2}, but no parameter is a"
        " DTensor on 'tensor_parallel': each of its 2 ranks holds and trains a whole copy of the model on the same"
        " batches. Shard over it in configure_model (fully_shard(..., mesh=self.device_mesh['data_parallel']),"
        " parallelize_module(..., self.device_mesh['tensor_parallel'], ...)), or give the strategy sizes that match"
        " what configure_model does: for FSDP2 alone, ModelParallelStrategy(data_parallel_size=<devices>,"
        " tensor_parallel_size=1) (its 'auto' puts every device of a node on tensor_parallel)."
    ]
    with pytest.warns(UserWarning, match="'data_parallel': each of its 4 ranks trains its own copy on its own batches"):
        warn_unplaced_mesh_dims(trainer_with_mesh({"data_parallel": 4, "tensor_parallel": 1}), module)


def test_one_process_and_other_strategies_are_not_warned_about() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_unplaced_mesh_dims(trainer_with_mesh({"data_parallel": 1, "tensor_parallel": 1}), nn.Linear(2, 2))
        warn_unplaced_mesh_dims(SimpleNamespace(strategy=object()), nn.Linear(2, 2))
