"""``optim_config.resume``: each policy's first resumed lrs and optimizer state, branched cooldowns, the policy line."""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_optim.errors import OptimConfigError
from lightning_optim.fit.resume import RESUME_CHECKPOINT_KEY
from lightning_optim.fit.run_length import ResumeConfigWarning
from lightning_optim.schedule.closed_form import Polynomial, Rewarm
from tests.models import CrashAt, Interrupted, MixinModel, RecordingModel, loader, step_lrs, trainer

LINEAR = {"name": "warmup_linear", "warmup_steps": 2, "total_steps": None}
"""A schedule sized by the run: 0.1 * k / 2 for k < 2, then 0.1 * (1 - (k - 2) / (T - 2)) down to 0 at T."""


def config(resume: dict[str, Any] | None = None, **optimizer: Any) -> dict[str, Any]:
    section = {"optimizer": {"name": "adam", "lr": 0.1, **optimizer}, "scheduler": LINEAR}
    return {**section, "resume": resume} if resume is not None else section


def first_run(tmp_path: Path, steps: int = 8, optim_config: dict[str, Any] | None = None) -> Path:
    """One epoch of 8 steps over a schedule sized by it (the lr ends at 0), stopped after ``steps``; its checkpoint."""
    saving = ModelCheckpoint(dirpath=tmp_path, filename="{step}", every_n_train_steps=steps)
    run = trainer(max_epochs=1, callbacks=[saving, CrashAt(steps)], enable_checkpointing=True)
    with contextlib.suppress(Interrupted):
        run.fit(MixinModel(optim_config or config()), loader())
    return tmp_path / f"step={steps}.ckpt"


def resumed(checkpoint: Path, optim_config: dict[str, Any], **trainer_kwargs: Any) -> tuple[MixinModel, Any, list[str]]:
    """Resume ``checkpoint`` with ``optim_config`` (a ``CrashAt`` callback may stop it); the model, its trainer, and
    the ResumeConfigWarnings."""
    model = MixinModel(optim_config)
    run = trainer(**{"max_epochs": 3, **trainer_kwargs})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with contextlib.suppress(Interrupted):
            run.fit(model, loader(), ckpt_path=checkpoint)
    return model, run, [str(w.message) for w in caught if issubclass(w.category, ResumeConfigWarning)]


def linear(k: int, total: int) -> float:
    return 0.1 * (k / 2 if k < 2 else max(0.0, 1 - (k - 2) / (total - 2)))


def test_keep_is_today_s_resume_the_longer_run_stays_at_lr_0_and_warns(tmp_path):
    model, _, messages = resumed(first_run(tmp_path), config())
    assert [lrs[0] for lrs in step_lrs(model)][:4] == [0.0, 0.0, 0.0, 0.0]
    assert len(messages) == 1 and "the checkpoint's run was 8 steps long, this one is 24 steps" in messages[0]


def test_restart_runs_the_schedule_from_its_step_0_over_the_steps_left(tmp_path):
    model, run, messages = resumed(first_run(tmp_path), config({"schedule": "restart"}))
    lrs = [lrs[0] for lrs in step_lrs(model)]
    # 16 steps left: the warmup of 2 steps, then a linear decay to 0 at the run's last step.
    assert lrs[:4] == [0.0, 0.05, 0.1, pytest.approx(0.1 * (1 - 1 / 14), abs=1e-15)]
    assert lrs == pytest.approx([linear(k, 16) for k in range(16)], abs=1e-15)
    assert run.optimizers[0].param_groups[0]["lr"] == 0.0 and run.global_step == 24
    assert messages == []


def test_rewarm_climbs_from_0_to_the_stretched_schedule_s_lr_at_the_resumed_step(tmp_path):
    model, _, messages = resumed(first_run(tmp_path), config({"schedule": "rewarm", "rewarm_steps": 4}))
    lrs = [lrs[0] for lrs in step_lrs(model)]
    peak = 1 - 6 / 22  # the schedule over the new 24 steps, at the resumed step 8
    assert lrs[:6] == [
        0.0,
        0.1 * (peak / 4),
        0.1 * (peak * 2 / 4),
        0.1 * (peak * 3 / 4),
        linear(12, 24),
        linear(13, 24),
    ]
    assert lrs[:6] == pytest.approx([0.0, 0.018181818, 0.036363636, 0.054545454, 0.054545454, 0.05], abs=1e-9)
    assert lrs[-1] == linear(23, 24) and messages == []


