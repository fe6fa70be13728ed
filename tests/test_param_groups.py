"""Parameter-group rules: first match wins, unmatched parameters form ``default``, options and lr_scale apply."""

import inspect

import pytest
import torch

from lightning_optim import OptimConfigError, build_optimizer
from lightning_optim.optim.param_groups import UnmatchedRuleWarning, group_parameters
from lightning_optim.optim.registry import OPTIMIZERS, default_lr


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Conv1d(1, 2, 3), torch.nn.BatchNorm1d(2))
        self.head = torch.nn.Linear(2, 1)


def names_by_group(model, groups):
    names = {id(p): n for n, p in model.named_parameters()}
    return {group["name"]: [names[id(p)] for p in group["params"]] for group in groups}


def test_first_match_wins_and_the_rest_is_default():
    model = Net()
    rules = [
        {"name": "no_decay", "params": r"(\.bias$|\.1\.)", "weight_decay": 0.0},
        {"name": "head", "params": r"^head\.", "lr_scale": 10.0},
    ]
    groups = group_parameters(model.named_parameters(), rules, {"lr": 0.01, "weight_decay": 0.05})
    assert names_by_group(model, groups) == {
        "no_decay": ["backbone.0.bias", "backbone.1.weight", "backbone.1.bias", "head.bias"],
        "head": ["head.weight"],
        "default": ["backbone.0.weight"],
    }
    assert groups[0]["weight_decay"] == 0.0 and "lr" not in groups[0]
    assert groups[1]["lr"] == pytest.approx(0.1)


def test_groups_reach_the_optimizer_with_their_options():
    model = Net()
    optimizer = build_optimizer(
        model,
        {"name": "adamw", "lr": 1e-3, "weight_decay": 0.1},
        [{"name": "no_decay", "params": r"\.bias$", "weight_decay": 0.0, "lr_scale": 0.5}],
    )
    by_name = {group["name"]: group for group in optimizer.param_groups}
    assert (by_name["no_decay"]["weight_decay"], by_name["no_decay"]["lr"]) == (0.0, pytest.approx(5e-4))
    assert (by_name["default"]["weight_decay"], by_name["default"]["lr"]) == (0.1, 1e-3)


def test_rule_matching_nothing_is_reported_by_name():
    with pytest.warns(UnmatchedRuleWarning, match=r"param_groups\[0\] \('embeddings', params='\^embed'\) matched no"):
        groups = group_parameters(Net().named_parameters(), [{"name": "embeddings", "params": "^embed"}], {})
    assert [group["name"] for group in groups] == ["default"]


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ([{"name": "x", "params": "(unclosed"}], r"param_groups\[0\]\.params = '\(unclosed' is not valid"),
        ([{"params": "bias"}], r"param_groups\[0\]\.name = None"),
        ([{"name": "a", "params": "x"}, {"name": "a", "params": "y"}], r"param_groups\[1\]\.name = 'a'"),
        ([{"name": "default", "params": "x"}], r"param_groups\[0\]\.name = 'default'"),
        ([{"name": "a"}], r"param_groups\[0\] \('a'\) needs 'params'"),
        ([{"name": "a", "params": "x", "lr_scale": -1}], r"param_groups\[0\]\.lr_scale = -1"),
        ([{"name": "a", "params": "x", "momentun": 0.9}], r"param_groups\[0\]\.momentun .* Did you mean 'momentum'"),
    ],
)
def test_bad_rules_name_the_rule(rules, message):
    with pytest.raises(OptimConfigError, match=message):
        build_optimizer(Net(), {"name": "sgd", "lr": 0.1}, rules)


DEFAULT_LR_NOT_1E3 = sorted(
    name for name, cls in OPTIMIZERS.items() if name != "sparse_adam" and default_lr(cls) != pytest.approx(1e-3)
)


def test_the_optimizers_whose_default_lr_is_not_1e_3():
    assert DEFAULT_LR_NOT_1E3 == [
        "adadelta",
        "adafactor",
        "adagrad",
        "adamax",
        "asgd",
        "lbfgs",
        "nadam",
        "rmsprop",
        "rprop",
    ]


@pytest.mark.parametrize("name", DEFAULT_LR_NOT_1E3)
def test_lr_scale_scales_the_optimizer_s_own_default_lr(name):
    # One rule taking every parameter: LBFGS allows a single group.
    optimizer = build_optimizer(
        torch.nn.Linear(2, 1), {"name": name}, [{"name": "scaled", "params": ".", "lr_scale": 0.5}]
    )
    expected = inspect.signature(OPTIMIZERS[name]).parameters["lr"].default * 0.5
    assert [group["lr"] for group in optimizer.param_groups] == [pytest.approx(expected, abs=0)]
