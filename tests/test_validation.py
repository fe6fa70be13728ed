"""Bad input fails before the first training step with an error naming the key, the value and what would work."""

import warnings

import pytest
import torch

from lightning_optim import OptimConfigError, validate_optim_config
from tests.models import MixinModel, loader, trainer


def sgd(**scheduler):
    return {"optimizer": {"name": "sgd", "lr": 0.1}, "scheduler": scheduler or None}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"optimizer": {"name": "adamm"}},
            r"optimizer\.name = 'adamm' is not valid\. Did you mean 'adam'\? Expected one of: sgd, adam",
        ),
        (
            {"optimizer": {"name": "adam", "weight_decy": 0.1}},
            r"optimizer\.weight_decy = 0\.1 .* Did you mean 'weight_decay'\? Expected an argument of Adam: lr, betas",
        ),
        (
            {"optimizer": {"name": "sgd", "lr": -0.1}},
            r"optimizer\.lr = -0\.1 is not valid\. Expected a learning rate >= 0",
        ),
        ({"optimizer": {"lr": 0.1}}, r"optimizer needs 'name' \(one of: sgd, adam"),
        ({"optimizers": {"name": "sgd"}}, r"optim_config\.optimizers = .* Did you mean 'optimizer'\?"),
        ({"param_groups": []}, r"optim_config\.optimizer is required"),
        (sgd(name="cosin"), r"scheduler\.name = 'cosin' is not valid\. Did you mean 'cosine'\?"),
        (sgd(name="warmup_cosine", warmup_step=5), r"scheduler\.warmup_step = 5 .* Did you mean 'warmup_steps'\?"),
        (
            sgd(name="plateau"),
            r"scheduler\.monitor = None is not valid\. Expected the name of a logged validation metric",
        ),
        (
            sgd(name="step", step_size=2, interval="batch"),
            r"scheduler\.interval = 'batch' .* 'step' \(optimizer steps\) or 'epoch'",
        ),
        (sgd(name="step", step_size=2, frequency=0), r"scheduler\.frequency = 0 .* an integer >= 1"),
        (
            sgd(name="warmup_cosine", warmup_steps=20, total_steps=10),
            r"optim_config\.scheduler: total_steps = 10 is not valid; expected an integer >= warmup_steps \(20\)",
        ),
        (sgd(name="step", step_size=0), r"optim_config\.scheduler: step_size = 0"),
        (sgd(_target_="os.system"), r"scheduler\._target_ = 'os\.system' .*\.LRScheduler subclass"),
        (sgd(_target_="torch.optim.lr_scheduler.ReduceLROnPlateau"), r"name: plateau, which steps after validation"),
        (
            sgd(name="sequential", schedulers=[{"name": "cosine", "total_steps": 5}]),
            r"scheduler\.schedulers = .* two or more",
        ),
        (
            sgd(name="sequential", schedulers=[{"name": "plateau"}, {"name": "step"}], milestones=[3]),
            r"schedulers\[0\]\.name = 'plateau'",
        ),
        (
            {"optimizer": {"name": "sgd"}, "param_groups": [{"name": "b", "params": "["}]},
            r"param_groups\[0\]\.params = '\[' is not valid",
        ),
    ],
)
def test_bad_config_is_refused_with_the_key_and_value(config, message):
    with pytest.raises(OptimConfigError, match=message):
        validate_optim_config(config)


def test_model_construction_refuses_bad_config():
    with pytest.raises(OptimConfigError, match=r"optimizer\.name = 'sgdd'"):
        MixinModel({"optimizer": {"name": "sgdd"}})


def test_warmup_longer_than_the_run_fails_before_the_first_step():
    model = MixinModel(sgd(name="warmup_cosine", warmup_steps=50))
    with pytest.raises(OptimConfigError, match=r"scheduler\.warmup_steps = 50 .* at most the run's 16 steps"):
        trainer(max_epochs=2).fit(model, loader())
    assert model.lrs == []


