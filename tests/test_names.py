"""Names as the user's code spells them under activation checkpointing and FSDP1 (``torch.compile``: test_compile)."""

from __future__ import annotations

from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

from lightning_optim.names import named_modules, named_parameters, plain_name
from lightning_optim.optim.param_groups import group_parameters


def model() -> nn.Module:
    return nn.Sequential(nn.Sequential(checkpoint_wrapper(nn.Linear(2, 3)), nn.BatchNorm1d(3)), nn.Linear(3, 1))


def test_checkpoint_wrapper_level_is_left_out_of_parameter_and_module_names():
    assert [name for name, _ in named_parameters(model())] == [
        "0.0.weight",
        "0.0.bias",
        "0.1.weight",
        "0.1.bias",
        "1.weight",
        "1.bias",
    ]
    assert sorted({name for name, _ in named_modules(model())}) == ["", "0", "0.0", "0.1", "1"]


def test_fsdp1_level_is_left_out():
    name = "_fsdp_wrapped_module.layers.0._fsdp_wrapped_module._checkpoint_wrapped_module.attn.weight"
    assert plain_name(name) == "layers.0.attn.weight"


def test_param_group_rules_match_the_unwrapped_names():
    net = model()
    groups = group_parameters(net.named_parameters(), [{"name": "first", "params": r"^0\.0\."}], {"lr": 0.1})
    assert [group["name"] for group in groups] == ["first", "default"]
    assert groups[0]["params"] == [
        net[0][0]._checkpoint_wrapped_module.weight,
        net[0][0]._checkpoint_wrapped_module.bias,
    ]
