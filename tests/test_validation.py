"""Bad input fails before the first training step with an error naming the key, the value and what would work."""

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
