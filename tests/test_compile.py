"""torch.compile, in both forms Lightning supports: the same metric keys and values as eager, no extra recompiles, and
``param_groups`` rules that still match.

The compiled runs use ``backend="eager"``: what differs under compile is dynamo's part (which hooks it traces, what it
guards, when it recompiles, the ``_orig_mod`` level in names), and that is the same for every backend; inductor would
only add minutes of C++ compilation on a CPU. ``benchmarks/compiled_batchnorm.py`` runs inductor.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.demos import LightningTransformer
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch._dynamo.utils import counters
from torch.utils.data import DataLoader, TensorDataset

from lightning_optim import OptimMixin
from lightning_optim.callbacks import BatchNormMonitor, GradNormMonitor, LRMonitor
from tests import tb
from tests.models import trainer

BACKEND = "eager"
OPTIM_CONFIG = {
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "param_groups": [{"name": "head", "params": r"^net\.fc\.", "lr_scale": 10}],
}


class BasicBlock(nn.Module):
    """torchvision's ResNet ``BasicBlock``: conv-bn-relu-conv-bn, plus a conv-bn shortcut where the shape changes."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet(nn.Module):
    """torchvision's ResNet-18 layout at toy width: stem, three stages of two blocks, average pool, ``fc``; 15
    BatchNorm layers (past dynamo's recompile limit of 8 when each one cost a recompile)."""

    def __init__(self, width: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(BasicBlock(width, width), BasicBlock(width, width))
        self.layer2 = nn.Sequential(BasicBlock(width, 2 * width, 2), BasicBlock(2 * width, 2 * width))
        self.layer3 = nn.Sequential(BasicBlock(2 * width, 4 * width, 2), BasicBlock(4 * width, 4 * width))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x))))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class Classifier(OptimMixin, L.LightningModule):
    """The LightningModule of Lightning's image-classification examples around ``ResNet``; ``compile_net`` compiles
    the network inside, as ``self.net = torch.compile(self.net)`` in ``__init__``."""

    def __init__(self, optim_config: Any, compile_net: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net: nn.Module = ResNet()
        if compile_net:
            self.net = torch.compile(self.net, backend=BACKEND)
        self.optim_config = optim_config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        return nn.functional.cross_entropy(self(images), labels)


def images(samples: int = 64, batch_size: int = 8) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    inputs = 2 * torch.randn(samples, 3, 8, 8, generator=generator) + 0.5
    return DataLoader(TensorDataset(inputs, torch.randint(0, 10, (samples,), generator=generator)), batch_size=8)


def model_in(form: str) -> L.LightningModule:
    """``Classifier`` eager, with its network compiled (``"net"``), or compiled whole for ``Trainer.fit``
    (``"module"``: ``torch.compile(lightning_module)``, which Lightning unwraps and runs compiled)."""
    model = Classifier(OPTIM_CONFIG, compile_net=form == "net")
    return torch.compile(model, backend=BACKEND) if form == "module" else model  # type: ignore[return-value]


def fit(form: str, tmp_path: Path, monitors: bool = True) -> tuple[dict[str, list[tuple[int, float]]], dict[str, int]]:
    """Fit 6 steps, logging every 2nd; the TensorBoard scalars and dynamo's frame and graph counts of the run."""
    torch._dynamo.reset()  # a fresh cache: dynamo would reuse the graphs of an earlier model of the same class
    counters.clear()
    callbacks = [BatchNormMonitor(report=False), GradNormMonitor(per_layer_depth=2), LRMonitor()] if monitors else []
    logger = TensorBoardLogger(tmp_path, name="tb", default_hp_metric=False)
    run = trainer(callbacks=callbacks, logger=logger, log_every_n_steps=2, max_steps=6, gradient_clip_val=1.0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "BatchNormMonitor: the model runs under torch.compile")
        run.fit(model_in(form), images())
    compiled = {"frames": counters["frames"]["ok"], "graphs": counters["stats"]["unique_graphs"]}
    return tb.scalars(tmp_path), compiled


@pytest.fixture(scope="module")
def eager_scalars(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[int, float]]]:
    return fit("eager", tmp_path_factory.mktemp("eager"))[0]


@pytest.mark.slow
@pytest.mark.parametrize("form", ["net", "module"])
def test_compiled_runs_log_the_eager_keys_and_values_with_no_extra_compiles(form, eager_scalars, tmp_path):
    compiled, counts = fit(form, tmp_path / "monitored")
    assert set(compiled) == set(eager_scalars)
    layers = {key.split("/")[1] for key in eager_scalars if key.startswith("batchnorm/")}
    assert len(layers) == 15 and "net.layer2.0.downsample.1" in layers
    assert {"grad_norm/net.layer1", "grad_norm/net.fc", "lr-SGD/head", "lr-SGD/default"} <= set(eager_scalars)
    for key, points in eager_scalars.items():
        assert [step for step, _ in compiled[key]] == [step for step, _ in points], key
        for (_, value), (_, expected) in zip(compiled[key], points, strict=True):
            assert value == pytest.approx(expected, rel=1e-4, abs=1e-5), key
    assert compiled["lr-SGD/head"][-1][1] == pytest.approx(10 * compiled["lr-SGD/default"][-1][1])
    _, unmonitored = fit(form, tmp_path / "unmonitored", monitors=False)
    assert counts == unmonitored, "the monitors made dynamo compile more"
    assert counts["frames"] >= 1


