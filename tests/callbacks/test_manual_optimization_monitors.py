"""GradNormMonitor and LRMonitor under manual optimization, with one and with several named optimizers (the GAN)."""

from __future__ import annotations

import copy
import re
import warnings
from typing import Any

import lightning as L
import pytest
import torch

from lightning_optim import OptimMixin
from lightning_optim.callbacks import GradNormMonitor, LRMonitor
from lightning_optim.fit.manual_optimization import UnsteppedSchedulerWarning
from tests import tb
from tests.models import GAN, GAN_CONFIG, RecordingModel, fit_logged, loader, trainer
from tests.references import warmup_cosine

BATCHES = 8
CLIP = 0.05


def test_gan_grad_norms_are_the_norms_before_clipping_per_optimizer(tmp_path) -> None:
    model = GAN(clip=CLIP)
    logged = fit_logged(model, tmp_path, [GradNormMonitor()], max_epochs=2)
    steps = list(range(2 * BATCHES))
    norms_g = [record["norm_g"] for record in model.records]
    norms_d = [record["norm_d"] for record in model.records]
    assert min(norms_g) > CLIP  # every generator step clipped
    assert logged["grad_norm/generator/total"] == [
        (k, tb.float32(norm)) for k, norm in zip(steps, norms_g, strict=True)
    ]
    assert [k for k, _ in logged["grad_norm/generator/clipped"]] == steps
    assert [value for _, value in logged["grad_norm/generator/clipped"]] == pytest.approx([CLIP] * len(steps), rel=1e-5)
    assert logged["grad_norm/generator/threshold"] == [(k, tb.float32(CLIP)) for k in steps]
    assert logged["grad_norm/generator/clip_fraction"] == [(k, 1.0) for k in steps]
    assert logged["grad_norm/discriminator/total"] == [
        (k, tb.float32(norm)) for k, norm in zip(steps, norms_d, strict=True)
    ]
    assert logged["grad_norm/discriminator/clipped"] == logged["grad_norm/discriminator/total"]
    assert logged["grad_norm/discriminator/clip_fraction"] == [(k, 0.0) for k in steps]
    assert {key for key in logged if key.startswith("grad_norm/")} == {
        f"grad_norm/{name}/{key}"
        for name in ("generator", "discriminator")
        for key in ("total", "clipped", "clip_fraction", "nonfinite")
    } | {"grad_norm/generator/threshold"}
    charts = GradNormMonitor.dashboard_charts()
    drawn = {
        chart: sorted(tag for tag in logged if any(re.match(regex, tag) for regex in regexes))
        for chart, regexes in charts.items()
    }
    assert drawn["Clip fraction"] == ["grad_norm/discriminator/clip_fraction", "grad_norm/generator/clip_fraction"]
    assert drawn["Per layer"] == []


class ClippedManually(OptimMixin, RecordingModel):
    """One optimizer, manual optimization, ``self.clip_gradients`` by norm at 0.5: the issue's report."""

    def __init__(self, optim_config: Any, mixin: bool = True) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.optim_config = optim_config
        self.norms: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> None:
        optimizer = self.optimizers()
        loss = super().training_step(batch, batch_idx) * 100
        self.manual_backward(loss)
        self.norms.append(float(torch.nn.utils.get_total_norm([p.grad for p in self.parameters()])))
        self.clip_gradients(optimizer, gradient_clip_val=0.5, gradient_clip_algorithm="norm")  # type: ignore[arg-type]
        optimizer.step()  # type: ignore[union-attr]
        optimizer.zero_grad()  # type: ignore[union-attr]


def test_one_optimizer_under_manual_optimization_keeps_the_single_keys(tmp_path) -> None:
    model = ClippedManually({"optimizer": {"name": "sgd", "lr": 0.01}})
    logged = fit_logged(model, tmp_path, [GradNormMonitor()])
    steps = range(BATCHES)
    assert min(model.norms) > 0.5
    assert logged["grad_norm/total"] == [(k, tb.float32(norm)) for k, norm in zip(steps, model.norms, strict=True)]
    assert logged["grad_norm/clip_fraction"] == [(k, 1.0) for k in steps]
    assert logged["grad_norm/threshold"] == [(k, 0.5) for k in steps]
    # The mixin's clipping is torch's: the clipped gradients' norm is the threshold.
    assert [k for k, _ in logged["grad_norm/clipped"]] == list(steps)
    assert [value for _, value in logged["grad_norm/clipped"]] == pytest.approx([0.5] * BATCHES, rel=1e-5)


def test_without_the_mixin_the_monitor_warns_that_it_sees_clipped_gradients(tmp_path) -> None:
    class Plain(RecordingModel):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> None:
            optimizer = self.optimizers()
            self.manual_backward(super().training_step(batch, batch_idx))
            optimizer.step()  # type: ignore[union-attr]
            optimizer.zero_grad()  # type: ignore[union-attr]

    with pytest.warns(UserWarning, match=re.escape("grad_norm/total is the norm after clipping")):
        fit_logged(Plain(), tmp_path, [GradNormMonitor()], max_steps=2)


def test_gan_lr_keys_name_each_optimizer(tmp_path) -> None:
    config = copy.deepcopy(GAN_CONFIG)
    del config["optimizers"]["discriminator"]["scheduler"]  # an optimizer without a scheduler is named too
    model = GAN(config)
    logged = fit_logged(model, tmp_path, [LRMonitor()], max_epochs=1)
    assert {key for key in logged if key.startswith("lr-")} == {
        "lr-generator/default",
        "lr-discriminator/bias",
        "lr-discriminator/default",
    }
    assert logged["lr-generator/default"] == [
        (k, tb.float32(warmup_cosine(k, 0.02, 2, BATCHES, floor=0.1))) for k in range(BATCHES)
    ]
    assert logged["lr-discriminator/bias"] == [(k, tb.float32(0.02)) for k in range(BATCHES)]


