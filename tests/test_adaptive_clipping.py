"""Adaptive clipping (``optim_config.clipping``): AutoClip and ZClip thresholds against plain-Python references."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_module
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_optim import CheckpointError, OptimConfigError, OptimMixin, validate_optim_config
from lightning_optim.callbacks import GradNormMonitor
from lightning_optim.cli.common import compose_optim_config
from lightning_optim.clipping.adaptive import AdaptiveThresholds, AutoClip, ZClip, resolve_clipping
from lightning_optim.clipping.step import clip_for_step
from tests import tb
from tests.callbacks.test_grad_norm_monitor import SpikyMixinModel
from tests.cli.apps import TINY, run_app
from tests.models import fit_logged, loader, trainer
from tests.test_clipping import ShardedStandIn, clipped_by_torch, grads, parameters

AUTOCLIP = {"name": "autoclip", "percentile": 25, "history": 5}
ZCLIP = {"name": "zclip", "z_threshold": 1.5, "alpha": 0.8, "warmup_steps": 3}
NORMS = [1.0, 1.2, 0.9, 1.1, 7.0, 1.0, 0.8, 12.0, 1.3, 1.1, 0.95, 30.0, 1.0, 1.05]
"""A recorded norm series with spikes (steps 4, 7, 11)."""


def autoclip_reference(norms: list[float], percentile: float, history: int) -> list[float]:
    """AutoClip as its paper's code does it (numpy's linear percentile of every norm so far), over a window."""
    thresholds, seen = [], []
    for norm in norms:
        seen.append(norm)
        window = sorted(x for x in seen[-history:] if math.isfinite(x))  # a NaN/Inf norm counts for nothing
        rank = percentile / 100 * (len(window) - 1)
        below, above = window[math.floor(rank)], window[math.ceil(rank)]
        thresholds.append(below + (above - below) * (rank - math.floor(rank)))
    return thresholds


def zclip_reference(
    norms: list[float], z_threshold: float, alpha: float, warmup_steps: int, max_grad_norm: float | None = None
) -> list[float]:
    """ZClip as the paper's reference implementation does it, per step: the threshold clipped at (a spike), the
    detection boundary ``mean + z * (std + eps)`` (no spike), or inf (warm-up); capped at ``max_grad_norm``."""
    return [threshold for threshold, _, _ in zclip_steps(norms, z_threshold, alpha, warmup_steps, max_grad_norm)]


def zclip_steps(
    norms: list[float], z_threshold: float, alpha: float, warmup_steps: int, max_grad_norm: float | None = None
) -> list[tuple[float, float, float]]:
    """The reference's threshold and its statistics (mean, variance) after each step, in Python's float64 (``nan``
    during the warm-up): the authors' code keeps them as Python floats and caps with ``min(adaptive, max_grad_norm)``,
    updating the statistics from the adaptive value."""
    steps: list[tuple[float, float, float]] = []
    warmup: list[float] = []
    cap = math.inf if max_grad_norm is None else max_grad_norm
    mean = var = math.nan
    for norm in norms:
        if len(warmup) < warmup_steps:
            warmup.append(norm)
            if len(warmup) == warmup_steps:
                mean = sum(warmup) / len(warmup)
                var = sum((x - mean) ** 2 for x in warmup) / len(warmup)
            steps.append((cap, mean, var))
            continue
        std = var**0.5
        z = (norm - mean) / (std + 1e-6)
        if z > z_threshold:
            effective = mean + (z_threshold * std) / (z / z_threshold)
            threshold = effective
        else:
            effective = norm
            threshold = mean + z_threshold * (std + 1e-6)
        mean = alpha * mean + (1 - alpha) * effective
        var = alpha * var + (1 - alpha) * (effective - mean) ** 2
        steps.append((min(threshold, cap), mean, var))
    return steps


def reference(section: dict[str, Any], norms: list[float]) -> list[float]:
    options = {key: value for key, value in section.items() if key != "name"}
    return (autoclip_reference if section["name"] == "autoclip" else zclip_reference)(norms, **options)


@pytest.mark.parametrize(
    "section",
    [
        AUTOCLIP,
        {"name": "autoclip", "percentile": 100, "history": 1000},
        {"name": "autoclip", "percentile": 10, "history": 1},
        ZCLIP,
        {**ZCLIP, "max_grad_norm": 2.0},
    ],
    ids=["autoclip", "autoclip_max", "autoclip_history_1", "zclip", "zclip_max_grad_norm"],
)
def test_thresholds_equal_the_reference_step_by_step(section):
    threshold = validate_and_build(section)
    mine = [float(threshold(torch.tensor(norm))) for norm in NORMS]
    assert mine == pytest.approx(reference(section, NORMS), rel=1e-6)


def validate_and_build(section: dict[str, Any]) -> AutoClip | ZClip:
    return resolve_clipping(section).build()


def test_a_nonfinite_norm_leaves_the_history_as_it_was():
    autoclip, zclip = validate_and_build(AUTOCLIP), validate_and_build(ZCLIP)
    series = [*NORMS[:5], math.nan, math.inf, *NORMS[5:]]
    autoclip_thresholds = [float(autoclip(torch.tensor(norm))) for norm in series]
    zclip_thresholds = [float(zclip(torch.tensor(norm))) for norm in series]
    finite = [index for index, norm in enumerate(series) if math.isfinite(norm)]
    # AutoClip: the non-finite steps hold a slot of the window and count for nothing.
    assert [autoclip_thresholds[i] for i in finite] == pytest.approx(
        [autoclip_reference(series, 25, 5)[i] for i in finite], rel=1e-6
    )
    # ZClip: the statistics are those of the finite norms alone.
    assert [zclip_thresholds[i] for i in finite] == pytest.approx(zclip_reference(NORMS, 1.5, 0.8, 3), rel=1e-6)


def test_zclip_s_max_grad_norm_caps_every_threshold_the_warm_up_s_included():
    zclip = validate_and_build({**ZCLIP, "max_grad_norm": 2.0})
    mine = [float(zclip(torch.tensor(norm))) for norm in NORMS]
    # Warm-up at the cap; then min(adaptive, 2.0): the boundary (1.22 at step 3) and the spike at step 4 (1.05).
    assert mine[:3] == [2.0, 2.0, 2.0]
    assert mine == pytest.approx(zclip_reference(NORMS, 1.5, 0.8, 3, 2.0), rel=1e-6)
    assert max(mine) == 2.0 and mine[4] == pytest.approx(1.0516, abs=1e-4)


def test_zclip_s_statistics_stay_within_1e_12_of_a_float64_reference_over_a_long_run():
    generator = torch.Generator().manual_seed(0)
    norms = (torch.rand(5000, generator=generator, dtype=torch.float64) * 0.3 + 1.0).tolist()
    norms[1000::700] = [20.0] * len(norms[1000::700])
    options = {"z_threshold": 2.5, "alpha": 0.97, "warmup_steps": 25, "max_grad_norm": 1.25}
    zclip = ZClip(**options)
    mine = []
    for norm in norms:
        threshold = zclip(torch.tensor(norm, dtype=torch.float32))
        state = zclip.state_dict()
        mine.append((threshold, state["mean"], state["var"]))
    # The reference takes the norms as the clipping code hands them over: float32 tensors.
    expected = zclip_steps([float(torch.tensor(n, dtype=torch.float32)) for n in norms], **options)
    assert all(mean.dtype == torch.float64 and var.dtype == torch.float64 for _, mean, var in mine[25:])
    mean_error = max(abs(float(m) - e) for (_, m, _), (_, e, _) in zip(mine[25:], expected[25:], strict=True))
    var_error = max(abs(float(v) - e) for (_, _, v), (_, _, e) in zip(mine[25:], expected[25:], strict=True))
    assert mean_error < 1e-12 and var_error < 1e-12
    # The threshold is handed out in float32: the float64 value rounded once.
    assert [float(t) for t, _, _ in mine] == [float(torch.tensor(t, dtype=torch.float32)) for t, _, _ in expected]


class Recorder(L.Callback):
    """Per optimizer step: the gradients before clipping, the clip result, and the gradients after the step."""

    def __init__(self) -> None:
        self.before: list[list[torch.Tensor]] = []
        self.after: list[list[torch.Tensor]] = []
        self.totals: list[float] = []
        self.thresholds: list[float] = []

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        self.before.append([p.grad.clone() for p in pl_module.parameters()])

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.after.append([p.grad.clone() for p in pl_module.parameters()])
        last = pl_module.clip_state.last
        self.totals.append(float(last.total))
        self.thresholds.append(float(last.threshold))


def clipping_config(section: dict[str, Any], fused: bool = False) -> dict[str, Any]:
    return {"optimizer": {"name": "adamw", "lr": 0.01, "fused": fused}, "clipping": section}


@pytest.mark.slow
@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "folded"])
@pytest.mark.parametrize("section", [AUTOCLIP, ZCLIP], ids=["autoclip", "zclip"])
def test_a_run_clips_at_the_reference_thresholds(section, fused):
    recorder = Recorder()
    trainer(max_epochs=2, callbacks=[recorder]).fit(SpikyMixinModel(clipping_config(section, fused)), loader())
    assert recorder.thresholds == pytest.approx(reference(section, recorder.totals), rel=1e-6)
    clipped_steps = 0
    for total, threshold, before, after in zip(
        recorder.totals, recorder.thresholds, recorder.before, recorder.after, strict=True
    ):
        coefficient = min(1.0, threshold / (total + 1e-6))
        clipped_steps += coefficient < 1
        for grad_before, grad_after in zip(before, after, strict=True):
            torch.testing.assert_close(grad_after, grad_before * coefficient, rtol=1e-5, atol=1e-7)
    assert clipped_steps >= 3  # the spikes are clipped


def count_syncs(model: L.LightningModule, callbacks: list[L.Callback], tmp_path: Any, **kwargs: Any) -> int:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        trainer(
            max_steps=6,
            log_every_n_steps=10_000,
            callbacks=callbacks,
            logger=TensorBoardLogger(tmp_path, name="", version=""),
            **kwargs,
        ).fit(model, loader())
    return sum(e.count for e in profile.key_averages() if e.key in ("aten::item", "aten::_local_scalar_dense"))


@pytest.mark.slow
@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "folded"])
@pytest.mark.parametrize("section", [AUTOCLIP, ZCLIP], ids=["autoclip", "zclip"])
def test_adaptive_clipping_adds_no_host_sync(section, fused, tmp_path):
    torch.manual_seed(0)
    unclipped = count_syncs(
        SpikyMixinModel({"optimizer": {"name": "adamw", "fused": fused}}), [GradNormMonitor()], tmp_path / "u"
    )
    torch.manual_seed(0)
    adaptive = count_syncs(SpikyMixinModel(clipping_config(section, fused)), [GradNormMonitor()], tmp_path / "a")
    assert adaptive == unclipped


@pytest.mark.parametrize("section", [AUTOCLIP, ZCLIP], ids=["autoclip", "zclip"])
def test_a_resumed_run_continues_the_threshold_sequence_exactly(section, tmp_path):
    uninterrupted = Recorder()
    trainer(max_epochs=3, callbacks=[uninterrupted]).fit(SpikyMixinModel(clipping_config(section)), loader())
    first = Recorder()
    interrupted = trainer(max_epochs=1, callbacks=[first])
    interrupted.fit(SpikyMixinModel(clipping_config(section)), loader())
    interrupted.save_checkpoint(tmp_path / "epoch1.ckpt")
    assert torch.load(tmp_path / "epoch1.ckpt", weights_only=True)["optim_clipping"][0]["state"]["count"] == 8
    resumed = Recorder()
    trainer(max_epochs=3, callbacks=[resumed]).fit(
        SpikyMixinModel(clipping_config(section)), loader(), ckpt_path=tmp_path / "epoch1.ckpt"
    )
    assert first.thresholds + resumed.thresholds == uninterrupted.thresholds


def test_a_second_fit_without_a_checkpoint_starts_a_fresh_history():
    model, second = SpikyMixinModel(clipping_config(ZCLIP)), Recorder()
    trainer(max_epochs=1).fit(model, loader())
    trainer(max_epochs=1, callbacks=[second]).fit(model, loader())
    assert second.thresholds[: ZCLIP["warmup_steps"]] == [math.inf] * ZCLIP["warmup_steps"]
    assert second.thresholds == pytest.approx(reference(ZCLIP, second.totals), rel=1e-6)


@pytest.mark.parametrize("section", [AUTOCLIP, ZCLIP], ids=["autoclip", "zclip"])
def test_the_logged_threshold_is_the_reference_threshold(section, tmp_path):
    logged = fit_logged(SpikyMixinModel(clipping_config(section)), tmp_path, [GradNormMonitor()], max_epochs=2)
    totals = [value for _, value in logged["grad_norm/total"]]
    expected = [(step, t) for (step, _), t in zip(logged["grad_norm/total"], reference(section, totals), strict=True)]
    finite = [(step, t) for step, t in expected if math.isfinite(t)]
    assert [step for step, _ in logged["grad_norm/threshold"]] == [step for step, _ in finite]
    assert [value for _, value in logged["grad_norm/threshold"]] == pytest.approx([t for _, t in finite], rel=1e-6)
    if section["name"] == "zclip":  # no threshold during the warm-up
        assert len(finite) == len(expected) - ZCLIP["warmup_steps"]


@pytest.mark.parametrize(
    ("clipping", "message"),
    [
        ({"name": "autoclp"}, r"clipping\.name = 'autoclp' is not valid\. Did you mean 'autoclip'\?"),
        ({"name": "autoclip", "percentile": 0}, r"clipping\.percentile = 0 is not valid\. Expected a number in \(0,"),
        ({"name": "autoclip", "percentile": 100.5}, r"clipping\.percentile = 100\.5 is not valid"),
        (
            {"name": "autoclip", "history": 0},
            r"clipping\.history = 0 is not valid\. Expected an integer in \[1, 100000\]",
        ),
        ({"name": "autoclip", "history": 2.5}, r"clipping\.history = 2\.5 is not valid"),
        (
            {"name": "autoclip", "history": 1e8},
            r"clipping\.history = 100000000 is not valid\. Expected an integer in \[1, 100000\], e\.g\. 1000",
        ),
        (
            {"name": "zclip", "warmup_steps": 100001},
            r"clipping\.warmup_steps = 100001 is not valid\. Expected an integer in \[1, 100000\], e\.g\. 25",
        ),
        (
            {"name": "zclip", "max_grad_norm": 0},
            r"clipping\.max_grad_norm = 0 is not valid\. Expected a finite norm > 0, e\.g\. 1\.0 .*or null",
        ),
        ({"name": "zclip", "max_grad_norm": -1.0}, r"clipping\.max_grad_norm = -1\.0 is not valid"),
        ({"name": "autoclip", "percentil": 5}, r"clipping\.percentil = 5 is not valid\. Did you mean 'percentile'\?"),
        ({"name": "zclip", "alpha": 1}, r"clipping\.alpha = 1 is not valid\. Expected a number in \(0, 1\)"),
        ({"name": "zclip", "alpha": 0.0}, r"clipping\.alpha = 0\.0 is not valid"),
        ({"name": "zclip", "z_threshold": 0}, r"clipping\.z_threshold = 0 is not valid\. Expected a number > 0"),
        (
            {"name": "zclip", "warmup_steps": 0},
            r"clipping\.warmup_steps = 0 is not valid\. Expected an integer in \[1, 100000\]",
        ),
        ({"name": "zclip", "percentile": 5}, r"clipping\.percentile = 5 is not valid\. Expected a key of zclip"),
        ({"percentile": 5}, r"optim_config\.clipping = \{'percentile': 5\} is not valid\. Expected a mapping with"),
        ("autoclip", r"optim_config\.clipping = 'autoclip' is not valid\. Expected a mapping"),
    ],
)
def test_bad_sections_are_refused_naming_key_and_value(clipping, message):
    with pytest.raises(OptimConfigError, match=message):
        validate_optim_config({"optimizer": {"name": "sgd"}, "clipping": clipping})


def test_a_named_optimizer_s_section_is_checked_under_its_key():
    config = {"optimizers": {"g": {"params": "^", "optimizer": {"name": "sgd"}, "clipping": {"name": "zclip"}}}}
    assert validate_optim_config(config)["optimizers"]["g"]["clipping"] == {"name": "zclip"}
    config["optimizers"]["g"]["clipping"] = {"name": "zclip", "alpha": 2}
    with pytest.raises(OptimConfigError, match=r"optim_config\.optimizers\.g\.clipping\.alpha = 2 is not valid"):
        validate_optim_config(config)


def test_the_section_is_kept_as_given_and_left_out_when_unset():
    assert "clipping" not in validate_optim_config({"optimizer": {"name": "sgd"}})
    assert validate_optim_config({"optimizer": {"name": "sgd"}, "clipping": {"name": "autoclip", "history": 1e2}})[
        "clipping"
    ] == {"name": "autoclip", "history": 100}


def test_a_trainer_threshold_as_well_is_refused_naming_both():
    model = SpikyMixinModel(clipping_config(AUTOCLIP))
    with pytest.raises(OptimConfigError, match=r"Trainer\(gradient_clip_val=0\.5\) and optim_config\.clipping both"):
        trainer(max_steps=1, gradient_clip_val=0.5).fit(model, loader())


def test_value_clipping_as_well_is_refused_before_the_first_step():
    model = SpikyMixinModel(clipping_config(ZCLIP))
    fit = trainer(max_steps=2, gradient_clip_algorithm="value")
    with pytest.raises(
        OptimConfigError,
        match=r"^Trainer\(gradient_clip_algorithm='value'\) with optim_config\.clipping: an adaptive threshold clips "
        r"by norm\. Unset gradient_clip_algorithm \(trainer\.gradient_clip_algorithm=null\) or set it to 'norm'",
    ):
        fit.fit(model, loader())
    assert fit.global_step == 0


class TwoOptimizers(OptimMixin, L.LightningModule):
    """Manual optimization with two submodules; the first is clipped with ``clip_gradients(opt)`` (no value)."""

    def __init__(self, optim_config: dict[str, Any], clip_value: float | None = None, clips: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.automatic_optimization = False
        self.first, self.second = torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)
        self.optim_config = optim_config
        self.clip_value = clip_value
        self.clips = clips
        self.norms: list[float] = []
        self.thresholds: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> None:
        inputs, targets = batch
        for index, optimizer in enumerate(self.optimizers()):  # type: ignore[union-attr]
            module = self.first if index == 0 else self.second
            scale = 30.0 if batch_idx % 4 == 3 else 1.0
            self.manual_backward(torch.nn.functional.mse_loss(module(inputs), targets) * scale)
            if index == 0 and self.clips:
                self.norms.append(float(torch.nn.utils.get_total_norm([p.grad for p in module.parameters()])))
                self.clip_gradients(optimizer, gradient_clip_val=self.clip_value)
                self.thresholds.append(float(self.clip_state.last.threshold))
            optimizer.step()
            optimizer.zero_grad()


TWO = {
    "optimizers": {
        "first": {"params": r"^first\.", "optimizer": {"name": "sgd", "lr": 0.01}, "clipping": AUTOCLIP},
        "second": {"params": r"^second\.", "optimizer": {"name": "sgd", "lr": 0.01}},
    }
}


def test_manual_optimization_clips_a_named_optimizer_at_its_own_threshold():
    model = TwoOptimizers(TWO)
    trainer(max_epochs=2).fit(model, loader())
    assert model.thresholds == pytest.approx(autoclip_reference(model.norms, 25, 5), rel=1e-6)
    with pytest.raises(OptimConfigError, match=r"clip_gradients\(gradient_clip_val=0\.5\) for an optimizer whose"):
        trainer(max_steps=1).fit(TwoOptimizers(TWO, clip_value=0.5), loader())


def test_manual_optimization_without_clip_gradients_warns_that_nothing_was_clipped():
    with pytest.warns(UserWarning, match=r"optim_config\.optimizers\.first\.clipping clipped nothing during the first"):
        trainer(max_epochs=2).fit(TwoOptimizers(TWO, clips=False), loader())


@pytest.mark.slow
@pytest.mark.parametrize("option", ["autoclip", "zclip", "none"])
def test_the_hydra_group_composes_into_optim_config(option):
    with initialize_config_module(version_base="1.3", config_module="lightning_optim.conf"):
        cfg = compose(config_name="train", overrides=[f"clipping={option}"])
    optim_config = validate_optim_config(compose_optim_config(cfg))
    if option == "none":
        assert "clipping" not in optim_config and cfg.trainer.gradient_clip_val == 1.0
    else:
        assert optim_config["clipping"]["name"] == option and cfg.trainer.gradient_clip_val is None
        defaults = {"autoclip": AutoClip(), "zclip": ZClip()}[option]
        options = {key: value for key, value in optim_config["clipping"].items() if key != "name"}
        assert dataclasses.asdict(type(defaults)(**options)) == dataclasses.asdict(defaults)  # the defaults


def test_the_train_app_clips_adaptively_from_the_command_line(tmp_path):
    run_dir = tmp_path / "run"
    run_app("lightning_optim.cli.train", *TINY, "clipping=autoclip", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    logged = tb.scalars(run_dir / "tensorboard")
    totals = [value for _, value in logged["grad_norm/total"]]
    assert [step for step, _ in logged["grad_norm/threshold"]] == [step for step, _ in logged["grad_norm/total"]]
    expected = autoclip_reference(totals, 10, 1000)
    assert [value for _, value in logged["grad_norm/threshold"]] == pytest.approx(expected, rel=1e-6)


def quarter_of_the_norm(total: torch.Tensor) -> torch.Tensor:
    """An adaptive threshold that always clips: a quarter of this step's norm."""
    return total / 4