def test_a_rule_on_the_head_of_lightnings_compiled_transformer_still_matches():
    class Transformer(OptimMixin, LightningTransformer):
        def __init__(self) -> None:
            super().__init__(vocab_size=50)
            self.model = torch.compile(self.model, backend=BACKEND)
            self.optim_config = {
                "optimizer": {"name": "adamw", "lr": 1e-3},
                "param_groups": [{"name": "head", "params": r"^model\.decoder\.", "lr_scale": 10}],
            }

    model = Transformer()
    assert any(name.startswith("model._orig_mod.decoder.") for name, _ in model.named_parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # UnmatchedRuleWarning included
        optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW)
    head, default = optimizer.param_groups
    assert (head["name"], head["lr"], default["name"], default["lr"]) == ("head", pytest.approx(1e-2), "default", 1e-3)
    assert {id(p) for p in head["params"]} == {id(p) for p in model.model.decoder.parameters()}


class FrozenStatistics(L.LightningModule):
    """Two BatchNorm layers torch.compile's path cannot recover a batch from: a cumulative average (``momentum=None``)
    and one without running statistics."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.compile(
            nn.Sequential(
                nn.Conv2d(3, 4, 3, padding=1),
                nn.BatchNorm2d(4, momentum=None),
                nn.BatchNorm2d(4, track_running_stats=False),
                nn.BatchNorm2d(4),
            ),
            backend=BACKEND,
        )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.net(batch[0]).square().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_what_compile_cannot_measure_is_named_once_and_left_out(tmp_path):
    torch._dynamo.reset()
    monitor = BatchNormMonitor(report=False, histogram_every_n=1)
    logger = TensorBoardLogger(tmp_path, name="tb", default_hp_metric=False)
    with pytest.warns(UserWarning) as record:
        trainer(callbacks=[monitor], logger=logger, log_every_n_steps=1, max_steps=2).fit(
            FrozenStatistics(), images(samples=16)
        )
    messages = [str(warning.message) for warning in record if "torch.compile" in str(warning.message)]
    assert len(messages) == 1
    (message,) = messages
    assert "input/output histograms" in message and "min_batch_size" in message
    assert re.search(r"'net\.1' \(momentum=None: .*cumulative average", message)
    assert re.search(r"'net\.2' \(track_running_stats=False: it keeps no running statistics\)", message)
    assert "'net.3'" not in message
    scalars = tb.scalars(tmp_path)
    summaries = {f"{t}_{s}" for t in ("running_mean", "running_var", "weight", "bias") for s in ("mean", "min", "max")}
    keys = {key for key in scalars if key.startswith("batchnorm/")}
    assert keys == (
        {f"batchnorm/net.1/{key}" for key in summaries}
        | {f"batchnorm/net.2/{key}_{s}" for key in ("weight", "bias") for s in ("mean", "min", "max")}
        | {f"batchnorm/net.3/{key}" for key in {*summaries, "mean_drift", "var_ratio", "dead_fraction"}}
    )
    assert [step for step, _ in scalars["batchnorm/net.3/mean_drift"]] == [0, 1]
    assert not tb.histogram_steps(tmp_path)


class CompiledStep(L.LightningModule):
    """Compiles a function of its own (``torch.compile(self._loss)``), which ``is_compiled`` cannot see."""

    def __init__(self, compile_loss: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4))
        self.loss = torch.compile(self._loss, backend=BACKEND) if compile_loss else self._loss

    def _loss(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).square().mean()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.loss(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.slow
def test_layers_inside_a_function_compiled_out_of_sight_are_measured_from_their_update():
    """The hooks are attached on the first logging step, before the function's first compilation, so dynamo traces
    them: inside a graph they do nothing (no graph break, no extra graph), and the values come from the running
    statistics' update instead."""
    logged, compiled = {}, {}
    for compile_loss, monitored in ((False, True), (True, False), (True, True)):
        torch._dynamo.reset()
        counters.clear()
        monitor = BatchNormMonitor(report=False)
        trainer(callbacks=[monitor] if monitored else [], log_every_n_steps=1, max_steps=3).fit(
            CompiledStep(compile_loss), images(samples=24)
        )
        logged[compile_loss] = monitor.last
        compiled[monitored] = (counters["frames"]["ok"], counters["stats"]["unique_graphs"])
    assert compiled[True] == compiled[False] == (1, 1)
    assert sorted(logged[True]) == sorted(logged[False]) == ["net.1", "net.3"]
    for layer, values in logged[False].items():
        assert logged[True][layer] == pytest.approx(values, rel=1e-4, abs=1e-6)