def test_total_steps_null_needs_a_bounded_run():
    model = MixinModel(sgd(name="warmup_cosine", warmup_steps=2))
    with pytest.raises(OptimConfigError, match=r"scheduler\.total_steps = None .* no max_steps or max_epochs"):
        trainer(max_epochs=-1).fit(model, loader())


def test_lbfgs_refuses_several_parameter_groups():
    config = {"optimizer": {"name": "lbfgs"}, "param_groups": [{"name": "head", "params": "^head"}]}
    with pytest.raises(OptimConfigError, match=r"param_groups = \['head', 'default'\] .* LBFGS"):
        MixinModel(config).configure_optimizers()


def test_sparse_adam_refuses_dense_gradients():
    with pytest.raises(OptimConfigError, match=r"parameters \['encoder\.weight', 'encoder\.bias', .*\] get dense"):
        MixinModel({"optimizer": {"name": "sparse_adam"}}).configure_optimizers()


def test_torch_scheduler_arguments_are_checked():
    model = torch.nn.Linear(2, 1)
    from lightning_optim import build_optimizer, build_scheduler

    optimizer = build_optimizer(model, {"name": "adam", "lr": 0.1})
    with pytest.raises(OptimConfigError, match=r"CyclicLR refused .*'mode': 'triangular3'.*: mode is invalid"):
        build_scheduler(
            optimizer,
            {"name": "cyclic", "base_lr": 0.01, "max_lr": 0.1, "cycle_momentum": True, "mode": "triangular3"},
            10,
        )


def adam(**options):
    return {"optimizer": {"name": "adam", **options}}


def rule(**options):
    return {"optimizer": {"name": "sgd", "lr": 0.1}, "param_groups": [{"name": "head", "params": "^head", **options}]}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (adam(lr="abc"), r"optimizer\.lr = 'abc' is not valid\. Expected a number, e\.g\. 0\.001\.$"),
        (
            adam(betas=0.9),
            r"optimizer\.betas = 0\.9 is not valid\. Expected a pair of numbers, e\.g\. \[0\.9, 0\.999\]\.$",
        ),
        (adam(betas=[0.9]), r"optimizer\.betas = \[0\.9\] is not valid\. Expected a pair of numbers"),
        (adam(amsgrad="yes"), r"optimizer\.amsgrad = 'yes' is not valid\. Expected true or false, e\.g\. false\.$"),
        (adam(fused=1), r"optimizer\.fused = 1 is not valid\. Expected true or false or null, e\.g\. true\.$"),
        (
            {"optimizer": {"name": "lbfgs", "max_iter": 2.5}},
            r"optimizer\.max_iter = 2\.5 is not valid\. Expected an integer, e\.g\. 20\.$",
        ),
        (
            {"optimizer": {"_target_": "torch.optim.AdamW", "betas": "0.9,0.99"}},
            r"optimizer\.betas = '0\.9,0\.99' is not valid\. Expected a pair of numbers, e\.g\. \[0\.9, 0\.999\]\.$",
        ),
        (rule(lr="fast"), r"param_groups\[0\]\.lr = 'fast' is not valid\. Expected a number, e\.g\. 0\.001\.$"),
        (rule(momentum=[0.9]), r"param_groups\[0\]\.momentum = \[0\.9\] is not valid\. Expected a number, e\.g\. 0\.$"),
        (rule(lr_scale=True), r"param_groups\[0\]\.lr_scale = True is not valid\. Expected a number >= 0"),
        (
            sgd(name="warmup_cosine", warmup_steps="abc"),
            r"scheduler\.warmup_steps = 'abc' is not valid\. Expected an integer, e\.g\. 0\.$",
        ),
        (
            sgd(name="warmup_cosine", total_steps="abc"),
            r"scheduler\.total_steps = 'abc' is not valid\. Expected an integer or null, e\.g\. 100\.$",
        ),
        (
            sgd(name="step", step_size=2.5),
            r"scheduler\.step_size = 2\.5 is not valid\. Expected an integer, e\.g\. 100\.$",
        ),
        (sgd(name="step", step_size=True), r"scheduler\.step_size = True is not valid\. Expected an integer"),
        (sgd(name="step", step_size=2, gamma="0.5"), r"scheduler\.gamma = '0\.5' is not valid\. Expected a number"),
        (
            sgd(name="multistep", milestones=[10, 20.5]),
            r"scheduler\.milestones = \[10, 20\.5\] is not valid\. Expected a list of integers, e\.g\. \[100\]\.$",
        ),
        (
            sgd(name="step", step_size=2, frequency=1.5),
            r"scheduler\.frequency = 1\.5 is not valid\. Expected an integer, e\.g\. 1\.$",
        ),
        (
            sgd(name="plateau", monitor="val/loss", patience="2"),
            r"scheduler\.patience = '2' is not valid\. Expected an integer, e\.g\. 10\.$",
        ),
        (
            sgd(name="onecycle", max_lr="0.1"),
            r"scheduler\.max_lr = '0\.1' is not valid\. Expected a number or a list of numbers, e\.g\. 0\.1\.$",
        ),
        (
            sgd(name="cyclic", base_lr=0.01, max_lr=0.1, mode=3),
            r"scheduler\.mode = 3 is not valid\. Expected one of 'triangular', 'triangular2', 'exp_range'\.$",
        ),
        (
            sgd(_target_="torch.optim.lr_scheduler.StepLR", step_size="2"),
            r"scheduler\.step_size = '2' is not valid\. Expected an integer, e\.g\. 100\.$",
        ),
        (
            sgd(
                name="sequential", schedulers=[{"name": "cosine", "total_steps": "5"}, {"name": "step", "step_size": 2}]
            ),
            r"scheduler\.schedulers\[0\]\.total_steps = '5' is not valid\. Expected an integer or null",
        ),
    ],
)
def test_a_value_of_the_wrong_type_names_the_key_the_value_and_an_example(config, message):
    with pytest.raises(OptimConfigError, match=r"^optim_config\." + message):
        validate_optim_config(config)


