"""The semantics in docs/architecture.md, run through a real Trainer: lr sequences per optimizer step, exact."""

import math

import pytest
import torch
from torch.optim.lr_scheduler import OneCycleLR

from lightning_optim import OPTIMIZERS, OptimConfigError
from tests.models import MixinModel, loader, step_lrs, trainer
from tests.references import warmup_cosine


def fit(config, val_metric=None, data=None, val_data=None, **trainer_kwargs):
    model = MixinModel(config, val_metric)
    trainer(**trainer_kwargs).fit(model, data or loader(), val_data)
    return model


def test_mixin_takes_over_an_existing_configure_optimizers():
    model = MixinModel({"optimizer": {"name": "adamw", "lr": 0.01}})
    fitted = trainer(max_steps=1)
    fitted.fit(model, loader())
    assert type(fitted.optimizers[0]) is torch.optim.AdamW
    assert model.lrs == [[0.01]]


def test_warmup_cosine_per_group_base_lr_and_floor_with_total_from_the_trainer():
    config = {
        "optimizer": {"name": "sgd", "lr": 0.2},
        "param_groups": [{"name": "head", "params": "^head", "lr_scale": 0.1}],
        "scheduler": {"name": "warmup_cosine", "warmup_steps": 3, "min_lr_ratio": 0.25, "total_steps": None},
    }
    model = fit(config, max_epochs=2, limit_train_batches=6)  # 12 optimizer steps
    assert [group["name"] for group in model.trainer.optimizers[0].param_groups] == ["head", "default"]
    expected = [[warmup_cosine(k, base, 3, 12, 0.25) for base in (0.02, 0.2)] for k in range(12)]
    assert model.lrs == [pytest.approx(row, abs=1e-12) for row in expected]


def test_interval_step_counts_optimizer_steps_under_accumulation():
    config = {"optimizer": {"name": "sgd", "lr": 1.0}, "scheduler": {"name": "warmup_linear", "warmup_steps": 2}}
    model = fit(config, max_epochs=2, accumulate_grad_batches=4)  # 8 batches per epoch -> 4 optimizer steps
    assert model.trainer.global_step == 4
    assert step_lrs(model, 4) == [[0.0], [0.5], [1.0], [0.5]]
    assert model.lrs[:4] == [[0.0]] * 4  # constant within an accumulation window


@pytest.mark.parametrize(("accumulate", "frequency"), [(4, 2), (2, 4), (1, 3)])
def test_frequency_counts_optimizer_steps_not_batches(accumulate, frequency):
    config = {
        "optimizer": {"name": "sgd", "lr": 1.0},
        "scheduler": {"name": "exponential", "gamma": 0.5, "frequency": frequency},
    }
    model = fit(
        config, max_epochs=6, accumulate_grad_batches=accumulate, data=loader(samples=32, batch_size=2)
    )  # 16 batches per epoch
    steps = model.trainer.global_step
    assert steps == 6 * 16 // accumulate
    expected = [[0.5 ** (k - k % frequency)] for k in range(steps)]
    assert step_lrs(model, accumulate) == [pytest.approx(row) for row in expected]


def test_epoch_interval_with_frequency_counts_epochs():
    config = {
        "optimizer": {"name": "sgd", "lr": 1.0},
        "scheduler": {"name": "step", "step_size": 2, "gamma": 0.1, "interval": "epoch", "frequency": 2},
    }
    model = fit(config, max_epochs=5, limit_train_batches=2)
    per_epoch = [lrs[0] for lrs in model.lrs[::2]]
    assert per_epoch == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01])


def test_plateau_steps_only_after_a_validation_run_that_logged_the_metric():
    config = {
        "optimizer": {"name": "sgd", "lr": 1.0},
        "scheduler": {"name": "plateau", "monitor": "val/metric", "patience": 0, "factor": 0.5},
    }
    # Validation after epochs 1, 3, 5, 7; the metric stops improving at the second run.
    model = fit(
        config,
        val_metric=[1.0, 2.0, 3.0, 0.5],
        val_data=loader(),
        max_epochs=8,
        limit_train_batches=1,
        check_val_every_n_epoch=2,
    )
    per_epoch = [lrs[0] for lrs in model.lrs]
    assert per_epoch == [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    assert model.validation_runs == 4


def test_plateau_after_a_per_step_warmup():
    config = {
        "optimizer": {"name": "sgd", "lr": 1.0},
        "scheduler": {"name": "plateau", "monitor": "val/metric", "patience": 0, "warmup_steps": 4},
    }
    model = fit(config, val_metric=[1.0, 2.0, 3.0], val_data=loader(), max_epochs=4, limit_train_batches=2)
    # Validation after optimizer steps 2 (ignored: still warming up), 4, 6.
    assert [lrs[0] for lrs in model.lrs] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 0.1, 0.1])


def test_missing_plateau_metric_fails_in_the_sanity_check_and_lists_what_exists():
    config = {"optimizer": {"name": "sgd", "lr": 1.0}, "scheduler": {"name": "plateau", "monitor": "val/los"}}
    with pytest.raises(OptimConfigError) as raised:
        fit(config, val_data=loader(), num_sanity_val_steps=2)
    message = str(raised.value)
    assert "scheduler.monitor = 'val/los' was not logged" in message
    assert "Did you mean 'val/loss'?" in message and "Metrics that exist: ['val/loss']" in message


def test_missing_plateau_metric_without_sanity_check_fails_at_the_first_validation():
    config = {"optimizer": {"name": "sgd", "lr": 1.0}, "scheduler": {"name": "plateau", "monitor": "val/acc"}}
    model = MixinModel(config)
    with pytest.raises(OptimConfigError, match=r"'val/acc' was not logged .* Metrics that exist: \['val/loss'\]"):
        trainer(max_epochs=3, limit_train_batches=2).fit(model, loader(), loader())
    assert len(model.lrs) == 2


def test_onecycle_follows_torch_with_total_from_the_trainer():
    config = {
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
        "scheduler": {"name": "onecycle", "max_lr": 1.0},
    }
    model = fit(config, max_epochs=2)
    reference_optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    reference = OneCycleLR(reference_optimizer, max_lr=1.0, total_steps=16)
    expected = []
    for _ in range(16):
        expected.append([reference_optimizer.param_groups[0]["lr"]])
        reference_optimizer.step()
        reference.step()
    assert model.lrs == [pytest.approx(row, abs=1e-12) for row in expected]


def test_sequential_cosine_then_step():
    config = {
        "optimizer": {"name": "sgd", "lr": 1.0},
        "scheduler": {
            "name": "sequential",
            "schedulers": [{"name": "cosine", "total_steps": 4}, {"name": "step", "step_size": 2, "gamma": 0.5}],
            "milestones": [4],
        },
    }
    model = fit(config)
    expected = [1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4)), 1, 1, 0.5, 0.5]
    assert [lrs[0] for lrs in model.lrs] == pytest.approx(expected)


@pytest.mark.parametrize("name", [name for name in OPTIMIZERS if name not in ("sparse_adam", "muon")])
def test_every_optimizer_follows_the_schedule(name):
    config = {"optimizer": {"name": name, "lr": 0.01}, "scheduler": {"name": "warmup_linear", "warmup_steps": 2}}
    model = fit(config, max_steps=4)
    # LBFGS evaluates its closure (the training step) several times per optimizer step.
    per_step = [lrs[0] for index, lrs in enumerate(model.lrs) if index == 0 or lrs != model.lrs[index - 1]]
    assert per_step == pytest.approx([0.0, 0.005, 0.01, 0.005])
    assert model.trainer.global_step == 4
