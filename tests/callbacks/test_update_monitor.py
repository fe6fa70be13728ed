"""UpdateMonitor: every ``update/*`` and ``optimizer_state/*`` key equal to values computed here from the parameters
before and after each step, their gradients and the optimizer's state (read back from TensorBoard event files)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_optim import conf
from lightning_optim.callbacks import GradNormMonitor, TensorBoardDashboard, UpdateMonitor
from lightning_optim.callbacks.update_monitor import REFERENCE_RATIO
from lightning_optim.internals import logging_step, should_log
from tests import tb
from tests.models import GAN, MemoryLogger, MixinModel, SparseEmbedding, fit_logged, loader, trainer

GROUPS = [{"name": "no_decay", "params": r"\.bias$", "weight_decay": 0.0}]


class Recorder(L.Callback):
    """Each optimizer step in float64: parameters before (at ``on_before_optimizer_step``) and after, gradients after
    the step (clipped), the optimizer's per-parameter state tensors, each parameter's group name; and the number of
    step hooks the optimizer holds at each step."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self.hooks: list[tuple[bool, int]] = []
        self._before: dict[str, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        self._before = {name: p.detach().double().clone() for name, p in pl_module.named_parameters()}
        inner = trainer.optimizers[0]
        self.hooks.append((should_log(trainer), len(inner._optimizer_step_pre_hooks)))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        optimizer = trainer.optimizers[0]
        names = {id(p): name for name, p in pl_module.named_parameters()}
        self.steps.append(
            {
                "step": logging_step(trainer),
                "before": self._before,
                "after": {name: p.detach().double().clone() for name, p in pl_module.named_parameters()},
                "grad": {name: p.grad.double().clone() for name, p in pl_module.named_parameters()},
                "state": {
                    names[id(p)]: {
                        key: value.double().clone()
                        for key, value in state.items()
                        if isinstance(value, torch.Tensor) and value.dim() > 0
                    }
                    for p, state in optimizer.state.items()
                },
                "group": {names[id(p)]: g.get("name") for g in optimizer.param_groups for p in g["params"]},
            }
        )


def norm(tensors: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.pow(2).sum()) for t in tensors))


def expected(step: dict[str, Any], per_layer: bool = True, per_group: bool = False) -> dict[str, float]:
    """Every key of one step, computed from the recorded tensors: layers are ``encoder`` and ``head``."""
    selections: dict[str, list[str]] = {"": list(step["before"])}
    for name in step["before"]:
        if per_layer:
            selections.setdefault(f"/{name.split('.')[0]}", []).append(name)
        if per_group:
            selections.setdefault(f"/group/{step['group'][name]}", []).append(name)
    values: dict[str, float] = {}
    for suffix, names in selections.items():
        update = [step["after"][n] - step["before"][n] for n in names]
        update_norm = norm(update)
        grad_norm = norm([step["grad"][n] for n in names])
        param_norm = norm([step["before"][n] for n in names])
        alignment = sum(float((u * -step["grad"][n]).sum()) for u, n in zip(update, names, strict=True))
        values[f"update/norm{suffix}"] = update_norm
        values[f"update/param_norm{suffix}"] = param_norm
        values[f"update/ratio{suffix}"] = update_norm / param_norm
        values[f"update/cos_grad{suffix}"] = alignment / (update_norm * grad_norm)
        keys = {key for n in names for key in step["state"].get(n, {})}
        for key in keys:
            held = [step["state"][n][key] for n in names if key in step["state"].get(n, {})]
            values[f"optimizer_state/{key}_norm{suffix}"] = norm(held)
    return values


def assert_logged_as_expected(logged: dict[str, list[tuple[int, float]]], recorder: Recorder, **kwargs: Any) -> None:
    for step in recorder.steps:
        for key, value in expected(step, **kwargs).items():
            at = dict(logged[key])
            assert at[step["step"]] == pytest.approx(value, rel=1e-5, abs=1e-7), (key, step["step"])