@pytest.mark.parametrize("path", ["unfused", "folded", "fsdp"])
def test_clip_for_step_takes_an_adaptive_threshold_on_every_path(path):
    named = parameters()
    optimizer = torch.optim.SGD([parameter for _, parameter in named], lr=1.0, fused=path == "folded")
    sharded = ShardedStandIn(named) if path == "fsdp" else None
    result = clip_for_step(optimizer, named, quarter_of_the_norm, sharded=sharded)
    total, expected = clipped_by_torch(float(quarter_of_the_norm(result.total)))
    torch.testing.assert_close(result.total, total, rtol=0, atol=0)
    torch.testing.assert_close(result.threshold, total / 4, rtol=0, atol=0)
    assert result.folded == (path == "folded") and bool(result.clipped)
    if path == "folded":
        optimizer.step()  # the fused kernel divides the gradients and writes them back
    if path == "fsdp":
        assert sharded.calls == [math.inf]  # asked for the global norm only
    for mine, theirs in zip(grads(named), expected, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=0)


def test_an_adaptive_threshold_clips_by_norm_only():
    named = parameters()
    with pytest.raises(ValueError, match=r"An adaptive threshold clips by norm; gradient_clip_algorithm='value'"):
        clip_for_step(torch.optim.SGD([p for _, p in named]), named, quarter_of_the_norm, "value")


