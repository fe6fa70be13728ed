"""``TensorBoardDashboard``: the custom-scalars layout read back from the event file, and what its regexes match.

TensorBoard's custom-scalars plugin selects a chart's tags with Python's ``re.compile(regex).match(tag)`` (from the
tag's start); the tests match the same way against the tags a run actually logged.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from lightning_optim import OptimMixin
from lightning_optim.callbacks import GradNormMonitor, LRMonitor, TensorBoardDashboard
from lightning_optim.callbacks.dashboard import CLIP_SERIES_RUNS, dashboard_layout
from tests import tb
from tests.models import CrashAt, Interrupted, MixinModel, SparseEmbedding, fit_logged, loader, trainer

CONFIG = {
    "optimizer": {"name": "adamw", "lr": 0.1, "weight_decay": 0.01},
    "param_groups": [{"name": "no_decay", "params": r"\.bias$", "weight_decay": 0.0}],
    "scheduler": {"name": "warmup_cosine", "warmup_steps": 2},
}
LR_CHARTS = {
    "Learning rate": ["lr-.*(?<!-momentum)(?<!-weight_decay)$"],
    "Momentum": ["lr-.*-momentum$"],
    "Weight decay": ["lr-.*-weight_decay$"],
}


GRAD_NORM_CHARTS = {
    "Norm before vs after clipping, and threshold": ["clipping/(?:[^/]+/)?norm$"],
    "Clip fraction": ["grad_norm/(?:[^/]+/)?clip_fraction$"],
    "Non-finite steps": ["grad_norm/(?:[^/]+/)?nonfinite$"],
    "Per layer": ["grad_norm/(?!(?:[^/]+/)?(?:total|clipped|threshold|clip_fraction|nonfinite)$).*"],
}


class BatchNormStandIn(L.Callback):
    """A monitor with its own dashboard category, as the BatchNorm monitor has."""

    dashboard_category = "BatchNorm"

    def dashboard_charts(self) -> dict[str, list[str]]:
        return {"Running mean": ["batchnorm/.*/running_mean$"], "Running var": ["batchnorm/.*/running_var$"]}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        pl_module.log_dict({"batchnorm/bn1/running_mean": 0.0, "batchnorm/bn1/running_var": 1.0})


class NoCategory(L.Callback):
    def dashboard_charts(self) -> dict[str, list[str]]:
        return {"Loss": ["train/loss$"]}


def fit(tmp_path: Any, callbacks: list[L.Callback], model: L.LightningModule | None = None, **kwargs: Any) -> None:
    fit_logged(model if model is not None else MixinModel(CONFIG), tmp_path, callbacks, **kwargs)


def test_layout_in_the_event_file_and_what_each_regex_draws(tmp_path):
    callbacks = [
        LRMonitor(log_momentum=True, log_weight_decay=True),
        GradNormMonitor(per_layer_depth=1),
        BatchNormStandIn(),
        TensorBoardDashboard(),
    ]
    fit(tmp_path, callbacks, gradient_clip_val=1.0)
    layout = tb.layout_dict(tb.layout(tmp_path))
    assert layout == {
        "Learning rate": LR_CHARTS,
        "Gradient norm": GRAD_NORM_CHARTS,
        "BatchNorm": {"Running mean": ["batchnorm/.*/running_mean$"], "Running var": ["batchnorm/.*/running_var$"]},
    }
    main = tb.scalars(tmp_path)
    series = tb.nested_runs(tmp_path)
    tags = {(".", tag) for tag in main} | {(run, tag) for run, scalars in series.items() for tag in scalars}
    drawn = {
        chart: sorted(f"{tag} ({run})" for run, tag in tags if any(re.match(regex, tag) for regex in regexes))
        for charts in layout.values()
        for chart, regexes in charts.items()
    }
    assert drawn == {
        "Learning rate": ["lr-AdamW/default (.)", "lr-AdamW/no_decay (.)"],
        "Momentum": ["lr-AdamW/default-momentum (.)", "lr-AdamW/no_decay-momentum (.)"],
        "Weight decay": ["lr-AdamW/default-weight_decay (.)", "lr-AdamW/no_decay-weight_decay (.)"],
        "Norm before vs after clipping, and threshold": [
            "clipping/norm (clip_threshold)",
            "clipping/norm (norm_after_clipping)",
            "clipping/norm (norm_before_clipping)",
        ],
        "Clip fraction": ["grad_norm/clip_fraction (.)"],
        "Non-finite steps": ["grad_norm/nonfinite (.)"],
        "Per layer": ["grad_norm/encoder (.)", "grad_norm/head (.)"],
        "Running mean": ["batchnorm/bn1/running_mean (.)"],
        "Running var": ["batchnorm/bn1/running_var (.)"],
    }
    # Each series run holds exactly what the run itself logged under the series' own key.
    assert series == {
        "clip_threshold": {"clipping/norm": main["grad_norm/threshold"]},
        "norm_after_clipping": {"clipping/norm": main["grad_norm/clipped"]},
        "norm_before_clipping": {"clipping/norm": main["grad_norm/total"]},
    }
    # Nothing the monitors logged is left off the page ("epoch" is Lightning's own, logged beside self.log).
    on_page = {tag for tags in drawn.values() for tag in tags if tag.endswith(" (.)")}
    in_series = {f"grad_norm/{key} (.)" for key in ("total", "clipped", "threshold")}
    assert {f"{tag} (.)" for tag in main} - {"epoch (.)"} == on_page | in_series


def test_the_clipping_series_kept_in_memory_are_written_when_the_run_fails(tmp_path):
    # They wait up to SERIES_WRITE_SECONDS between writes; a run that stops on an exception still writes them all.
    callbacks = [GradNormMonitor(), TensorBoardDashboard(), CrashAt(5)]
    with pytest.raises(Interrupted):
        fit(tmp_path, callbacks, gradient_clip_val=1.0)
    main, series = tb.scalars(tmp_path), tb.nested_runs(tmp_path)
    assert [step for step, _ in main["grad_norm/total"]] == [0, 1, 2, 3, 4]
    assert series["norm_before_clipping"] == {"clipping/norm": main["grad_norm/total"]}
    assert series["norm_after_clipping"] == {"clipping/norm": main["grad_norm/clipped"]}


def test_lr_charts_follow_the_monitor_and_a_scheduler_log_name(tmp_path):
    config = {**CONFIG, "scheduler": {**CONFIG["scheduler"], "log_name": "sched"}}
    fit(tmp_path, [LRMonitor(), TensorBoardDashboard()], MixinModel(config))
    charts = tb.layout_dict(tb.layout(tmp_path))["Learning rate"]
    assert charts == {
        "Learning rate": ["lr-.*(?<!-momentum)(?<!-weight_decay)$", "sched.*(?<!-momentum)(?<!-weight_decay)$"]
    }
    logged = sorted(tb.scalars(tmp_path))
    assert logged == ["sched/default", "sched/no_decay"]
    assert all(any(re.match(regex, tag) for regex in charts["Learning rate"]) for tag in logged)


def test_categories_from_callbacks():
    layout = dashboard_layout([LearningRateMonitor(log_momentum=True), NoCategory(), BatchNormStandIn()])
    assert list(layout) == ["Learning rate", "Gradient norm", "NoCategory", "BatchNorm"]
    assert layout["Learning rate"] == {
        "Learning rate": ["Multiline", LR_CHARTS["Learning rate"]],
        "Momentum": ["Multiline", LR_CHARTS["Momentum"]],
    }
    assert layout["Gradient norm"] == {title: ["Multiline", regexes] for title, regexes in GRAD_NORM_CHARTS.items()}
    assert layout["NoCategory"] == {"Loss": ["Multiline", ["train/loss$"]]}


def test_a_monitor_can_provide_the_gradient_norm_category():
    class OwnGradNormCharts(L.Callback):
        dashboard_category = "Gradient norm"

        def dashboard_charts(self) -> dict[str, list[str]]:
            return {"Total": ["grad_norm/total$"]}

    assert dashboard_layout([OwnGradNormCharts()])["Gradient norm"] == {"Total": ["Multiline", ["grad_norm/total$"]]}


def test_without_tensorboard_it_warns_once_and_does_nothing(tmp_path):
    dashboard = TensorBoardDashboard(histogram_every_n_steps=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            run = trainer(callbacks=[dashboard], logger=CSVLogger(tmp_path), max_steps=2)
            run.fit(MixinModel(CONFIG), loader())
    messages = [str(warning.message) for warning in caught if "TensorBoardDashboard" in str(warning.message)]
    assert messages == [
        "TensorBoardDashboard needs a TensorBoardLogger in the Trainer's loggers; it does nothing here."
    ]


@pytest.mark.parametrize(
    ("optimizer", "tags"),
    [
        (
            "adamw",
            ["grad_hist/encoder.bias", "grad_hist/encoder.weight", "grad_hist/head.bias", "grad_hist/head.weight"],
        ),
        (
            "lbfgs",
            ["grad_hist/encoder.bias", "grad_hist/encoder.weight", "grad_hist/head.bias", "grad_hist/head.weight"],
        ),
        ("sparse_adam", ["grad_hist/embedding.weight"]),
    ],
)
def test_gradient_histograms_every_n_steps(tmp_path, optimizer, tags):
    config = {"optimizer": {"name": optimizer, "lr": 0.01}}
    model = (SparseEmbedding if optimizer == "sparse_adam" else MixinModel)(config)
    fit(tmp_path, [TensorBoardDashboard(histogram_every_n_steps=3)], model)
    # LBFGS calls on_before_optimizer_step once per closure evaluation; still one histogram per step.
    assert tb.histogram_steps(tmp_path) == {tag: [0, 3, 6] for tag in tags}


def test_histograms_leave_out_non_finite_values(tmp_path):
    class NonFinite(L.Callback):
        def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: Any, optimizer: Any) -> None:
            pl_module.head.bias.grad.fill_(float("nan"))
            pl_module.head.weight.grad[0, 0] = float("inf")

    model = MixinModel({"optimizer": {"name": "sgd", "lr": 0.01}})
    fit(tmp_path, [NonFinite(), TensorBoardDashboard(histogram_every_n_steps=4)], model, max_steps=1)
    events = tb.accumulator(tmp_path)
    assert "grad_hist/head.bias" not in events.Tags()["histograms"]
    assert events.Histograms("grad_hist/head.weight")[0].histogram_value.num == 7  # 8 values, one inf


def test_histograms_of_huge_finite_gradients_are_written_whole(tmp_path):
    class Huge(L.Callback):
        def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: Any, optimizer: Any) -> None:
            pl_module.head.weight.grad.copy_(torch.tensor([[-3e38, -1e21, 2e21, 5e30, 1e35, 3e38, 4e25, -7e22]]))

    model = MixinModel({"optimizer": {"name": "sgd", "lr": 0.01}})
    fit(tmp_path, [Huge(), TensorBoardDashboard(histogram_every_n_steps=4)], model, max_steps=1)
    histogram = tb.accumulator(tmp_path).Histograms("grad_hist/head.weight")[0].histogram_value
    assert (histogram.num, sum(histogram.bucket)) == (8, 8)
    assert (histogram.min, histogram.max) == (tb.float32(-3e38), tb.float32(3e38))


def test_bad_histogram_interval():
    with pytest.raises(ValueError, match="histogram_every_n_steps must be a positive int or None, got 0"):
        TensorBoardDashboard(histogram_every_n_steps=0)


def test_no_histograms_by_default(tmp_path):
    fit(tmp_path, [TensorBoardDashboard()], max_steps=2)
    assert tb.histogram_steps(tmp_path) == {}


class BatchNormModel(OptimMixin, L.LightningModule):
    """A regression with a BatchNorm layer, optimized by the mixin."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU())
        self.head = torch.nn.Linear(8, 1)
        self.optim_config = CONFIG

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        return torch.nn.functional.mse_loss(self.head(self.encoder(inputs)), targets)