@pytest.mark.parametrize("fused", [False, True], ids=["clip_then_step", "clipping_folded_into_fused_step"])
def test_sgd_without_momentum_moves_by_lr_times_the_clipped_gradient(tmp_path, fused):
    recorder = Recorder()
    model = MixinModel({"optimizer": {"name": "sgd", "lr": 0.1, "fused": fused}})
    monitors = [recorder, GradNormMonitor(), UpdateMonitor(per_layer_depth=1)]
    logged = fit_logged(model, tmp_path, monitors, gradient_clip_val=0.5)

    assert_logged_as_expected(logged, recorder)
    clipped = dict(logged["grad_norm/clipped"])
    assert [v for _, v in logged["grad_norm/total"]] != [v for _, v in logged["grad_norm/clipped"]]  # it clipped
    for step, value in logged["update/norm"]:
        assert value == pytest.approx(0.1 * clipped[step], rel=1e-5)
    assert [v for _, v in logged["update/cos_grad"]] == pytest.approx([1.0] * 8, abs=1e-6)
    assert [v for _, v in logged["update/cos_grad/head"]] == pytest.approx([1.0] * 8, abs=1e-6)
    assert not any(key.startswith("optimizer_state/") for key in logged)


def test_adamw_update_is_the_parameters_after_minus_before_per_layer_and_group(tmp_path):
    recorder = Recorder()
    config = {"optimizer": {"name": "adamw", "lr": 0.01, "weight_decay": 0.1}, "param_groups": GROUPS}
    monitors = [recorder, UpdateMonitor(per_layer_depth=1, per_param_group=True)]
    logged = fit_logged(MixinModel(config), tmp_path, monitors, gradient_clip_val=0.5)

    assert_logged_as_expected(logged, recorder, per_group=True)
    assert {"update/ratio/group/default", "update/ratio/group/no_decay", "optimizer_state/exp_avg_norm"} <= set(logged)
    assert {key for key in logged if key.startswith("optimizer_state/") and "/" not in key[16:]} == {
        "optimizer_state/exp_avg_norm",
        "optimizer_state/exp_avg_sq_norm",
    }


