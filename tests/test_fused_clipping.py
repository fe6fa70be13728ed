"""Norm clipping folded into a fused optimizer's step: the same parameters, norms and checkpoints as clipping first."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins import MixedPrecision

from lightning_optim.callbacks import GradNormMonitor
from lightning_optim.clipping.fused_step import clip_in_step, folds_into_step
from tests.callbacks.test_grad_norm_monitor import (
    LBFGSModel,
    SparseModel,
    SpikyMixinModel,
    SpikyModel,
    count_host_syncs,
)
from tests.models import fit_logged, loader, trainer

OPTIMIZERS = {
    "adam": {"name": "adam", "lr": 0.01, "weight_decay": 0.01},
    "adamw": {"name": "adamw", "lr": 0.01, "weight_decay": 0.1},
    "sgd_nesterov": {"name": "sgd", "lr": 0.001, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
}
FIRING, NOT_FIRING = 1.0, 1e4
"""Thresholds: the spiky model's norms go from about 0.05 to about 60, so 1.0 clips some steps and 1e4 none."""


class Recorder(L.Callback):
    """Keeps each optimizer step's ``clip_state.last``."""

    def __init__(self) -> None:
        self.clips = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.clips.append(pl_module.clip_state.last)


def config(optimizer: str, fused: bool) -> dict[str, Any]:
    return {"optimizer": {**OPTIMIZERS[optimizer], "fused": fused}}


def reference(optimizer: str, clip_val: float, epochs: int = 2, **kwargs: Any) -> SpikyModel:
    """Lightning's own clipping (``clip_grad_norm_``) and the unfused optimizer, without the mixin."""
    model = SpikyModel()
    options = {key: value for key, value in OPTIMIZERS[optimizer].items() if key != "name"}
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[OPTIMIZERS[optimizer]["name"]]
    model.configure_optimizers = lambda: cls(model.parameters(), foreach=False, **options)
    trainer(max_epochs=epochs, gradient_clip_val=clip_val, **kwargs).fit(model, loader())
    return model


