"""Schedule-free optimizers: the mixin's train/eval switching and BatchNorm recompute against a plain-torch loop doing
the package's documented calls, eval-mode checkpoints, runs unchanged by a save, exact resume."""

from __future__ import annotations

import contextlib
import copy
import inspect
import itertools
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf
from torch import nn

from lightning_optim import OptimConfigError, OptimMixin
from lightning_optim.callbacks import LRMonitor
from lightning_optim.clipping.fused_step import folds_into_step
from lightning_optim.fit.driver import FitDriver
from lightning_optim.fit.schedule_free import in_train_mode
from lightning_optim.optim.registry import EXTRA_OPTIMIZER_INFOS
from tests.models import GAN, loader, trainer

schedulefree = pytest.importorskip("schedulefree")

CLASSES = {
    "adamw_schedulefree": schedulefree.AdamWScheduleFree,
    "sgd_schedulefree": schedulefree.SGDScheduleFree,
    "radam_schedulefree": schedulefree.RAdamScheduleFree,
}
OPTIONS = {
    "adamw_schedulefree": {"lr": 0.05, "warmup_steps": 3, "weight_decay": 0.01},
    "sgd_schedulefree": {"lr": 0.2, "warmup_steps": 3},
    "radam_schedulefree": {"lr": 0.05},
}
CONF = Path(__file__).resolve().parents[1] / "lightning_optim" / "conf"
RECOMPUTE = 3
"""Training batches of the BatchNorm recompute (the loader has 8)."""


def network() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))


class BatchNormNet(OptimMixin, L.LightningModule):
    """A regression MLP with BatchNorm that records each validation batch's loss."""

    def __init__(self, optim_config: Any) -> None:
        super().__init__()
        self.net = network()
        self.optim_config = optim_config
        self.val_losses: list[torch.Tensor] = []

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.net(inputs)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        return nn.functional.mse_loss(self(inputs), targets)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        inputs, targets = batch
        loss = nn.functional.mse_loss(self(inputs), targets)
        self.val_losses.append(loss.detach().clone())
        self.log("val/loss", loss)

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self(batch[0])


def config(name: str, recompute: int = RECOMPUTE) -> dict[str, Any]:
    return {"optimizer": {"name": name, **OPTIONS[name], "bn_recompute_batches": recompute}}


def reference(name: str, epochs: int, recompute: int = RECOMPUTE, eval_at_step: int | None = None) -> dict[str, Any]:
    """A plain-torch loop doing the package's documented calls: ``optimizer.train()`` before training steps,
    ``optimizer.eval()`` and the README's BatchNorm recompute (model in train mode, ``no_grad``) before evaluating.

    Returns the validation losses, the final (eval-mode) state dict and, with ``eval_at_step``, the eval-mode state
    dict and optimizer state after that many steps, computed on a copy so the run goes on untouched.
    """
    net = network()
    optimizer = CLASSES[name](net.parameters(), **OPTIONS[name])
    train, val = loader(), loader(samples=16, seed=1)
    result: dict[str, Any] = {"val_losses": []}

    def to_eval(model: nn.Module, opt: torch.optim.Optimizer) -> None:
        model.train()
        opt.eval()
        with torch.no_grad():
            for inputs, _ in itertools.islice(train, recompute):
                model(inputs)
        model.eval()

    steps = 0
    for _ in range(epochs):
        net.train()
        optimizer.train()
        for inputs, targets in train:
            optimizer.zero_grad()
            nn.functional.mse_loss(net(inputs), targets).backward()
            optimizer.step()
            steps += 1
            if steps == eval_at_step:
                twin_net, twin_optimizer = copy.deepcopy((net, optimizer))
                to_eval(twin_net, twin_optimizer)
                result["eval_state"] = twin_net.state_dict()
                result["eval_optimizer"] = twin_optimizer.state_dict()
        to_eval(net, optimizer)
        with torch.no_grad():
            for inputs, targets in val:
                result["val_losses"].append(nn.functional.mse_loss(net(inputs), targets))
    result["state"] = net.state_dict()
    return result


def fit(name: str, epochs: int, recompute: int = RECOMPUTE, **trainer_kwargs: Any) -> BatchNormNet:
    model = BatchNormNet(config(name, recompute))
    trainer(max_epochs=epochs, **trainer_kwargs).fit(model, loader(), loader(samples=16, seed=1))
    return model


def assert_same_state(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert list(ours) == list(theirs)
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CLASSES))
def test_validation_loss_equals_a_manual_loop_doing_the_documented_calls(name):
    model = fit(name, epochs=2)
    expected = reference(name, epochs=2)
    assert torch.equal(torch.stack(model.val_losses), torch.stack(expected["val_losses"]))
    assert_same_state(model.net.state_dict(), expected["state"])  # after fit: the evaluation weights