def thresholds_after(section: dict[str, Any], steps: int) -> AdaptiveThresholds:
    """The thresholds of one optimizer configured with ``section``, after ``steps`` norms of the recorded series."""
    thresholds = AdaptiveThresholds()
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    thresholds.configure({None: resolve_clipping(section)}, [(None, optimizer)])
    for norm in NORMS[:steps]:
        thresholds.of(optimizer)(torch.tensor(norm))
    return thresholds


def edited(records: list[dict[str, Any]], key: str, value: Any) -> list[dict[str, Any]]:
    return [{**records[0], "state": {**records[0]["state"], key: value}}]


@pytest.mark.parametrize(
    "section,key,value,expected",
    [
        (
            AUTOCLIP,
            "norms",
            torch.full((5,), -100.0),
            "tensor of shape (5,) (the last history=5 norms)",
        ),
        (AUTOCLIP, "norms", torch.tensor([1.0, math.inf, 1.0, 1.0, 1.0]), "each value NaN or finite and >= 0"),
        (AUTOCLIP, "norms", torch.ones(3), "a floating-point tensor of shape (5,)"),
        (AUTOCLIP, "norms", torch.ones(5, dtype=torch.int64), "a floating-point tensor of shape (5,)"),
        (AUTOCLIP, "norms", None, "a floating-point tensor of shape (5,)"),
        (AUTOCLIP, "count", 6.0, "an int >= 0 (the steps whose norms were seen)"),
        (AUTOCLIP, "count", -1, "an int >= 0"),
        (AUTOCLIP, "count", True, "an int >= 0"),
        (ZCLIP, "mean", torch.tensor(-50.0), "a floating-point tensor of shape () (the EMA of the norm (0-d))"),
        (ZCLIP, "var", torch.tensor(-1.0), "a floating-point tensor of shape () (the EMA of the norm's variance"),
        (ZCLIP, "var", torch.tensor(math.inf), "each value NaN or finite and >= 0"),
        (ZCLIP, "mean", None, "a floating-point tensor of shape ()"),
        (ZCLIP, "mean", torch.ones(2), "a floating-point tensor of shape ()"),
        (ZCLIP, "warmup", torch.ones(2), "a floating-point tensor of shape (3,) (the warm-up's warmup_steps=3 norms)"),
        (ZCLIP, "count", 6.5, "an int >= 0"),
    ],
)
def test_a_restored_history_no_run_could_write_is_refused_naming_its_key(section, key, value, expected):
    records = thresholds_after(section, 6).state_dict()
    fresh = thresholds_after(section, 0)
    with pytest.raises(CheckpointError) as raised:
        fresh.load_state_dict(edited(records, key, value), "optim_clipping")
    assert str(raised.value).startswith(f"Checkpoint entry optim_clipping[0].state.{key} = ")
    assert " is not valid: expected a" in str(raised.value)
    assert expected in str(raised.value)
    assert "Resume from another checkpoint, or delete the top-level entry optim_clipping" in str(raised.value)


