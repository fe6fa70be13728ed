"""GradNormMonitor: values read back from TensorBoard event files against norms computed here from the gradients."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_optim import OptimMixin
from lightning_optim.callbacks import GradNormMonitor, grad_norm_monitor
from lightning_optim.clipping.arithmetic import ClipResult
from tests import tb
from tests.models import MixinModel, RecordingModel, fit_logged, loader, trainer

SGD = {"optimizer": {"name": "sgd", "lr": 0.05}}


def reference_norm(tensors: list[torch.Tensor]) -> float:
    """The 2-norm of all gradients together, the plain way."""
    return math.sqrt(sum(float((t.to_dense() if t.is_sparse else t).double().pow(2).sum()) for t in tensors))


class Reference:
    """Records the gradient norm before clipping (per step and per top-level module) and after it."""

    def record_before(self, module: L.LightningModule) -> None:
        grads = {name: p.grad for name, p in module.named_parameters() if p.grad is not None}
        self.before.append(reference_norm(list(grads.values())))
        layers = {name.split(".")[0] for name in grads}
        self.layers.append(
            {layer: reference_norm([g for n, g in grads.items() if n.split(".")[0] == layer]) for layer in layers}
        )

    def record_after(self, module: L.LightningModule) -> None:
        self.after.append(reference_norm([p.grad for p in module.parameters() if p.grad is not None]))


class SpikyModel(RecordingModel, Reference):
    """Gradients that spike every third step, so a threshold of 1 clips some steps and not others."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.before, self.after, self.layers = [], [], []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        return loss * (20.0 if self.trainer.global_step % 3 == 0 else 0.01)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.record_before(self)

    def on_train_batch_end(self, *args: Any) -> None:
        self.record_after(self)


class SpikyMixinModel(OptimMixin, SpikyModel):
    def __init__(self, optim_config: Any = SGD) -> None:
        super().__init__()
        self.optim_config = optim_config


def fit(model, tmp_path, monitor=None, callbacks=(), **kwargs):
    """Fit with ``monitor`` (default: ``GradNormMonitor()``) and ``callbacks``; returns the logged scalars."""
    return fit_logged(model, tmp_path, [monitor or GradNormMonitor(), *callbacks], **{"max_epochs": 2, **kwargs})


@pytest.mark.parametrize("model_class", [SpikyMixinModel, SpikyModel], ids=["mixin", "lightning_clipping"])
def test_pre_and_post_clip_norms_equal_the_gradients_of_the_same_step(model_class, tmp_path):
    model = model_class()
    logged = fit(model, tmp_path, gradient_clip_val=1.0)
    assert {tag for tag in logged if tag.startswith("grad_norm/")} == {
        "grad_norm/total",
        "grad_norm/clipped",
        "grad_norm/threshold",
        "grad_norm/clip_fraction",
        "grad_norm/nonfinite",
    }
    steps = len(model.before)
    assert steps == 16
    assert [step for step, _ in logged["grad_norm/total"]] == list(range(steps))
    assert [v for _, v in logged["grad_norm/total"]] == pytest.approx(model.before, rel=1e-5)
    assert [v for _, v in logged["grad_norm/clipped"]] == pytest.approx([min(b, 1.0) for b in model.before], rel=1e-5)
    assert [v for _, v in logged["grad_norm/clipped"]] == pytest.approx(model.after, rel=1e-5)
    assert [v for _, v in logged["grad_norm/clip_fraction"]] == [float(b > 1.0) for b in model.before]
    assert {v for _, v in logged["grad_norm/threshold"]} == {1.0}
    assert {v for _, v in logged["grad_norm/nonfinite"]} == {0.0}


def test_clip_fraction_is_the_share_of_steps_since_the_last_log(tmp_path):
    model = SpikyMixinModel()
    logged = fit(model, tmp_path, gradient_clip_val=1.0, log_every_n_steps=4)
    clipped = [b > 1.0 for b in model.before]
    assert [step for step, _ in logged["grad_norm/clip_fraction"]] == [3, 7, 11, 15]
    expected = [sum(clipped[i : i + 4]) / 4 for i in range(0, 16, 4)]
    assert [v for _, v in logged["grad_norm/clip_fraction"]] == pytest.approx(expected)
    assert [v for _, v in logged["grad_norm/total"]] == pytest.approx(model.before[3::4], rel=1e-5)