def test_predict_after_training_moved_the_weights_runs_at_the_evaluation_weights():
    model = BatchNormNet(config("adamw_schedulefree"))
    run = trainer(max_epochs=2)
    run.fit(model, loader(), loader(samples=16, seed=1))
    run.optimizers[0].train()  # as a user's own code might leave it
    predictions = run.predict(model, loader(samples=16, seed=1))
    net = network()
    net.load_state_dict(reference("adamw_schedulefree", epochs=2)["state"])
    net.eval()
    with torch.no_grad():
        expected = [net(inputs) for inputs, _ in loader(samples=16, seed=1)]
    assert torch.equal(torch.cat(predictions), torch.cat(expected))


def test_without_the_mixins_switching_validation_is_at_the_training_weights(monkeypatch):
    """What the mixin prevents: the same run with the optimizer never switched validates elsewhere."""
    model = BatchNormNet(config("adamw_schedulefree"))
    monkeypatch.setattr(FitDriver, "on_validation_start", lambda *args: None)
    monkeypatch.setattr(FitDriver, "on_train_end", lambda *args: None)
    trainer(max_epochs=1).fit(model, loader(), loader(samples=16, seed=1))
    expected = reference("adamw_schedulefree", epochs=1)
    assert not torch.equal(torch.stack(model.val_losses), torch.stack(expected["val_losses"]))


def test_a_checkpoint_saved_during_training_holds_the_evaluation_weights(tmp_path):
    every = ModelCheckpoint(tmp_path, every_n_train_steps=3, save_top_k=-1, filename="{step}")
    fit("adamw_schedulefree", epochs=1, callbacks=[every], enable_checkpointing=True)
    saved = torch.load(tmp_path / "step=3.ckpt", weights_only=True)
    expected = reference("adamw_schedulefree", epochs=1, eval_at_step=3)
    state = {key.removeprefix("net."): value for key, value in saved["state_dict"].items()}
    assert_same_state(state, expected["eval_state"])
    groups = saved["optimizer_states"][0]["param_groups"]
    assert [group["train_mode"] for group in groups] == [False]
    assert groups[0]["k"] == expected["eval_optimizer"]["param_groups"][0]["k"] == 3


@pytest.mark.slow
@pytest.mark.parametrize("name", ["adamw_schedulefree", "sgd_schedulefree"])
def test_a_run_saving_checkpoints_ends_as_one_that_does_not(tmp_path, name):
    every = ModelCheckpoint(tmp_path, every_n_train_steps=3, save_top_k=-1, save_last=True)
    saving = fit(name, epochs=2, callbacks=[every], enable_checkpointing=True)
    plain = fit(name, epochs=2)
    assert torch.equal(torch.stack(saving.val_losses), torch.stack(plain.val_losses))
    assert_same_state(saving.state_dict(), plain.state_dict())
    assert len(list(tmp_path.glob("*.ckpt"))) == 6  # steps 3, 6, 9, 12, 15 and last


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path):
    checkpoint = ModelCheckpoint(tmp_path, save_top_k=-1, filename="{epoch}")
    fit("adamw_schedulefree", epochs=1, callbacks=[checkpoint], enable_checkpointing=True)
    resumed = BatchNormNet(config("adamw_schedulefree"))
    trainer(
        max_epochs=3,
        callbacks=[ModelCheckpoint(tmp_path, save_top_k=-1, filename="{epoch}")],
        enable_checkpointing=True,
    ).fit(resumed, loader(), loader(samples=16, seed=1), ckpt_path=tmp_path / "epoch=0.ckpt")
    expected = reference("adamw_schedulefree", epochs=3)
    assert torch.equal(torch.stack(resumed.val_losses), torch.stack(expected["val_losses"][4:]))
    assert_same_state(resumed.net.state_dict(), expected["state"])


def test_batchnorm_without_recompute_warns_once_naming_the_key():
    with pytest.warns(UserWarning, match="bn_recompute_batches") as record:
        fit("adamw_schedulefree", epochs=2, recompute=0)
    assert sum("bn_recompute_batches" in str(w.message) for w in record) == 1


@pytest.mark.slow
def test_recompute_leaves_the_random_stream_and_the_shuffle_alone():
    """Recompute batches come from a second pass over a shuffled loader: the run's own order must not change."""

    class Recording(BatchNormNet):
        def __init__(self, optim_config: Any) -> None:
            super().__init__(optim_config)
            self.batches: list[torch.Tensor] = []

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.batches.append(batch[0])
            return super().training_step(batch, batch_idx)

    def run(recompute: int) -> Recording:
        model = Recording(config("sgd_schedulefree", recompute))
        shuffled = torch.utils.data.DataLoader(loader().dataset, batch_size=4, shuffle=True)
        torch.manual_seed(1)
        with pytest.warns(UserWarning) if recompute == 0 else contextlib.nullcontext():
            trainer(max_epochs=2).fit(model, shuffled, loader(samples=16, seed=1))
        return model

    assert torch.equal(torch.stack(run(0).batches), torch.stack(run(RECOMPUTE).batches))


@pytest.mark.parametrize(
    "section",
    [{"name": "cosine", "total_steps": 10}, {"name": "wsd", "total_steps": 10}, {"name": "step", "step_size": 2}],
)
def test_a_decaying_schedule_warns_why(section):
    with pytest.warns(UserWarning, match=r"scheduler\.name = '.*' changes the lr of the schedule-free .*warmup_steps"):
        BatchNormNet({"optimizer": {"name": "adamw_schedulefree"}, "scheduler": section})