def test_a_state_warmup_holds_lr_0_then_the_kept_schedule_goes_on(tmp_path):
    checkpoint = first_run(tmp_path, steps=4)  # mid-schedule: the lr of step 4 is 0.1 * (1 - 2 / 6)
    model, _, messages = resumed(checkpoint, config({"state_warmup_steps": 2}), max_epochs=1)
    lrs = [lrs[0] for lrs in step_lrs(model)]
    assert lrs == [0.0, 0.0, linear(6, 8), linear(7, 8)]
    assert messages == []


def test_reset_starts_a_fresh_adam_on_the_checkpoint_s_weights_at_the_schedule_s_position(tmp_path):
    checkpoint = first_run(tmp_path, steps=4)
    saved = torch.load(checkpoint, weights_only=True)
    new_config = config({"optimizer_state": "reset"}, betas=[0.8, 0.99])
    model, run, messages = resumed(checkpoint, new_config, max_epochs=1, callbacks=[CrashAt(5)])
    optimizer = run.optimizers[0]
    # The reference: a fresh Adam over the checkpoint's weights, one step on the same first batch at the same lr.
    reference = RecordingModel()
    reference.load_state_dict(saved["state_dict"])
    fresh = torch.optim.Adam(reference.parameters(), lr=linear(4, 8), betas=(0.8, 0.99))
    inputs, targets = next(iter(loader()))
    torch.nn.functional.mse_loss(reference(inputs), targets).backward()
    fresh.step()
    assert [lrs[0] for lrs in step_lrs(model)] == [linear(4, 8)]
    for parameter, expected in zip(model.parameters(), reference.parameters(), strict=True):
        state, reference_state = optimizer.state[parameter], fresh.state[expected]
        assert float(state["step"]) == 1.0
        assert torch.equal(state["exp_avg"], reference_state["exp_avg"])
        assert torch.equal(state["exp_avg_sq"], reference_state["exp_avg_sq"])
        assert torch.equal(parameter, expected)
    assert optimizer.param_groups[0]["betas"] == (0.8, 0.99) and messages == []


def test_keep_restores_adam_s_state(tmp_path):
    _, run, _ = resumed(first_run(tmp_path, steps=4), config(), max_epochs=1, callbacks=[CrashAt(5)])
    assert {float(state["step"]) for state in run.optimizers[0].state.values()} == {5.0}