def test_a_scheduler_never_stepped_under_manual_optimization_warns_once(tmp_path) -> None:
    model = GAN(step_schedulers=False)
    with pytest.warns(UnsteppedSchedulerWarning) as record:
        trainer(max_epochs=2).fit(model, loader())
    messages = [str(w.message) for w in record if w.category is UnsteppedSchedulerWarning]
    assert len(messages) == 1
    assert "optim_config.optimizers.generator.scheduler, optim_config.optimizers.discriminator.scheduler" in messages[0]
    assert "self.lr_schedulers()" in messages[0]
    assert {record["lr_g"][0] for record in model.records} == {0.0}  # warmup's first lr, for the whole run


def test_a_stepped_scheduler_does_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnsteppedSchedulerWarning)
        trainer(max_epochs=2).fit(GAN(), loader())


def test_gan_lr_keys_with_both_schedulers_and_a_log_name(tmp_path) -> None:
    config = copy.deepcopy(GAN_CONFIG)
    config["optimizers"]["discriminator"]["scheduler"]["log_name"] = "lr-critic"
    logged = fit_logged(GAN(config), tmp_path, [LRMonitor()], max_epochs=1)
    assert {key for key in logged if key.startswith("lr-")} == {
        "lr-generator/default",
        "lr-critic/bias",
        "lr-critic/default",
    }
    assert logged["lr-critic/default"] == [(k, tb.float32(0.01 * 0.5 ** (k // 3))) for k in range(BATCHES)]


def test_the_per_optimizer_counts_survive_in_the_monitor_state() -> None:
    monitor = GradNormMonitor()
    trainer(max_epochs=1, callbacks=[monitor], log_every_n_steps=3).fit(GAN(clip=CLIP), loader())
    state = monitor.state_dict()
    # 8 steps each; logged at steps 2 and 5, so steps 6 and 7 wait for the next log.
    assert state["optimizers"] == {
        "grad_norm/generator/": {"clipped_steps": 2.0, "window_steps": 2, "nonfinite_steps": 0},
        "grad_norm/discriminator/": {"clipped_steps": 0.0, "window_steps": 2, "nonfinite_steps": 0},
    }
    restored = GradNormMonitor()
    restored.load_state_dict(state)
    assert restored.state_dict() == state


def test_value_clipping_under_manual_optimization_is_not_measured_and_says_so(tmp_path) -> None:
    class ValueClipped(ClippedManually):
        def training_step(self, batch: Any, batch_idx: int) -> None:
            optimizer = self.optimizers()
            self.manual_backward(RecordingModel.training_step(self, batch, batch_idx))
            self.clip_gradients(optimizer, gradient_clip_val=0.01, gradient_clip_algorithm="value")  # type: ignore[arg-type]
            optimizer.step()  # type: ignore[union-attr]
            optimizer.zero_grad()  # type: ignore[union-attr]

    with pytest.warns(UserWarning, match=re.escape("grad_norm/* are not logged for those steps")):
        logged = fit_logged(ValueClipped({"optimizer": {"name": "sgd", "lr": 0.01}}), tmp_path, [GradNormMonitor()])
    assert not [key for key in logged if key.startswith("grad_norm/")]


def test_gan_per_layer_norms_are_per_optimizer(tmp_path) -> None:
    model = GAN(clip=CLIP)
    logged = fit_logged(model, tmp_path, [GradNormMonitor(per_layer_depth=2)], max_steps=4)
    assert {key for key in logged if "." in key} == {
        "grad_norm/generator/generator.0",
        "grad_norm/generator/generator.2",
        "grad_norm/discriminator/discriminator.0",
        "grad_norm/discriminator/discriminator.2",
    }
    # Per-layer norms are of the gradients before clipping: their 2-norm is the total.
    for name in ("generator", "discriminator"):
        first, second = logged[f"grad_norm/{name}/{name}.0"], logged[f"grad_norm/{name}/{name}.2"]
        totals = logged[f"grad_norm/{name}/total"]
        for (_, a), (_, b), (_, total) in zip(first, second, totals, strict=True):
            assert (a**2 + b**2) ** 0.5 == pytest.approx(total, rel=1e-5)


class PlainGAN(L.LightningModule):
    """:class:`GAN`'s training step with Lightning's own ``configure_optimizers`` (two unnamed Adams), no mixin."""

    forward = GAN.forward
    training_step = GAN.training_step

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.automatic_optimization = False
        self.generator = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.LeakyReLU(0.2), torch.nn.Linear(8, 4))
        self.discriminator = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LeakyReLU(0.2), torch.nn.Linear(8, 1))
        self.clip, self.step_schedulers, self.records = None, False, []

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [torch.optim.Adam(self.generator.parameters()), torch.optim.Adam(self.discriminator.parameters())]


def test_unnamed_optimizers_are_keyed_by_their_position(tmp_path) -> None:
    model = PlainGAN()
    with pytest.warns(UserWarning, match="sees the gradients only at optimizer.step()"):
        logged = fit_logged(model, tmp_path, [GradNormMonitor(), LRMonitor()], max_steps=8)
    steps = list(range(4))
    for index, name in enumerate(("norm_g", "norm_d")):
        norms = [record[name] for record in model.records]
        assert logged[f"grad_norm/optimizer_{index}/total"] == [
            (k, tb.float32(norm)) for k, norm in zip(steps, norms, strict=True)
        ]
    assert {key for key in logged if key.startswith("lr-")} == {"lr-Adam", "lr-Adam-1"}  # Lightning's own naming
