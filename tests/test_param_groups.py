"""Parameter-group rules (by name, ndim, module class): first match wins, unmatched parameters form ``default``,
options and lr_scale apply; layer-wise lr decay against timm's ``param_groups_layer_decay``."""

import inspect

import pytest
import torch

from lightning_optim import OptimConfigError, build_optimizer
from lightning_optim.config.optimizer_sets import build_optimizer_set
from lightning_optim.config.validation import resolve_optim_config
from lightning_optim.optim.param_groups import UnmatchedRuleWarning, group_parameters
from lightning_optim.optim.registry import OPTIMIZERS, default_lr
from tests.references import TIMM_MATCH_PREV_GROUP, timm_layer_decay_scales, timm_layer_map


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


# ---------------------------------------------------------------------------------------------- ndim, module


class Block(torch.nn.Module):
    """A Transformer block of timm's ViT layout, with a parameter of its own (a layer scale)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(dim)
        self.attn = torch.nn.ModuleDict({"qkv": torch.nn.Linear(dim, 3 * dim), "proj": torch.nn.Linear(dim, dim)})
        self.norm2 = torch.nn.LayerNorm(dim)
        self.mlp = torch.nn.ModuleDict({"fc1": torch.nn.Linear(dim, 2 * dim), "fc2": torch.nn.Linear(2 * dim, dim)})
        self.gamma = torch.nn.Parameter(torch.ones(dim))


class ViT(torch.nn.Module):
    """timm's ``VisionTransformer`` parameter names and order, tiny: ``global_pool="avg"`` (the final norm after
    pooling, ``fc_norm``, as BEiT and MAE finetune) or ``"token"`` (the final norm ``norm`` before the head)."""

    def __init__(self, depth: int = 4, dim: int = 8, classes: int = 3, global_pool: str = "avg") -> None:
        super().__init__()
        self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = torch.nn.Parameter(torch.zeros(1, 5, dim))
        self.patch_embed = torch.nn.ModuleDict({"proj": torch.nn.Conv2d(3, dim, 2, 2)})
        self.blocks = torch.nn.ModuleList(Block(dim) for _ in range(depth))
        self.norm = torch.nn.LayerNorm(dim) if global_pool == "token" else torch.nn.Identity()
        self.fc_norm = torch.nn.LayerNorm(dim) if global_pool == "avg" else torch.nn.Identity()
        self.head = torch.nn.Linear(dim, classes)


class ScaledNorm(torch.nn.LayerNorm):
    """A subclass of LayerNorm: ``module: LayerNorm`` takes its parameters too."""


def test_ndim_selects_by_number_of_dimensions():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.LayerNorm(3), torch.nn.Conv1d(3, 1, 2))
    rules = [{"name": "vectors", "ndim": 1, "weight_decay": 0.0}, {"name": "kernels", "ndim": [3, 4]}]
    groups = group_parameters(model.named_parameters(), rules, {"weight_decay": 0.1})
    assert names_by_group(model, groups) == {
        "vectors": ["0.bias", "1.weight", "1.bias", "2.bias"],
        "kernels": ["2.weight"],
        "default": ["0.weight"],
    }


def test_module_selects_parameters_owned_directly_by_a_class_or_its_subclasses():
    model = torch.nn.ModuleDict(
        {"block": Block(4), "norm": ScaledNorm(4), "embed": torch.nn.Embedding(5, 4), "head": torch.nn.Linear(4, 2)}
    )
    rules = [
        {"name": "norms", "module": "LayerNorm"},
        {"name": "own", "module": "Block"},  # the model's own class: gamma only, not its submodules' parameters
        {"name": "embeddings_and_head", "module": ["Embedding", "Linear"], "params": "^(embed|head)\\."},
    ]
    groups = group_parameters(model.named_parameters(), rules, {}, module=model)
    assert names_by_group(model, groups) == {
        "norms": ["block.norm1.weight", "block.norm1.bias", "block.norm2.weight", "block.norm2.bias", "norm.weight",
                  "norm.bias"],
        "own": ["block.gamma"],
        "embeddings_and_head": ["embed.weight", "head.weight", "head.bias"],
        "default": ["block.attn.qkv.weight", "block.attn.qkv.bias", "block.attn.proj.weight", "block.attn.proj.bias",
                    "block.mlp.fc1.weight", "block.mlp.fc1.bias", "block.mlp.fc2.weight", "block.mlp.fc2.bias"],
    }  # fmt: skip


def test_several_keys_must_all_hold_and_the_first_matching_rule_wins():
    model = Block(4)
    optimizer = build_optimizer(
        model,
        {"name": "adamw", "lr": 1e-3, "weight_decay": 0.1},
        [
            {"name": "linear_biases", "module": "Linear", "ndim": 1, "params": "^attn\\.", "lr_scale": 2.0},
            {"name": "no_decay", "ndim": [0, 1], "weight_decay": 0.0},
        ],
    )
    by_name = {group["name"]: group for group in optimizer.param_groups}
    assert list(by_name) == ["linear_biases", "no_decay", "default"]
    assert [p.shape for p in by_name["linear_biases"]["params"]] == [torch.Size([12]), torch.Size([4])]
    assert (by_name["linear_biases"]["lr"], by_name["linear_biases"]["weight_decay"]) == (2e-3, 0.1)
    # norm1, norm2 (weight, bias), the MLP's biases and gamma; the attention's biases went to the first rule.
    assert len(by_name["no_decay"]["params"]) == 7 and by_name["no_decay"]["weight_decay"] == 0.0
    assert [p.ndim for p in by_name["default"]["params"]] == [2, 2, 2, 2]


def test_a_tied_weight_is_owned_by_both_modules():
    model = torch.nn.ModuleDict({"wte": torch.nn.Embedding(5, 4), "lm_head": torch.nn.Linear(4, 5, bias=False)})
    model["lm_head"].weight = model["wte"].weight
    groups = group_parameters(model.named_parameters(), [{"name": "head", "module": "Linear"}], {}, module=model)
    assert names_by_group(model, groups) == {"head": ["wte.weight"]}


def test_a_rule_by_shape_matching_nothing_is_reported_with_its_keys():
    with pytest.warns(UnmatchedRuleWarning, match=r"param_groups\[0\] \('cubes', ndim=5, module='Conv1d'\) matched no"):
        groups = group_parameters(Net().named_parameters(), [{"name": "cubes", "ndim": 5, "module": "Conv1d"}], {},
                                  module=Net())  # fmt: skip
    assert [group["name"] for group in groups] == ["default"]


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ([{"name": "a", "ndim": -1}], r"param_groups\[0\]\.ndim = -1 is not valid"),
        ([{"name": "a", "ndim": True}], r"param_groups\[0\]\.ndim = True is not valid"),
        ([{"name": "a", "ndim": []}], r"param_groups\[0\]\.ndim = \[\] is not valid"),
        ([{"name": "a", "ndim": [1, "2"]}], r"param_groups\[0\]\.ndim = \[1, '2'\] is not valid"),
        ([{"name": "a", "module": 3}], r"param_groups\[0\]\.module = 3 is not valid"),
        ([{"name": "a", "module": "torch.nn.LayerNorm"}], r"param_groups\[0\]\.module = 'torch.nn.LayerNorm'"),
        (
            [{"name": "a", "params": "x"}, {"name": "b", "module": ["Linear", "Batchnorm1d"]}],
            r"param_groups\[1\]\.module = \['Linear', 'Batchnorm1d'\] is not valid\. Did you mean 'BatchNorm1d'\?",
        ),
        ([{"name": "a", "weight_decay": 0.0}], r"param_groups\[0\] \('a'\) needs 'params' .*, 'ndim' .* or 'module'"),
    ],
)
def test_bad_shape_and_module_rules_name_the_key(rules, message):
    with pytest.raises(OptimConfigError, match=message):
        build_optimizer(Net(), {"name": "sgd", "lr": 0.1}, rules)


# ---------------------------------------------------------------------------------------------- layer_decay

VIT_LAYERS = r"^blocks\.(\d+)\."
TIMM_VIT_STEM = r"^cls_token|reg_token|pos_embed|patch_embed"
TIMM_VIT_BLOCKS = [(r"^blocks\.(\d+)", None), (r"^norm", TIMM_MATCH_PREV_GROUP)]
"""timm's ``VisionTransformer.group_matcher(coarse=False)``."""


