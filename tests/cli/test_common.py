"""Counting a run's optimizer steps as Lightning does; the model built with its ``optim_config`` as plain data; the
run directory claimed by one run at a time."""

from __future__ import annotations

import os

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from lightning_optim import OptimConfigError, targets
from lightning_optim.cli.common import (
    app_flag,
    apply_app_settings,
    claimed_run_dir,
    compose_optim_config,
    count_optimizer_steps,
    instantiate_model,
    previous_outputs,
)


class _Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.estimated = None

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def configure_optimizers(self):
        self.estimated = self.trainer.estimated_stepping_batches
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(23, 1)), batch_size=2)  # 12 batches


@pytest.mark.parametrize(
    "trainer_cfg,steps_per_epoch",
    [
        ({"max_epochs": 2}, 12),
        ({"max_epochs": 3, "accumulate_grad_batches": 5}, 3),
        ({"max_epochs": 2, "limit_train_batches": 5, "accumulate_grad_batches": 2}, 3),
        ({"max_epochs": 2, "limit_train_batches": 0.5}, 6),
        ({"max_epochs": 4, "max_steps": 7}, 12),
        ({"max_epochs": -1, "max_steps": 9}, 12),
    ],
)
def test_count_matches_lightnings_estimate(trainer_cfg, steps_per_epoch):
    model = _Tiny()
    trainer = L.Trainer(
        **trainer_cfg,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(model)
    total, per_epoch = count_optimizer_steps(trainer_cfg, 12)
    assert total == model.estimated
    assert per_epoch == steps_per_epoch


def test_count_refuses_a_run_without_end():
    with pytest.raises(ValueError, match="no end"):
        count_optimizer_steps({"max_epochs": -1}, 10)


def compose_train(*overrides: str):
    with initialize_config_module("lightning_optim.conf", version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_a_target_inside_optimizer_is_never_called_and_the_projects_check_names_the_key(tmp_path):
    kept = tmp_path / "kept.txt"
    kept.write_text("written before the run")
    cfg = compose_train(f"+optimizer.x={{_target_:builtins.open,file:'{kept}',mode:w}}")
    with pytest.raises(OptimConfigError) as raised:
        instantiate_model(cfg.model, compose_optim_config(cfg))
    assert str(raised.value) == (
        f"optim_config.optimizer.x = {{'_target_': 'builtins.open', 'file': '{kept}', 'mode': 'w'}} is not valid. "
        "Expected an argument of SGD: lr, momentum, dampening, weight_decay, nesterov, maximize, foreach, "
        "differentiable, fused."
    )
    assert kept.read_text() == "written before the run"


def test_an_optimizer_target_that_is_no_optimizer_is_refused_by_the_projects_check():
    cfg = compose_train("++optimizer._target_=torch.optim.lr_scheduler.StepLR", "~optimizer.name")
    with pytest.raises(OptimConfigError) as raised:
        instantiate_model(cfg.model, compose_optim_config(cfg))
    assert str(raised.value) == (
        "optim_config.optimizer._target_ = 'torch.optim.lr_scheduler.StepLR' is not valid. Expected a dotted path to "
        "a torch.optim.optimizer.Optimizer subclass, e.g. 'torch.optim.AdamW'; it names type "
        "<class 'torch.optim.lr_scheduler.StepLR'>."
    )


@pytest.mark.parametrize(
    "overrides", [["experiment=cnn"], ["experiment=rnn"], ["experiment=transformer"], ["model=quadratic_mlp"]]
)
def test_every_demo_model_gets_the_optim_config_as_plain_data(overrides):
    cfg = compose_train(*overrides)
    built = instantiate_model(cfg.model, compose_optim_config(cfg))
    assert type(built).__name__ == OmegaConf.select(cfg, "model._target_").rsplit(".", 1)[1]
    assert built.optim_config["optimizer"] == OmegaConf.to_container(cfg.optimizer)
    assert type(built.optim_config["optimizer"]) is dict


def test_a_partial_in_the_model_config_is_the_users_and_still_instantiated():
    model_cfg = OmegaConf.create({"_target_": "lightning_optim.demos.QuadraticMLP", "_partial_": True, "hidden": 3})
    built = instantiate_model(model_cfg, {"optimizer": {"name": "sgd", "lr": 0.1}})
    assert built.optim_config["optimizer"] == {"name": "sgd", "lr": 0.1}


@pytest.mark.slow
@pytest.mark.parametrize(
    "spelling,value",
    [("no", "no"), ("off", "off"), ("'false'", "false"), ("${oc.env:TRUST_CKPT,false}", "False"), ("0", 0)],
)
def test_trust_checkpoint_that_is_no_boolean_is_refused_naming_the_key_the_value_and_what_works(
    spelling, value, monkeypatch
):
    monkeypatch.delenv("TRUST_CKPT", raising=False)
    cfg = compose_train(f"trust_checkpoint={spelling}")
    with pytest.raises(ValueError) as raised:
        apply_app_settings(cfg)
    assert str(raised.value) == (
        f"trust_checkpoint = {value!r} is not valid. Expected true or false, unquoted (e.g. trust_checkpoint=false): "
        "a string such as 'no' or 'false' is not read as a boolean. From an environment variable, decode it: "
        "trust_checkpoint='${oc.decode:${oc.env:NAME,false}}'."
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "spelling,environment,expected",
    [
        ("true", None, True),
        ("False", None, False),
        ("'${oc.decode:${oc.env:TRUST_CKPT,false}}'", None, False),
        ("'${oc.decode:${oc.env:TRUST_CKPT,false}}'", "true", True),
    ],
)
def test_trust_checkpoint_as_a_boolean_is_read_as_it_says(spelling, environment, expected, monkeypatch):
    monkeypatch.delenv("TRUST_CKPT", raising=False)
    if environment is not None:
        monkeypatch.setenv("TRUST_CKPT", environment)
    cfg = compose_train(f"trust_checkpoint={spelling}")
    apply_app_settings(cfg)
    assert app_flag(cfg, "trust_checkpoint") is expected


@pytest.mark.slow
@pytest.mark.parametrize(
    "override,message",
    [
        ("+trainer.enable_checkpointing=no", "trainer.enable_checkpointing = 'no' is not valid. Expected true or"),
        ("+trainer.inference_mode='false'", "trainer.inference_mode = 'false' is not valid. Expected true or false,"),
        ("trainer.deterministic=off", "trainer.deterministic = 'off' is not valid. Expected true or false or 'warn',"),
    ],
)
def test_a_trainer_flag_that_is_no_boolean_is_refused(override, message):
    with pytest.raises(ValueError) as raised:
        apply_app_settings(compose_train(override))
    assert str(raised.value).startswith(message)


def test_a_trainer_flag_keeps_the_strings_lightning_documents():
    apply_app_settings(compose_train("trainer.deterministic=warn", "+trainer.enable_checkpointing=false"))


@pytest.mark.parametrize(
    "override,message",
    [
        (
            "allowed_target_modules=mypkg",
            "allowed_target_modules = 'mypkg' is not valid. Expected a list of module names, e.g. "
            "allowed_target_modules=[mypkg.optim].",
        ),
        (
            "allowed_target_modules=[venv.__main__]",
            "allowed_target_modules: allow_target_modules('venv.__main__') is not valid. Expected a dotted module name "
            "such as 'mypkg.optim'; '__main__' is never imported from a config (importing it runs code).",
        ),
    ],
)
def test_allowed_target_modules_must_be_module_names(override, message, monkeypatch):
    monkeypatch.setattr(targets, "_allowed", list(targets.DEFAULT_TARGET_MODULES))
    with pytest.raises(ValueError) as raised:
        apply_app_settings(compose_train(override))
    assert str(raised.value) == message
    assert targets.allowed_target_modules() == targets.DEFAULT_TARGET_MODULES


def test_a_claimed_run_dir_is_refused_to_a_second_claim_naming_the_dir_and_the_holder(tmp_path):
    run_dir = tmp_path / "run"
    with claimed_run_dir(run_dir), pytest.raises(FileExistsError) as refused, claimed_run_dir(run_dir):
        pass
    assert str(refused.value) == (
        f"The run directory {run_dir} is in use by another run (process {os.getpid()}); two runs there would write "
        "into each other's checkpoints and curves. Start this run in another directory (leave hydra.run.dir at its "
        "default, or name an unused one), or wait for that run to end and then resume it with "
        f"ckpt_path=<{run_dir}/checkpoints/last.ckpt>."
    )


def test_a_run_dir_is_free_again_once_its_run_ended_and_the_claim_is_no_output(tmp_path):
    run_dir = tmp_path / "run"
    with claimed_run_dir(run_dir):
        pass
    with claimed_run_dir(run_dir):  # a resume into the same directory, as after any run
        assert previous_outputs(run_dir) == []