def assert_same_parameters(mine: torch.nn.Module, theirs: torch.nn.Module) -> None:
    for a, b in zip(mine.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("clip_val", [FIRING, NOT_FIRING], ids=["firing", "not_firing"])
def test_folded_clipping_gives_the_parameters_of_clip_grad_norm_and_the_unfused_optimizer(optimizer, clip_val):
    model, recorder = SpikyMixinModel(config(optimizer, fused=True)), Recorder()
    trainer(max_epochs=2, gradient_clip_val=clip_val, callbacks=[recorder]).fit(model, loader())
    assert len(recorder.clips) == 16 and all(clip.folded for clip in recorder.clips)
    fired = [bool(clip.clipped) for clip in recorder.clips]
    assert any(fired) and not all(fired) if clip_val == FIRING else not any(fired)
    assert [float(clip.total) for clip in recorder.clips] == pytest.approx(model.before, rel=1e-4)
    # The fused kernel writes the divided gradients back: after the step they are the clipped ones.
    assert model.after == pytest.approx([min(b, clip_val) for b in model.before], rel=1e-4)
    assert_same_parameters(model, reference(optimizer, clip_val))
    optimizer_object = model.trainer.optimizers[0]
    assert not hasattr(optimizer_object, "grad_scale") and not hasattr(optimizer_object, "found_inf")


def test_the_monitor_logs_the_same_norms_folded_or_not(tmp_path):
    logged = {
        fused: fit_logged(
            SpikyMixinModel(config("adamw", fused)),
            tmp_path / str(fused),
            [GradNormMonitor(per_layer_depth=1)],
            gradient_clip_val=FIRING,
        )
        for fused in (True, False)
    }
    assert set(logged[True]) == set(logged[False])
    for tag in (tag for tag in logged[True] if tag.startswith("grad_norm/")):
        assert [s for s, _ in logged[True][tag]] == [s for s, _ in logged[False][tag]]
        assert [v for _, v in logged[True][tag]] == pytest.approx([v for _, v in logged[False][tag]], rel=1e-4), tag


class NonfiniteModel(SpikyMixinModel):
    """A non-finite loss at one optimizer step; records the parameters after every step."""

    def __init__(self, optim_config: Any, bad_step: int, bad: float = float("inf")) -> None:
        super().__init__(optim_config)
        self.bad_step, self.bad = bad_step, bad
        self.snapshots = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        return loss * self.bad if self.trainer.global_step == self.bad_step else loss

    def on_train_batch_end(self, *args: Any) -> None:
        super().on_train_batch_end(*args)
        self.snapshots.append([p.detach().clone() for p in self.parameters()])


@pytest.mark.parametrize(
    ("optimizer", "bad_step"), [("adamw", 2), ("adam", 0), ("sgd_nesterov", 2), ("sgd_nesterov", 0)]
)
def test_a_nonfinite_step_is_skipped_and_counted(optimizer, bad_step, tmp_path):
    runs = {}
    for fused in (True, False):
        model = NonfiniteModel(config(optimizer, fused), bad_step)
        logged = fit_logged(model, tmp_path / str(fused), [GradNormMonitor(nonfinite="skip")], gradient_clip_val=FIRING)
        runs[fused] = model
        assert model.clip_state.last.folded is fused
        assert [v for _, v in logged["grad_norm/nonfinite"]] == [float(step >= bad_step) for step in range(8)]
        before = [p.detach().clone() for p in SpikyMixinModel().parameters()] if bad_step == 0 else None
        for a, b in zip(before or model.snapshots[bad_step - 1], model.snapshots[bad_step], strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert all(torch.isfinite(p).all() for p in model.parameters())
        state = model.trainer.optimizers[0].state
        if "adam" in optimizer:
            assert {int(s["step"]) for s in state.values()} == {7}
        else:
            assert all(torch.isfinite(s["momentum_buffer"]).all() for s in state.values())
    assert_same_parameters(runs[True], runs[False])


def test_folded_skip_syncs_nothing_with_the_host(tmp_path):
    torch.manual_seed(0)
    without = count_host_syncs(SpikyMixinModel(config("adamw", fused=True)), [], 6, tmp_path / "without")
    torch.manual_seed(0)
    skipping = count_host_syncs(
        SpikyMixinModel(config("adamw", fused=True)), [GradNormMonitor(nonfinite="skip")], 6, tmp_path / "skipping"
    )
    assert skipping == without


def test_resuming_a_folded_run_continues_it_exactly(tmp_path):
    uninterrupted = SpikyMixinModel(config("adamw", fused=True))
    trainer(max_epochs=2, gradient_clip_val=FIRING).fit(uninterrupted, loader())
    first = SpikyMixinModel(config("adamw", fused=True))
    interrupted = trainer(max_epochs=1, gradient_clip_val=FIRING)
    interrupted.fit(first, loader())
    interrupted.save_checkpoint(tmp_path / "epoch1.ckpt")
    assert "grad_scale" not in str(torch.load(tmp_path / "epoch1.ckpt", weights_only=True)["optimizer_states"])
    resumed = SpikyMixinModel(config("adamw", fused=True))
    trainer(max_epochs=2, gradient_clip_val=FIRING).fit(resumed, loader(), ckpt_path=tmp_path / "epoch1.ckpt")
    assert resumed.clip_state.last.folded
    for a, b in zip(resumed.parameters(), uninterrupted.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


class NotFolding(SpikyMixinModel):
    fold_clipping = False


@pytest.mark.parametrize(
    ("make", "settings"),
    [
        (lambda: SpikyMixinModel(config("adamw", fused=False)), {}),
        (lambda: SpikyMixinModel(config("adamw", fused=True)), {"gradient_clip_algorithm": "value"}),
        (lambda: NotFolding(config("adamw", fused=True)), {}),
        (LBFGSModel, {}),
        (SparseModel, {}),
    ],
    ids=["unfused", "value_clipping", "fold_clipping_off", "lbfgs", "sparse"],
)
def test_other_cases_clip_the_ordinary_way(make, settings):
    model = make()
    trainer(max_steps=3, gradient_clip_val=FIRING, **settings).fit(model, loader())
    assert model.clip_state.last.folded is False


def test_optimizers_that_fold():
    p = torch.nn.Parameter(torch.zeros(2))
    assert [folds_into_step(cls([p], fused=True)) for cls in (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)]
    assert not any(
        folds_into_step(optimizer)
        for optimizer in (torch.optim.AdamW([p]), torch.optim.AdamW([p], foreach=True), torch.optim.LBFGS([p]))
    )


def test_the_divisor_is_the_inverse_of_clip_grad_norm_s_coefficient():
    grads = [torch.randn(5, 3), torch.randn(7)]
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    sgd = torch.optim.SGD(params, lr=1.0, fused=True)
    result = clip_in_step([(str(i), p) for i, p in enumerate(params)], sgd, max_norm=0.5)
    total = torch.nn.utils.clip_grad_norm_([torch.nn.Parameter(torch.zeros_like(g)) for g in grads], 0.5)
    expected = torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))
    torch.testing.assert_close(result.total, expected)
    torch.testing.assert_close(sgd.grad_scale, (expected + 1e-6) / 0.5)
    assert sgd.found_inf is None and total == 0
    sgd.step()
    assert not hasattr(sgd, "grad_scale")
    for p, g in zip(params, grads, strict=True):
        torch.testing.assert_close(p, -g * 0.5 / (expected + 1e-6))


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "unscaled_first"])
def test_under_a_grad_scaler_the_scale_and_the_divisor_combine(fold):
    """16-mixed: Lightning does not unscale for a fused optimizer, whose step divides by scale times clip divisor."""

    def amp() -> MixedPrecision:
        return MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=1024.0))

    model, recorder = (SpikyMixinModel if fold else NotFolding)(config("adamw", fused=True)), Recorder()
    trainer(max_epochs=1, gradient_clip_val=FIRING, plugins=[amp()], callbacks=[recorder]).fit(model, loader())
    assert [clip.folded for clip in recorder.clips] == [fold] * 8
    theirs = reference("adamw", FIRING, epochs=1, plugins=[amp()])
    # Lightning unscaled the unfused reference's gradients before on_before_optimizer_step, and not ours.
    assert [float(clip.total) for clip in recorder.clips] == pytest.approx(theirs.before, rel=1e-4)
    assert model.before[0] == pytest.approx(1024.0 * theirs.before[0], rel=1e-4)
    assert_same_parameters(model, theirs)


def test_bf16_mixed_folds_and_matches():
    model = SpikyMixinModel(config("adam", fused=True))
    trainer(max_epochs=1, gradient_clip_val=FIRING, precision="bf16-mixed").fit(model, loader())
    assert model.clip_state.last.folded
    assert_same_parameters(model, reference("adam", FIRING, epochs=1, precision="bf16-mixed"))