def test_integer_keys_take_integral_floats_and_return_ints():
    validated = validate_optim_config(
        {
            "optimizer": {"name": "lbfgs", "max_iter": 1e1},
            "scheduler": {"name": "warmup_cosine", "warmup_steps": 1e2, "total_steps": 1e9, "frequency": 2.0},
        }
    )
    assert validated["optimizer"] == {"name": "lbfgs", "max_iter": 10}
    assert validated["scheduler"] == {
        "name": "warmup_cosine",
        "warmup_steps": 100,
        "total_steps": 10**9,
        "frequency": 2,
    }
    assert [type(validated["scheduler"][key]) for key in ("warmup_steps", "total_steps", "frequency")] == [int] * 3
    milestones = validate_optim_config(sgd(name="multistep", milestones=[1e1, 2e1]))["scheduler"]["milestones"]
    assert milestones == [10, 20] and all(type(m) is int for m in milestones)


def test_a_model_trains_with_integral_float_counts():
    model = MixinModel(sgd(name="step", step_size=4.0, gamma=0.5))
    trainer(max_epochs=1).fit(model, loader())
    assert [round(lrs[0], 4) for lrs in model.lrs] == [0.1] * 4 + [0.05] * 4


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (adam(lr=float("nan")), r"optimizer\.lr = nan"),
        (adam(lr=float("inf")), r"optimizer\.lr = inf"),
        (adam(betas=[0.9, float("inf")]), r"optimizer\.betas\[1\] = inf"),
        (adam(eps=float("-inf")), r"optimizer\.eps = -inf"),
        (rule(weight_decay=float("nan")), r"param_groups\[0\]\.weight_decay = nan"),
        (rule(lr_scale=float("inf")), r"param_groups\[0\]\.lr_scale = inf"),
        (sgd(name="warmup_cosine", min_lr_ratio=float("-inf")), r"scheduler\.min_lr_ratio = -inf"),
        (sgd(name="step", step_size=2, gamma=float("nan")), r"scheduler\.gamma = nan"),
        (sgd(name="onecycle", max_lr=[0.1, float("nan")]), r"scheduler\.max_lr\[1\] = nan"),
    ],
)
def test_nonfinite_numbers_are_refused_naming_the_key(config, message):
    with pytest.raises(
        OptimConfigError, match=r"^optim_config\." + message + r" is not valid\. Expected a finite number\.$"
    ):
        validate_optim_config(config)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            adam(lr=1e300),
            r"optimizer\.lr = 1e\+300 is not valid\. Expected a learning rate >= 0 and at most 3\.403e\+38",
        ),
        (adam(lr=3.5e38), r"optimizer\.lr = 3\.5e\+38 is not valid\. Expected a learning rate >= 0 and at most"),
        (rule(lr=1e39), r"param_groups\[0\]\.lr = 1e\+39 is not valid\. Expected a learning rate >= 0 and at most"),
        (
            rule(lr_scale=1e308),
            r"param_groups\[0\]\.lr_scale = 1e\+308 is not valid\. Expected a number >= 0 that keeps the group's lr "
            r"\(0\.1 x lr_scale = 1e\+307\) at most 3\.403e\+38 \(float32's largest\), e\.g\. 10\.$",
        ),
        (rule(lr=1e300, lr_scale=1e300), r"param_groups\[0\]\.lr = 1e\+300 is not valid"),
        (
            rule(lr=1e30, lr_scale=1e10),
            r"param_groups\[0\]\.lr_scale = 10000000000\.0 is not valid\. .*\(1e\+30 x lr_scale = 1e\+40\)",
        ),
        (
            {"optimizers": {"g": {"params": "^", "optimizer": {"name": "sgd", "lr": 1e300}}}},
            r"optimizers\.g\.optimizer\.lr = 1e\+300 is not valid\. Expected a learning rate >= 0 and at most",
        ),
    ],
)
def test_learning_rates_beyond_float32_are_refused_naming_the_key(config, message):
    with pytest.raises(OptimConfigError, match=r"^optim_config\." + message):
        validate_optim_config(config)