def test_sgd_momentum_buffer_norm(tmp_path):
    recorder = Recorder()
    config = {"optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}}
    logged = fit_logged(MixinModel(config), tmp_path, [recorder, UpdateMonitor(per_layer_depth=1)])

    assert_logged_as_expected(logged, recorder)
    last = recorder.steps[-1]
    buffers = [state["momentum_buffer"] for state in last["state"].values()]
    assert logged["optimizer_state/momentum_buffer_norm"][-1] == (7, pytest.approx(norm(buffers), rel=1e-6))
    assert set(logged) >= {"optimizer_state/momentum_buffer_norm/encoder", "optimizer_state/momentum_buffer_norm/head"}


def test_a_sparse_momentum_buffer_is_measured_by_its_values(tmp_path):
    # torch's norm refuses sparse tensors: this run crashed at its first logging step.
    model = SparseEmbedding({"optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}})
    logged = fit_logged(model, tmp_path, [UpdateMonitor()])
    buffer = model.trainer.optimizers[0].state[model.embedding.weight]["momentum_buffer"]
    assert buffer.is_sparse
    expected = float(buffer.to_dense().double().norm())
    assert logged["optimizer_state/momentum_buffer_norm"][-1] == (7, pytest.approx(expected, rel=1e-6))


def test_muon_with_its_auxiliary_adamw(tmp_path):
    recorder = Recorder()
    config = {"optimizer": {"name": "muon", "lr": 0.02, "aux": {"name": "adamw", "lr": 0.01}}}
    monitors = [recorder, UpdateMonitor(per_layer_depth=1, per_param_group=True)]
    logged = fit_logged(MixinModel(config), tmp_path, monitors, gradient_clip_val=0.5)

    assert_logged_as_expected(logged, recorder, per_group=True)
    last = recorder.steps[-1]
    assert last["group"] == {"encoder.weight": "muon", "encoder.bias": "aux", "head.weight": "aux", "head.bias": "aux"}
    # Muon's step of the hidden matrix is its orthogonalized momentum: its update is not the gradient's direction.
    assert max(v for _, v in logged["update/cos_grad/group/muon"]) < 0.99
    assert {key for key in logged if key.startswith("optimizer_state/") and "/" not in key[16:]} == {
        "optimizer_state/momentum_buffer_norm",
        "optimizer_state/exp_avg_norm",
        "optimizer_state/exp_avg_sq_norm",
    }


def test_schedule_free_optimizer(tmp_path):
    pytest.importorskip("schedulefree")
    recorder = Recorder()
    config = {"optimizer": {"name": "adamw_schedulefree", "lr": 0.01}, "scheduler": None}
    logged = fit_logged(MixinModel(config), tmp_path, [recorder, UpdateMonitor(per_layer_depth=None)])

    assert_logged_as_expected(logged, recorder, per_layer=False)
    assert {key for key in logged if key.startswith(("update/", "optimizer_state/"))} == {
        "update/norm",
        "update/param_norm",
        "update/ratio",
        "update/cos_grad",
        "update/ratio_reference",
        "optimizer_state/z_norm",
        "optimizer_state/exp_avg_sq_norm",
    }


def test_several_optimizers_are_named(tmp_path):
    logged = fit_logged(GAN(), tmp_path, [UpdateMonitor(per_layer_depth=None)], max_steps=4)
    keys = {key for key in logged if key.startswith(("update/", "optimizer_state/"))}
    for name in ("generator", "discriminator"):
        assert {f"update/{name}/ratio", f"update/{name}/cos_grad", f"optimizer_state/{name}/exp_avg_norm"} <= keys
    assert "update/ratio" not in keys


def test_lbfgs_measures_the_whole_step_once(tmp_path):
    model = MixinModel({"optimizer": {"name": "lbfgs", "lr": 0.1, "max_iter": 3}})
    recorder = Recorder()
    logged = fit_logged(model, tmp_path, [recorder, UpdateMonitor(per_layer_depth=None)], max_steps=3)
    assert [step for step, _ in logged["update/norm"]] == [0, 1, 2]


def test_non_logging_steps_have_no_hook(tmp_path):
    recorder = Recorder()
    config = {"optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}}
    logged = fit_logged(MixinModel(config), tmp_path, [recorder, UpdateMonitor()], log_every_n_steps=3)
    own = recorder.hooks[0][1]  # the mixin's own pre-hook for SGD
    quiet, logging = (False, own), (True, own + 1)
    assert recorder.hooks == [quiet, quiet, logging] * 2 + [quiet, quiet]
    assert [step for step, _ in logged["update/ratio"]] == [2, 5]
    assert logged["update/ratio_reference"] == [(2, tb.float32(REFERENCE_RATIO)), (5, tb.float32(REFERENCE_RATIO))]


def test_every_n_logging_steps_measures_a_fraction_of_them_and_hooks_nothing_between(tmp_path):
    recorder = Recorder()
    config = {"optimizer": {"name": "adamw", "lr": 0.01}}
    monitor = UpdateMonitor(every_n_logging_steps=3)
    logged = fit_logged(MixinModel(config), tmp_path, [recorder, monitor], log_every_n_steps=2)
    hooks = [count for _, count in recorder.hooks]
    assert [count - min(hooks) for count in hooks] == [0, 1, 0, 0, 0, 0, 0, 1], "logging steps 1, 3, 5, 7"
    measured = {key: [step for step, _ in values] for key, values in logged.items() if key.startswith("update/")}
    assert set(map(tuple, measured.values())) == {(1, 7)}
    recorder.steps = [step for step in recorder.steps if step["step"] in (1, 7)]
    assert_logged_as_expected(logged, recorder)


def test_a_resumed_run_measures_the_steps_an_uninterrupted_one_does(tmp_path):
    config = {"optimizer": {"name": "sgd", "lr": 0.05}}
    steps = []
    for max_steps, resume in ((5, None), (16, tmp_path / "stop.ckpt")):
        logger, monitor = MemoryLogger(), UpdateMonitor(every_n_logging_steps=3)
        run = trainer(callbacks=[monitor], logger=logger, max_steps=max_steps, max_epochs=4, log_every_n_steps=2)
        run.fit(MixinModel(config), loader(), ckpt_path=resume)
        run.save_checkpoint(tmp_path / "stop.ckpt")
        steps += [step for step, metrics in logger.logged if "update/ratio" in metrics]
    assert steps == [1, 7, 13], "logging steps 1, 3, ..., 15: the first and every third after it"


@pytest.mark.parametrize("every_n", [0, 2.0, True])
def test_every_n_logging_steps_must_be_a_positive_int(every_n):
    with pytest.raises(ValueError) as error:
        UpdateMonitor(every_n_logging_steps=every_n)
    assert (
        str(error.value)
        == f"UpdateMonitor(every_n_logging_steps={every_n!r}) is not valid. Expected an int >= 1, e.g. 10."
    )


def test_dashboard_has_an_updates_section(tmp_path):
    config = {"optimizer": {"name": "sgd", "lr": 0.05}}
    fit_logged(MixinModel(config), tmp_path, [UpdateMonitor(), TensorBoardDashboard()], max_steps=1)
    charts = tb.layout_dict(tb.layout(tmp_path))["Updates"]
    ratio = next(title for title in charts if title.startswith("Update / parameter ratio"))
    assert charts[ratio] == ["update/(?:[^/]+/)?ratio(?:/.*)?$", "update/ratio_reference$"]
    assert set(charts) >= {"Update norm", "Parameter norm", "Cosine of update and negative gradient"}


def test_a_ratio_far_below_the_healthy_range_is_named_once(tmp_path):
    config = {"optimizer": {"name": "sgd", "lr": 1e-9}}
    with pytest.warns(UserWarning, match="median update/parameter ratio") as warned:
        fit_logged(MixinModel(config), tmp_path, [UpdateMonitor(per_layer_depth=1)], max_epochs=2)
    messages = [str(w.message) for w in warned if "median update/parameter ratio" in str(w.message)]
    assert len(messages) == 1
    assert "epoch 0" in messages[0] and "too small" in messages[0]
    assert "update/ratio/encoder" in messages[0] and "update/ratio/head" in messages[0]


def test_model_checkpoint_monitors_update_ratio(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="update/ratio", mode="min")
    logger = MemoryLogger()
    model = MixinModel({"optimizer": {"name": "sgd", "lr": 0.05}})
    callbacks = [UpdateMonitor(), checkpoint]
    run = trainer(callbacks=callbacks, logger=logger, max_epochs=2, enable_checkpointing=True, log_every_n_steps=2)
    run.fit(model, loader())

    ratios = {step: metrics["update/ratio"] for step, metrics in logger.logged if "update/ratio" in metrics}
    assert sorted(ratios) == [1, 3, 5, 7, 9, 11, 13, 15]
    # Checked at each epoch's end (no validation), on the last value logged in it.
    assert float(checkpoint.best_model_score) == tb.float32(min(ratios[7], ratios[15]))
    assert float(run.callback_metrics["update/ratio"]) == tb.float32(ratios[15])


def test_conf_file_builds_the_monitor():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(conf.__file__).parent / "callbacks" / "update_monitor.yaml")
    monitor = instantiate(cfg.update_monitor)
    assert isinstance(monitor, UpdateMonitor)
    assert (monitor.per_layer_depth, monitor.per_param_group, monitor.ratio_range) == (1, False, (1e-4, 1e-2))