def test_no_schedule_or_warmup_constant_does_not_warn(recwarn):
    BatchNormNet({"optimizer": {"name": "adamw_schedulefree"}})
    BatchNormNet(
        {"optimizer": {"name": "sgd_schedulefree"}, "scheduler": {"name": "warmup_constant", "warmup_steps": 2}}
    )
    assert not [w for w in recwarn if "schedule-free" in str(w.message)]


def test_bn_recompute_batches_is_checked_and_not_passed_to_the_constructor():
    with pytest.raises(
        OptimConfigError, match=r"optimizer\.bn_recompute_batches = -1 is not valid. Expected an integer"
    ):
        BatchNormNet(config("sgd_schedulefree", recompute=-1))
    model = BatchNormNet(config("sgd_schedulefree", recompute=5))
    optimizer = model.configure_optimizers()
    assert type(optimizer) is schedulefree.SGDScheduleFree
    assert "bn_recompute_batches" not in optimizer.defaults


def test_an_unknown_constructor_key_still_fails():
    with pytest.raises(OptimConfigError, match=r"optimizer\.warmup = 3 is not valid. Did you mean 'warmup_steps'"):
        BatchNormNet({"optimizer": {"name": "adamw_schedulefree", "warmup": 3}})


def test_a_missing_extra_gives_the_pip_install_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "schedulefree", None)
    with pytest.raises(
        OptimConfigError, match=r"needs the schedulefree package.*pip install 'lightning-optim\[schedulefree\]'"
    ):
        BatchNormNet({"optimizer": {"name": "radam_schedulefree"}})


def test_torch_names_do_not_import_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "schedulefree", None)
    BatchNormNet({"optimizer": {"name": "adamw"}})


@pytest.mark.parametrize("name", list(CLASSES))
def test_clipping_is_never_folded_into_a_schedule_free_step(name):
    optimizer = EXTRA_OPTIMIZER_INFOS[name].load().cls(network().parameters())
    assert not folds_into_step(optimizer)


@pytest.mark.parametrize("name", list(CLASSES))
def test_conf_file_writes_out_the_class_defaults_and_the_recompute_key(name):
    values = OmegaConf.to_container(OmegaConf.load(CONF / EXTRA_OPTIMIZER_INFOS[name].conf_file))
    assert values.pop("name") == name
    assert values.pop("bn_recompute_batches") == 0
    parameters = inspect.signature(CLASSES[name].__init__).parameters
    defaults = {key: p.default for key, p in parameters.items() if key not in ("self", "params")}
    assert list(values) == list(defaults), "every constructor argument written out, in signature order"
    assert {key: tuple(v) if isinstance(v, list) else v for key, v in values.items()} == defaults
    optimizer = BatchNormNet({"optimizer": {"name": name, **values}}).configure_optimizers()
    assert type(optimizer) is CLASSES[name]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["adamw_schedulefree", "radam_schedulefree"])
def test_lr_monitor_with_an_in_step_lr_scaling_warns_naming_scheduled_lr(name):
    with pytest.warns(UserWarning, match=r"base lr: its step scales the lr.*\['scheduled_lr'\]"):
        fit(name, epochs=1, callbacks=[LRMonitor(logging_interval="step")])


def test_lr_monitor_without_warmup_does_not_warn(recwarn):
    model = BatchNormNet({"optimizer": {"name": "sgd_schedulefree", "bn_recompute_batches": 1}})
    trainer(max_epochs=1, callbacks=[LRMonitor(logging_interval="step")]).fit(model, loader(), loader(16, seed=1))
    assert not [w for w in recwarn if "scheduled_lr" in str(w.message)]


def test_manual_optimization_with_two_schedule_free_optimizers(tmp_path):
    """Lightning's basic GAN shape: each optimizer is switched; the last checkpoint holds both in eval mode."""
    sections = {"generator": ("adamw_schedulefree", r"^generator\."), "discriminator": ("sgd_schedulefree", "^disc")}
    optim_config = {
        "optimizers": {
            name: {"params": params, "optimizer": {"name": optimizer, **OPTIONS[optimizer]}}
            for name, (optimizer, params) in sections.items()
        }
    }
    model = GAN(optim_config, clip=None, step_schedulers=False)
    run = trainer(max_epochs=1, callbacks=[ModelCheckpoint(tmp_path, every_n_train_steps=5)], enable_checkpointing=True)
    run.fit(model, loader())
    assert [in_train_mode(optimizer) for optimizer in run.optimizers] == [False, False]
    saved = torch.load(next(tmp_path.glob("*.ckpt")), weights_only=True)
    assert [[g["train_mode"] for g in state["param_groups"]] for state in saved["optimizer_states"]] == [[False]] * 2
    assert [[g["k"] for g in state["param_groups"]] for state in saved["optimizer_states"]] == [[5], [5]]