def test_lr_scale_is_checked_against_the_optimizers_own_default_lr():
    config = {
        "optimizer": {"name": "adadelta"},
        "param_groups": [{"name": "head", "params": "^head", "lr_scale": 1e39}],
    }
    with pytest.raises(OptimConfigError, match=r"lr_scale = 1e\+39 is not valid\. .*\(1\.0 x lr_scale = 1e\+39\)"):
        validate_optim_config(config)


def test_the_largest_float32_lr_and_a_large_lr_scale_within_it_are_taken():
    assert validate_optim_config(adam(lr=3.4e38))["optimizer"]["lr"] == 3.4e38
    assert validate_optim_config(rule(lr_scale=1e30))["param_groups"][0]["lr_scale"] == 1e30


def test_zero_lr_warns_that_the_parameters_will_not_change():
    config = {
        "optimizer": {"name": "sgd", "lr": 0},
        "param_groups": [
            {"name": "head", "params": "^head", "lr_scale": 0},
            {"name": "bias", "params": "bias", "lr": 0.0},
        ],
    }
    with pytest.warns(UserWarning) as caught:
        validate_optim_config(config)
    assert [str(warning.message) for warning in caught] == [
        f"optim_config.{key}: {whose} will not change (every update is scaled by the lr). Use a value > 0, or freeze "
        "those parameters with requires_grad=False instead."
        for key, whose in [
            ("optimizer.lr = 0", "the parameters"),
            ("param_groups[0].lr_scale = 0", "the parameters of group 'head'"),
            ("param_groups[1].lr = 0.0", "the parameters of group 'bias'"),
        ]
    ]
    # onecycle sets the lr from its own max_lr, whatever the optimizer's lr.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate_optim_config({"optimizer": {"name": "sgd", "lr": 0}, "scheduler": {"name": "onecycle", "max_lr": 0.1}})


@pytest.mark.parametrize("ratio", [2.0, -0.1])
def test_warmup_ratio_outside_zero_to_one_names_warmup_ratio(ratio):
    message = (
        rf"^optim_config\.scheduler\.warmup_ratio = {ratio} is not valid\. Expected a fraction of the run from 0 to 1"
    )
    with pytest.raises(OptimConfigError, match=message):
        validate_optim_config(sgd(name="warmup_cosine", warmup_ratio=ratio))