def lr_by_parameter(model, optimizer):
    names = {id(p): n for n, p in model.named_parameters()}
    return {
        names[id(p)]: (group["lr"], group["weight_decay"]) for group in optimizer.param_groups for p in group["params"]
    }


def test_layer_decay_equals_timm_param_groups_layer_decay_on_a_vit():
    model = ViT(depth=4)
    lr, rate = 1e-3, 0.75
    optimizer = build_optimizer(
        model,
        resolve_optim_config({
            "optimizer": {"name": "adamw", "lr": lr, "weight_decay": 0.05},
            "param_groups": [{"name": "no_decay", "ndim": [0, 1], "weight_decay": 0.0}],
            "layer_decay": {"rate": rate, "layers": VIT_LAYERS},
        }).optimizer,
    )  # fmt: skip
    names = [name for name, _ in model.named_parameters()]
    timm_scales = timm_layer_decay_scales(timm_layer_map(names, TIMM_VIT_STEM, TIMM_VIT_BLOCKS), rate)
    expected = {
        name: (lr * timm_scales[name], 0.0 if p.ndim <= 1 else 0.05) for name, p in model.named_parameters()
    }  # timm: no weight decay for 1-D parameters (weight_decay_exclude_1d)
    assert lr_by_parameter(model, optimizer) == expected
    vectors = {
        name: lr for name, (lr, _) in expected.items() if name.endswith("bias") or name in ("cls_token", "pos_embed")
    }
    assert vectors == {
        "cls_token": lr * rate**5, "pos_embed": lr * rate**5, "patch_embed.proj.bias": lr * rate**5,
        **{f"blocks.{i}.{layer}.bias": lr * rate ** (4 - i) for i in range(4) for layer in
           ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")},
        "fc_norm.bias": lr, "head.bias": lr,
    }  # fmt: skip
    assert [group["name"] for group in optimizer.param_groups] == [
        *(f"no_decay/layer_{depth}" for depth in range(6)),
        *(f"default/layer_{depth}" for depth in range(6)),
    ]


def test_layer_decay_gives_the_final_norm_before_the_head_1_where_timm_joins_it_to_the_last_block():
    model = ViT(depth=2, global_pool="token")
    optimizer = build_optimizer(model, {"name": "sgd", "lr": 1.0}, layer_decay={"rate": 0.5, "layers": VIT_LAYERS})
    timm_scales = timm_layer_decay_scales(
        timm_layer_map([name for name, _ in model.named_parameters()], TIMM_VIT_STEM, TIMM_VIT_BLOCKS), 0.5
    )
    ours = {name: lr for name, (lr, _) in lr_by_parameter(model, optimizer).items()}
    assert {name for name in ours if ours[name] != timm_scales[name]} == {"norm.weight", "norm.bias"}
    assert (ours["norm.weight"], timm_scales["norm.weight"], ours["blocks.1.norm1.weight"]) == (1.0, 0.5, 0.5)


def test_layer_decay_multiplies_a_rule_s_lr_scale_and_its_own_lr():
    model = ViT(depth=2)
    optimizer = build_optimizer(
        model,
        {"name": "sgd", "lr": 0.1},
        [{"name": "head", "params": "^head\\.", "lr_scale": 10.0}, {"name": "embed", "params": "^patch", "lr": 0.4}],
        layer_decay={"rate": 0.5, "layers": VIT_LAYERS},
    )
    lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert (lrs["head/layer_3"], lrs["embed/layer_0"], lrs["default/layer_0"], lrs["default/layer_1"]) == (
        0.1 * 10.0 * 1.0,
        0.4 * 0.5**3,
        0.1 * 0.5**3,
        0.1 * 0.5**2,
    )


def test_layer_decay_counts_frozen_blocks_in_the_model_s_depth():
    model = ViT(depth=3)
    model.blocks[2].requires_grad_(False)
    optimizer = build_optimizer(model, {"name": "sgd", "lr": 1.0}, layer_decay={"rate": 0.5, "layers": VIT_LAYERS})
    assert {group["name"]: group["lr"] for group in optimizer.param_groups} == {
        "default/layer_0": 0.5**4,
        "default/layer_1": 0.5**3,
        "default/layer_2": 0.5**2,
        "default/layer_4": 1.0,
    }


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch 2.9")
def test_layer_decay_splits_muon_s_sides_by_depth():
    model = ViT(depth=2)
    config = {
        "optimizer": {"name": "muon", "lr": 0.02, "adjust_lr_fn": "match_rms_adamw"},
        "layer_decay": {"rate": 0.5, "layers": VIT_LAYERS},
    }
    optimizer = build_optimizer(model, resolve_optim_config(config).optimizer)
    lrs = {(group["name"], group["use_muon"]): group["lr"] for group in optimizer.param_groups}
    assert lrs == {
        ("muon/layer_0", True): 0.02 * 0.5**3,  # the patch embedding's kernel, cls_token and pos_embed
        ("muon/layer_1", True): 0.02 * 0.5**2,
        ("muon/layer_2", True): 0.02 * 0.5,
        ("aux/layer_0", False): 0.02 * 0.5**3,
        ("aux/layer_1", False): 0.02 * 0.5**2,
        ("aux/layer_2", False): 0.02 * 0.5,
        ("aux/layer_3", False): 0.02,
    }


def test_layer_decay_per_member_of_several_optimizers():
    model = torch.nn.ModuleDict({"vit": ViT(depth=2), "critic": torch.nn.Linear(3, 1)})
    spec = resolve_optim_config({"optimizers": {
        "vit": {"params": "^vit\\.", "optimizer": {"name": "sgd", "lr": 0.1},
                "layer_decay": {"rate": 0.5, "layers": r"^vit\.blocks\.(\d+)\."}},
        "critic": {"params": "^critic\\.", "optimizer": {"name": "sgd", "lr": 0.3}},
    }})  # fmt: skip
    assert spec.config["optimizers"]["vit"]["layer_decay"] == {"rate": 0.5, "layers": r"^vit\.blocks\.(\d+)\."}
    (vit, _), (critic, _) = build_optimizer_set(model, spec, run_length=lambda member: None)
    assert {group["name"]: group["lr"] for group in vit.param_groups} == {
        "default/layer_0": 0.1 * 0.5**3,
        "default/layer_1": 0.1 * 0.5**2,
        "default/layer_2": 0.1 * 0.5,
        "default/layer_3": 0.1,
    }
    assert [(group["name"], group["lr"]) for group in critic.param_groups] == [("default", 0.3)]


@pytest.mark.parametrize(
    ("layer_decay", "message"),
    [
        ({"rate": 0, "layers": VIT_LAYERS}, r"layer_decay\.rate = 0 is not valid\. Expected a number in \(0, 1\]"),
        ({"rate": 0.5, "layers": r"^blocks\.\d+"}, r"layer_decay\.layers = .* exactly one group.* it has 0"),
        ({"rate": 0.5, "layers": r"^block\.(\d+)\."}, r"layer_decay\.layers = .* matched no name"),
        ({"rate": 0.5, "layers": r"^(\w+)\.0"}, r"layer_decay\.layers = .* in 'blocks\.0\.gamma' it captures 'blocks'"),
        ({"rate": 0.5, "layers": VIT_LAYERS, "decay": 1}, r"layer_decay\.decay = 1 is not valid"),
    ],
)
def test_bad_layer_decay_names_the_key(layer_decay, message):
    with pytest.raises(OptimConfigError, match=message):
        build_optimizer(ViT(depth=2), {"name": "sgd", "lr": 0.1}, layer_decay=layer_decay)


@pytest.mark.parametrize("params", [b"bias$", 3, None], ids=["bytes", "int", "null"])
def test_a_group_regex_that_is_no_string_is_refused_when_the_section_is_checked(params):
    config = {"optimizer": {"name": "sgd", "lr": 0.1}, "param_groups": [{"name": "no_decay", "params": params}]}
    with pytest.raises(OptimConfigError) as error:
        resolve_optim_config(config)
    assert str(error.value) == (
        f"optim_config.param_groups[0].params = {params!r} is not valid. Expected a regex string matched against "
        "parameter names, e.g. 'bias$'."
    )


def test_a_layer_decay_regex_that_is_no_string_is_refused_when_the_section_is_checked():
    """A bytes regex compiles, but cannot search the parameters' names: it is refused with the section, not left to
    fail with a TypeError when the optimizer is built."""
    config = {"optimizer": {"name": "sgd", "lr": 0.1}, "layer_decay": {"rate": 0.5, "layers": b"^blocks[.]([0-9]+)"}}
    with pytest.raises(OptimConfigError) as error:
        resolve_optim_config(config)
    assert str(error.value) == (
        "optim_config.layer_decay.layers = b'^blocks[.]([0-9]+)' is not valid. Expected a regex string, "
        "e.g. '^blocks\\.(\\d+)\\.'."
    )