def test_a_long_logging_interval_keeps_a_few_norms_and_counts_every_step(tmp_path, monkeypatch):
    # With FOLD_STEPS 3, a window of 8 steps sums its counts on the device twice before the log sums the rest.
    monkeypatch.setattr(grad_norm_monitor, "FOLD_STEPS", 3)
    kept: list[int] = []
    add = grad_norm_monitor._Window.add
    monkeypatch.setattr(
        grad_norm_monitor._Window, "add", lambda self, result: [add(self, result), kept.append(len(self.totals))]
    )
    model = SpikyMixinModel()
    logged = fit(model, tmp_path, gradient_clip_val=1.0, log_every_n_steps=8)
    clipped = [b > 1.0 for b in model.before]
    assert [step for step, _ in logged["grad_norm/clip_fraction"]] == [7, 15]
    assert [v for _, v in logged["grad_norm/clip_fraction"]] == [sum(clipped[:8]) / 8, sum(clipped[8:]) / 8]
    assert 0 < sum(clipped) < 16
    assert kept == [1, 2, 0, 1, 2, 0, 1, 2, 1, 2, 0, 1, 2, 0, 1, 2]


def test_a_window_counts_the_steps_it_folded_and_those_it_kept(monkeypatch):
    monkeypatch.setattr(grad_norm_monitor, "FOLD_STEPS", 2)
    window = grad_norm_monitor._Window()
    totals = [1.0, math.inf, 2.0, math.nan, 3.0]
    for total in totals:
        window.add(ClipResult("norm", 1.0, torch.tensor(total), clipped=torch.tensor(total > 1.0)))
    assert len(window.totals) == 1
    counts = window.take()
    assert {key: int(value) for key, value in counts.items()} == {"steps/nonfinite": 2, "steps/clipped": 3}
    assert (window.window_steps, window.totals, window.folded) == (5, [], {})


def test_mixin_clipping_updates_parameters_exactly_as_lightning_clipping(tmp_path):
    ours, lightnings = SpikyMixinModel(), SpikyModel()
    trainer(max_epochs=2, gradient_clip_val=1.0).fit(ours, loader())
    lightnings.configure_optimizers = lambda: torch.optim.SGD(lightnings.parameters(), lr=0.05)
    trainer(max_epochs=2, gradient_clip_val=1.0).fit(lightnings, loader())
    for mine, theirs in zip(ours.parameters(), lightnings.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs)


def test_value_clipping_measures_after_clipping(tmp_path):
    model = SpikyMixinModel()
    logged = fit(model, tmp_path, gradient_clip_val=0.05, gradient_clip_algorithm="value")
    assert [v for _, v in logged["grad_norm/total"]] == pytest.approx(model.before, rel=1e-5)
    assert [v for _, v in logged["grad_norm/clipped"]] == pytest.approx(model.after, rel=1e-5)
    assert [v for _, v in logged["grad_norm/clip_fraction"]] == [
        float(a < b) for a, b in zip(model.after, model.before, strict=True)
    ]


def test_per_layer_norms_from_the_same_pass(tmp_path):
    model = SpikyMixinModel()
    logged = fit(model, tmp_path, monitor=GradNormMonitor(per_layer_depth=1), gradient_clip_val=1.0)
    for layer in ("encoder", "head"):
        assert [v for _, v in logged[f"grad_norm/{layer}"]] == pytest.approx([r[layer] for r in model.layers], rel=1e-5)


def test_per_parameter_group_norms(tmp_path):
    config = {"optimizer": {"name": "sgd", "lr": 0.05}, "param_groups": [{"name": "head", "params": "^head"}]}
    model = SpikyMixinModel(config)
    logged = fit(model, tmp_path, monitor=GradNormMonitor(per_param_group=True), gradient_clip_val=1.0)
    assert [v for _, v in logged["grad_norm/group/head"]] == pytest.approx([r["head"] for r in model.layers], rel=1e-5)
    assert [v for _, v in logged["grad_norm/group/default"]] == pytest.approx(
        [r["encoder"] for r in model.layers], rel=1e-5
    )


@pytest.mark.parametrize("model_class", [SpikyMixinModel, SpikyModel], ids=["mixin", "lightning_clipping"])
def test_per_layer_and_per_group_norms_together(model_class, tmp_path):
    config = {"optimizer": {"name": "sgd", "lr": 0.05}, "param_groups": [{"name": "bias", "params": r"\.bias$"}]}
    model = model_class(config) if model_class is SpikyMixinModel else model_class()
    monitor = GradNormMonitor(per_layer_depth=1, per_param_group=True)
    logged = fit(model, tmp_path, monitor=monitor, gradient_clip_val=1.0)
    groups = ["group/bias", "group/default"] if model_class is SpikyMixinModel else ["group/0"]
    assert {tag for tag in logged if tag.startswith("grad_norm/")} == {
        *(f"grad_norm/{key}" for key in ("total", "clipped", "threshold", "clip_fraction", "nonfinite")),
        "grad_norm/encoder",
        "grad_norm/head",
        *(f"grad_norm/{group}" for group in groups),
    }
    for layer in ("encoder", "head"):
        assert [v for _, v in logged[f"grad_norm/{layer}"]] == pytest.approx([r[layer] for r in model.layers], rel=1e-5)
    per_group = [[v for _, v in logged[f"grad_norm/{group}"]] for group in groups]
    from_groups = [math.hypot(*values) for values in zip(*per_group, strict=True)]
    assert from_groups == pytest.approx(model.before, rel=1e-5)