def test_every_tag_the_monitors_log_is_on_the_page(tmp_path):
    grad_norm = pytest.importorskip("lightning_optim.callbacks.grad_norm_monitor")
    batchnorm = pytest.importorskip("lightning_optim.callbacks.batchnorm_monitor")
    callbacks = [
        LRMonitor(log_momentum=True, log_weight_decay=True),
        grad_norm.GradNormMonitor(per_layer_depth=1),
        batchnorm.BatchNormMonitor(report=False),
        TensorBoardDashboard(),
    ]
    logger = TensorBoardLogger(tmp_path, name="tb", default_hp_metric=False)
    run = trainer(callbacks=callbacks, logger=logger, max_epochs=1, log_every_n_steps=1, gradient_clip_val=1.0)
    run.fit(BatchNormModel(), loader(batch_size=8))
    layout = tb.layout_dict(tb.layout(tmp_path))
    assert list(layout)[:2] == ["Learning rate", "Gradient norm"] and len(layout) == 3
    logged = set(tb.scalars(tmp_path)) - {"epoch"}
    # The clipping chart's series are drawn from runs of their own, one tag each.
    series = {tag for scalars in tb.nested_runs(tmp_path).values() for tag in scalars}
    drawn = {
        (category, chart): {tag for tag in logged | series if any(re.match(regex, tag) for regex in regexes)}
        for category, charts in layout.items()
        for chart, regexes in charts.items()
    }
    assert series == {"clipping/norm"}
    assert logged | series == set().union(*drawn.values()) | {f"grad_norm/{key}" for key in CLIP_SERIES_RUNS}
    # Only the DDP-only chart (BatchNorm rank divergence) stays empty in a single process.
    empty = [layout[category][chart] for (category, chart), tags in drawn.items() if not tags]
    assert [[regex for regex in regexes if "rank_divergence" not in regex] for regexes in empty] == [[]]
    assert drawn["Gradient norm", "Per layer"] == {"grad_norm/encoder", "grad_norm/head"}