@pytest.mark.parametrize(
    "records,key",
    [
        ({"optimizer": None}, "optim_clipping"),
        (["autoclip"], "optim_clipping[0]"),
        ([{"optimizer": 3, "config": {}, "state": {}}], "optim_clipping[0].optimizer"),
        ([{"optimizer": None, "config": AUTOCLIP, "state": [1.0]}], "optim_clipping[0].state"),
    ],
)
def test_restored_records_of_another_shape_are_refused_naming_their_key(records, key):
    with pytest.raises(CheckpointError, match=rf"^Checkpoint entry {re.escape(key)} = .* is not valid: expected "):
        thresholds_after(AUTOCLIP, 0).load_state_dict(records, "optim_clipping")


def test_a_resume_from_negative_autoclip_norms_is_refused_before_any_step(tmp_path):
    first = trainer(max_epochs=1)
    first.fit(SpikyMixinModel(clipping_config(AUTOCLIP)), loader())
    first.save_checkpoint(tmp_path / "saved.ckpt")
    checkpoint = torch.load(tmp_path / "saved.ckpt", weights_only=True)
    checkpoint["optim_clipping"][0]["state"]["norms"] = -checkpoint["optim_clipping"][0]["state"]["norms"].abs()
    torch.save(checkpoint, tmp_path / "edited.ckpt")
    resumed = Recorder()
    with pytest.raises(CheckpointError, match=r"^Checkpoint entry optim_clipping\[0\]\.state\.norms = tensor\(\[-"):
        trainer(max_epochs=2, callbacks=[resumed]).fit(
            SpikyMixinModel(clipping_config(AUTOCLIP)), loader(), ckpt_path=tmp_path / "edited.ckpt"
        )
    assert resumed.thresholds == []