class LBFGSModel(SpikyMixinModel):
    def __init__(self) -> None:
        super().__init__({"optimizer": {"name": "lbfgs", "lr": 0.1, "max_iter": 4}})


def test_lbfgs_logs_once_per_optimizer_step(tmp_path):
    model = LBFGSModel()
    logged = fit(model, tmp_path, gradient_clip_val=1.0, max_epochs=1)
    assert len(model.before) > 8  # the closure (and clipping) ran several times per step
    assert [step for step, _ in logged["grad_norm/total"]] == list(range(8))


class SparseModel(OptimMixin, L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(16, 4, sparse=True)
        self.optim_config = {"optimizer": {"name": "sgd", "lr": 0.1}}
        self.before = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.embedding(batch[0][:, :2].abs().long() % 16).pow(2).sum() * 10

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.before.append(reference_norm([self.embedding.weight.grad.coalesce()]))


def test_sparse_gradients_are_measured_and_clipped(tmp_path):
    model = SparseModel()
    logged = fit(model, tmp_path, gradient_clip_val=1.0, max_epochs=1)
    assert [v for _, v in logged["grad_norm/total"]] == pytest.approx(model.before, rel=1e-5)
    assert [v for _, v in logged["grad_norm/clipped"]] == pytest.approx([min(b, 1.0) for b in model.before], rel=1e-5)


class NaNModel(MixinModel):
    """A NaN loss at optimizer step 2."""

    def __init__(self) -> None:
        super().__init__(SGD)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.trainer.global_step == 2 else loss


def test_nonfinite_steps_are_counted_and_warned(tmp_path):
    with pytest.warns(UserWarning, match=r"1 optimizer step\(s\) before step 3 had a NaN/Inf gradient norm"):
        logged = fit(NaNModel(), tmp_path, gradient_clip_val=1.0, max_epochs=1)
    # Once a NaN step has reached the parameters, every later gradient is NaN too.
    assert [v for _, v in logged["grad_norm/nonfinite"]] == [0, 0, 1, 2, 3, 4, 5, 6]


def test_nonfinite_skip_leaves_the_parameters_unchanged(tmp_path):
    model = NaNModel()
    snapshots = []

    class Snapshot(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            snapshots.append([p.detach().clone() for p in pl_module.parameters()])

    fit(model, tmp_path, monitor=GradNormMonitor(nonfinite="skip"), callbacks=[Snapshot()], max_epochs=1)
    for before, after in zip(snapshots[1], snapshots[2], strict=True):
        torch.testing.assert_close(before, after, rtol=0, atol=0)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_nonfinite_raise_names_the_first_parameter(tmp_path):
    with pytest.raises(
        FloatingPointError, match=r"optimizer step 2: the first parameter with a NaN/Inf gradient is 'encoder\.weight'"
    ):
        fit(NaNModel(), tmp_path, monitor=GradNormMonitor(nonfinite="raise"), max_epochs=1)


def count_host_syncs(model, callbacks, steps: int, log_dir) -> int:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        trainer(
            max_steps=steps,
            log_every_n_steps=10_000,
            gradient_clip_val=1.0,
            callbacks=callbacks,
            logger=TensorBoardLogger(log_dir, name="", version=""),
        ).fit(model, loader())
    return sum(
        event.count for event in profile.key_averages() if event.key in ("aten::item", "aten::_local_scalar_dense")
    )


def test_monitoring_adds_no_host_sync_on_non_logging_steps(tmp_path):
    torch.manual_seed(0)
    without = count_host_syncs(SpikyMixinModel(), [], 6, tmp_path / "without")
    torch.manual_seed(0)
    with_monitor = count_host_syncs(SpikyMixinModel(), [GradNormMonitor(per_layer_depth=1)], 6, tmp_path / "with")
    assert with_monitor == without


def test_early_stopping_monitors_grad_norm_total(tmp_path):
    # Without validation EarlyStopping checks at each training epoch's end, on trainer.callback_metrics: the value
    # logged at the epoch's last logging step. A missing key would raise (strict); every norm is above -1, so
    # mode="max" with that threshold stops at the first check.
    model = SpikyMixinModel()
    stop = EarlyStopping(monitor="grad_norm/total", mode="max", stopping_threshold=-1.0, check_finite=True)
    logger = TensorBoardLogger(tmp_path, name="tb", default_hp_metric=False)
    run = trainer(callbacks=[GradNormMonitor(), stop], logger=logger, log_every_n_steps=3, max_epochs=5)
    run.fit(model, loader())

    logged = tb.scalars(tmp_path)["grad_norm/total"]
    assert [step for step, _ in logged] == [2, 5]  # the logging steps of epoch 0
    assert float(run.callback_metrics["grad_norm/total"]) == logged[-1][1]
    assert run.current_epoch == 1 and stop.stopped_epoch == 0
