"""Rollback after a loss spike in ``lightning-optim-train``: the checkpoint resumed from, the batches skipped, the
data order after them, and the exit status once ``max_times`` is spent."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data.distributed import DistributedSampler

from lightning_optim.cli.rollback import ROLLBACK_EXHAUSTED_EXIT, BatchStream, resolve_rollback
from tests.cli.apps import TINY, run_app, run_app_expecting_failure
from tests.tb import float32, layout, layout_dict, nested_runs, scalars

BATCHES_PER_EPOCH = 32  # 512 quadratic samples in batches of 16
SPIKE_SAMPLE = 407  # the first sample of global batch 20: randperm(512, seed 42)[320]
SPIKY = (
    *TINY,
    "data=quadratic",
    "model=quadratic_mlp",
    "model._target_=tests.cli.spiky.SpikyQuadratic",
    "data.batch_size=16",
    "trainer.limit_train_batches=null",
    "metric=val/loss",
    "hydra.run.dir=run",
)
ROLLBACK = "back_steps: 4, skip_batches: 6, every_n_steps: 2, warmup_steps: 5, alpha: 0.9"


def global_batch(samples: list[int]) -> int:
    """The global index of a batch of the seeded stream: data epoch ``k`` is ``randperm(512)`` seeded ``42 + k``."""
    for epoch in range(2):
        order = torch.randperm(512, generator=torch.Generator().manual_seed(42 + epoch)).tolist()
        for offset in range(BATCHES_PER_EPOCH):
            if order[offset * 16 : (offset + 1) * 16] == samples:
                return epoch * BATCHES_PER_EPOCH + offset
    raise AssertionError(f"batch {samples} is not in the first two data epochs")


def trained(cwd: Path, rank: int = 0) -> list[dict]:
    """What ``rank`` trained on, a record per batch in order: ``step``, ``samples``, ``loss`` (as logged)."""
    return [json.loads(line) for line in (cwd / f"seen.rank{rank}.jsonl").read_text().splitlines()]


def seen(cwd: Path) -> list[int]:
    return [global_batch(batch["samples"]) for batch in trained(cwd)]


@pytest.fixture(scope="module")
def spiked_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One run whose 21st step spikes, rolled back once with lr_factor 0.5: its working directory and stdout."""
    cwd = tmp_path_factory.mktemp("spiked")
    out = run_app(
        "lightning_optim.cli.train",
        *SPIKY,
        f"+model.spike_sample={SPIKE_SAMPLE}",
        f"rollback={{{ROLLBACK}, lr_factor: 0.5}}",
        cwd=cwd,
    )
    return cwd, out


def test_a_spike_rolls_back_to_the_checkpoint_before_it_skips_the_next_batches_and_finishes(spiked_run):
    tmp_path, out = spiked_run
    assert "val/loss = " in out
    run = tmp_path / "run"
    (record,) = json.loads((run / "rollbacks.json").read_text())
    # The spike is the 21st step (global batch 20); the newest checkpoint 4 steps before it is step 16.
    assert record["spike_step"] == 21 and record["z"] > 8
    assert Path(record["checkpoint"]).name == "step=16.ckpt" and record["checkpoint_step"] == 16
    assert record["skipped_batches"] == [16, 17, 18, 19, 20, 21]
    assert record["lr_scale"] == 0.5
    # 21 steps, then from step 16 the stream less the six skipped batches: 16 more steps, into data epoch 1.
    assert seen(tmp_path) == [*range(21), *range(22, 38)]
    # The spiking step's loss (x 1e4) and the loss's EMA mean (alpha 0.9, started by the first 5 steps) before it.
    losses = [batch["loss"] for batch in trained(tmp_path)]
    assert record["loss"] == float(np.float32(losses[20]) * np.float32(1e4))
    mean = sum(losses[:5]) / 5
    for loss in losses[5:20]:
        mean = 0.9 * mean + (1 - 0.9) * loss
    assert record["loss_mean"] == pytest.approx(mean, rel=1e-12)
    log = (run / "train.log").read_text()
    assert "Rollback 1/3: loss spike at step 21" in log
    assert "skipping 6 batches (global batch indices 16..21)" in log
    before = torch.load(run / "checkpoints/rollback/step=16.ckpt", weights_only=True)["lr_schedulers"][0]
    last = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    assert last["global_step"] == 32
    assert last["lr_schedulers"][0]["base_lrs"] == [lr * 0.5 for lr in before["base_lrs"]]


def test_tensorboard_shows_each_step_once_with_the_rerun_values_and_the_rollback_on_the_loss_chart(spiked_run):
    tmp_path, _ = spiked_run
    run = tmp_path / "run"
    (record,) = json.loads((run / "rollbacks.json").read_text())
    logged = scalars(run / "tensorboard")
    # The re-run's SummaryWriter(purge_step=16) hides the abandoned steps 16..20: steps 0..31 once each, and each
    # step's train/loss is the last one trained at that step (the first run's before 16, the re-run's from 16 on).
    last = {batch["step"]: batch["loss"] for batch in trained(tmp_path)}
    assert logged["train/loss"] == [(step, float32(last[step])) for step in range(32)]
    # (Lightning logs `epoch` with each validation too: at step 31 after the epoch, and at 32 for the final one.)
    assert [step for step, _ in logged["epoch"]] == [*range(32), 31, 32]
    training = {tag: points for tag, points in logged.items() if not tag.startswith(("rollback/", "val/", "epoch"))}
    assert {tag: [step for step, _ in points] for tag, points in training.items()} == {
        tag: list(range(32)) for tag in training
    }
    for run_name, series in nested_runs(run / "tensorboard").items():  # the dashboard's clipping series
        assert {tag: [step for step, _ in points] for tag, points in series.items()} == {
            tag: list(range(32)) for tag in series
        }, run_name
    # The markers: the spiking step's loss where its loss was logged (step 20), the loss level at the resume.
    assert logged["rollback/spike"] == [(20, float32(record["loss"]))]
    assert logged["rollback/resume"] == [(16, float32(record["loss_mean"]))]
    assert layout_dict(layout(run / "tensorboard"))["Rollback"] == {
        "Training loss": ["train/loss$", "rollback/spike$", "rollback/resume$"]
    }