def test_reset_allows_another_optimizer_class(tmp_path):
    checkpoint = first_run(tmp_path, steps=4)
    sgd = {**config({"optimizer_state": "reset"}), "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}}
    _, run, messages = resumed(checkpoint, sgd, max_epochs=1, callbacks=[CrashAt(5)])
    assert type(run.optimizers[0]).__name__ == "SGD" and messages == []
    with pytest.raises(OptimConfigError, match="the checkpoint's optimizer is 'adam'"):
        resumed(checkpoint, {**sgd, "resume": {"optimizer_state": "keep"}}, max_epochs=1)


def test_a_resume_of_the_resumed_run_continues_it_exactly(tmp_path):
    rewarm = config({"schedule": "rewarm", "rewarm_steps": 4})
    whole, whole_run, _ = resumed(first_run(tmp_path), rewarm)
    model = MixinModel(rewarm)
    saving = ModelCheckpoint(tmp_path, "{step}", every_n_epochs=1, save_on_train_epoch_end=True, save_top_k=-1)
    run = trainer(max_epochs=3, callbacks=[saving, CrashAt(16)], enable_checkpointing=True)
    with pytest.raises(Interrupted):
        run.fit(model, loader(), ckpt_path=tmp_path / "step=8.ckpt")
    saved = torch.load(tmp_path / "step=16.ckpt", weights_only=True)[RESUME_CHECKPOINT_KEY]
    assert saved == {
        "policy": {"optimizer_state": "keep", "schedule": "rewarm", "rewarm_steps": 4, "state_warmup_steps": 0},
        "schedules": [
            {"schedule": "rewarm", "resumed_at": 8, "state_warmup_steps": 0, "rewarm_steps": 4, "optimizer": None}
        ],
    }
    again, again_run, messages = resumed(tmp_path / "step=16.ckpt", rewarm, callbacks=[CrashAt(17)])
    # Not re-warmed at step 16: the schedule of the first resume, over its 24 steps, goes on.
    schedule = again_run.lr_scheduler_configs[0].scheduler.schedule
    assert schedule == whole_run.lr_scheduler_configs[0].scheduler.schedule
    assert schedule == Rewarm(schedule=Polynomial(warmup_steps=2, total_steps=24), start=8, rewarm_steps=4)
    assert step_lrs(model) == step_lrs(whole)[:8] and step_lrs(again) == [step_lrs(whole)[8]] == [[linear(16, 24)]]
    assert messages == []


def test_the_policy_line_is_printed_once_with_what_was_loaded_and_what_was_not(tmp_path, caplog):
    checkpoint = first_run(tmp_path, steps=4)
    with caplog.at_level(logging.INFO):
        policy = {"optimizer_state": "reset", "schedule": "rewarm", "rewarm_steps": 2}
        resumed(checkpoint, config(policy), max_epochs=1, callbacks=[CrashAt(5)])
    lines = [record.getMessage() for record in caplog.records if "optim_config.resume" in record.getMessage()]
    assert lines == [
        "Resuming at step 4 with optim_config.resume: optimizer_state=reset, schedule=rewarm (rewarm_steps=2), "
        "state_warmup_steps=0. Loaded: the weights, the loops' position, the schedule's step (4). Not loaded: the "
        "optimizer state (Adam as optim_config builds it: empty state, the config's options). Schedule: a warmup "
        "from lr 0 at step 4 to the schedule's lr at step 4, over 2 steps, then the schedule."
    ]


def test_rewarm_of_a_schedule_without_closed_form_is_refused_naming_the_key():
    plateau = {"name": "plateau", "monitor": "val/loss"}
    with pytest.raises(OptimConfigError, match=r"^optim_config.resume.schedule = 'rewarm' is not valid. Expected keep"):
        MixinModel({**config({"schedule": "rewarm", "rewarm_steps": 2}), "scheduler": plateau})


@pytest.mark.parametrize("decay_steps", [4, 6])
def test_a_cooldown_branched_from_a_stable_checkpoint_reaches_the_floor_in_exactly_d_steps(tmp_path, decay_steps):
    wsd = {"name": "wsd", "warmup_steps": 2, "total_steps": 100, "decay_ratio": 0.2, "decay_shape": "linear"}
    stable = {"optimizer": {"name": "sgd", "lr": 0.1}, "scheduler": {**wsd, "min_lr_ratio": 0.1}}
    checkpoint = first_run(tmp_path, 6, stable)
    branch = copy.deepcopy(stable)
    branch["scheduler"].update(decay_ratio=None, decay_start_step=6, total_steps=6 + decay_steps)
    model, branched, _ = resumed(checkpoint, branch, max_steps=6 + decay_steps)
    expected = [0.1 * (0.1 + 0.9 * (1 - j / decay_steps)) for j in range(decay_steps)]
    assert [lrs[0] for lrs in step_lrs(model)] == expected
    assert expected[0] == 0.1  # the lr the checkpoint had
    assert branched.global_step == 6 + decay_steps
    # The lr of step 6 + D, set by the run's last scheduler step: the floor, exactly.
    assert branched.lr_scheduler_configs[0].scheduler.schedule(6 + decay_steps) == 0.1
    assert branched.optimizers[0].param_groups[0]["lr"] == 0.1 * 0.1