def test_a_spike_after_max_times_rollbacks_stops_with_exit_status_3(tmp_path):
    result = run_app_expecting_failure(
        "lightning_optim.cli.train",
        *SPIKY,
        "+model.spike_step=20",
        f"rollback={{{ROLLBACK}, max_times: 2}}",
        cwd=tmp_path,
    )
    assert result.returncode == ROLLBACK_EXHAUSTED_EXIT == 3
    records = json.loads((tmp_path / "run/rollbacks.json").read_text())
    assert [(r["spike_step"], r["checkpoint_step"], r["skipped_batches"]) for r in records] == [
        (21, 16, [16, 17, 18, 19, 20, 21]),
        (21, 16, [22, 23, 24, 25, 26, 27]),
    ]
    assert "after rollback.max_times = 2 rollbacks: training stops (exit status 3)" in result.stdout
    assert seen(tmp_path) == [*range(21), *range(22, 27), *range(28, 33)]


@pytest.mark.parametrize(("num_samples", "drop_last"), [(512, False), (37, False), (37, True)])
def test_each_rank_serves_the_batches_a_distributed_sampler_gives_it(num_samples, drop_last):
    """Global batch ``i`` is batch ``i`` of every rank, as DistributedSampler (padding the epoch with its start) and a
    DataLoader over it cut them; data epoch ``k`` is seeded ``seed + k`` as ``set_epoch(k)`` seeds it."""
    for rank in range(3):
        stream = BatchStream(num_samples, 4, drop_last, shuffle=True, seed=42, num_replicas=3, rank=rank)
        for epoch in range(2):
            sampler = DistributedSampler(range(num_samples), num_replicas=3, rank=rank, shuffle=True, seed=42)
            sampler.set_epoch(epoch)
            loader = torch.utils.data.DataLoader(
                list(range(num_samples)), batch_size=4, sampler=sampler, drop_last=drop_last
            )
            expected = [batch.tolist() for batch in loader]
            assert len(stream) == len(expected)
            assert [stream.batch(epoch * len(stream) + i) for i in range(len(stream))] == expected


def test_a_spike_on_one_ddp_rank_rolls_both_back_to_one_checkpoint_skipping_the_same_global_batches(tmp_path):
    """Two gloo ranks, 16 samples each per batch: global batch ``i`` is 32 samples, a step 16 per epoch. Sample 492
    is in rank 1's half of global batch 10 only: the loss averaged over the ranks spikes on both."""
    out = run_app(
        "lightning_optim.cli.train",
        *SPIKY,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "+model.spike_sample=492",
        f"rollback={{{ROLLBACK}}}",
        cwd=tmp_path,
    )
    assert "val/loss = " in out
    run = tmp_path / "run"
    (record,) = json.loads((run / "rollbacks.json").read_text())
    assert record["spike_step"] == 11
    assert Path(record["checkpoint"]).name == "step=6.ckpt" and record["checkpoint_step"] == 6
    assert record["skipped_batches"] == [6, 7, 8, 9, 10, 11]
    for rank in (0, 1):
        batches = trained(tmp_path, rank)
        # Both stop after step 11 and go on from step 6 to the run's end, 16 steps.
        assert [batch["step"] for batch in batches] == [*range(11), *range(6, 16)]
        # Each rank's own share of global batches 0..10, then of 12..21 (6..11 skipped; 16.. in data epoch 1).
        shares = [BatchStream(512, 16, False, True, 42, num_replicas=2, rank=rank).batch(g) for g in range(22)]
        assert [batch["samples"] for batch in batches] == [shares[g] for g in [*range(11), *range(12, 22)]]
    assert (492 in trained(tmp_path, 1)[10]["samples"]) and all(492 not in b["samples"] for b in trained(tmp_path, 0))
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 16


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"z_threshold": 0}, "rollback.z_threshold = 0 is not valid. Expected a number > 0, e.g. 8.0."),
        ({"on": "grad_norm"}, "rollback.on = 'grad_norm' is not valid. Expected 'loss'"),
        ({"max_times": 1.5}, "rollback.max_times = 1.5 is not valid. Expected an integer >= 1."),
        ({"every_n_steps": True}, "rollback.every_n_steps = True is not valid. Expected an integer >= 1, or null."),
        ({"skip_batch": 2}, "rollback.skip_batch is not a key of rollback. Did you mean 'skip_batches'?"),
    ],
)
def test_a_bad_rollback_section_is_refused_naming_the_key_the_value_and_what_works(section, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        resolve_rollback(section)
