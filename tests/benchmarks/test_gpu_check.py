"""``benchmarks/gpu_check.py --device cpu --quick`` runs every check it can on a CPU and reports all of them, so the
command a GPU session runs in its one device call cannot rot unnoticed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch

from tests.models import RecordingModel, loader, trainer

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import gpu_check  # noqa: E402  (a script directory, not a package)
import overhead  # noqa: E402
from gpu_check_report import HEADERS, MONITOR_ROWS  # noqa: E402

CHECKS = ("host_syncs", "amp", "clip_step", "sharded", "overhead", "sync_batchnorm", "fsdp")
CUDA_ONLY = ("sharded", "sync_batchnorm", "fsdp")
AMP_CASES = (
    "16-mixed adamw",
    "16-mixed sgd",
    "bf16-mixed adamw",
    "bf16-mixed sgd",
    "16-mixed adamw, overflowing scale",
    "16-mixed sgd, overflowing scale (fused-SGD first-step skip)",
)
UNAFFECTED_BY_FUSED_SGD_SKIP = (
    "16-mixed adamw",
    "bf16-mixed adamw",
    "bf16-mixed sgd",
    "16-mixed adamw, overflowing scale",
)
"""Cases where no first step of torch's fused SGD is skipped: the three paths must agree."""


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("gpu_check")
    environment = {**os.environ, "PYTHONPATH": str(BENCHMARKS.parent), "CUDA_VISIBLE_DEVICES": ""}
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_check.py"), "--device", "cpu", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


@pytest.mark.slow
def test_every_check_reports_a_status(report):
    result, _ = report
    checks = result["checks"]
    assert list(checks) == list(CHECKS)
    for name in CUDA_ONLY:
        assert checks[name]["status"] == "skipped" and checks[name]["reason"].startswith("needs CUDA: "), name
    for name in set(CHECKS) - set(CUDA_ONLY):
        assert checks[name]["status"] == "ok", checks[name].get("traceback")
        assert checks[name]["verdicts"] and all(isinstance(v, bool) for v in checks[name]["verdicts"].values())
    assert result["environment"]["device"] == "cpu"


@pytest.mark.slow
def test_the_checks_measure_what_they_say(report):
    checks = report[0]["checks"]
    syncs = checks["host_syncs"]["per_config"]
    assert set(syncs) == set(MONITOR_ROWS)
    for config in syncs.values():
        assert config["logging"]["steps"] > 0 and config["non_logging"]["steps"] > 0
    # Lightning converts the progress-bar loss every step; the monitors add nothing between logging steps.
    assert syncs["none"]["non_logging"]["items_per_step"] == 1
    assert syncs["all"]["non_logging"]["items_per_step_over_none"] == 0
    cases = checks["amp"]["cases"]
    assert list(cases) == list(AMP_CASES)
    assert all(all(case["clip_folded"]) and not any(case["clip_unfolded"]) for case in cases.values())
    for name in UNAFFECTED_BY_FUSED_SGD_SKIP:
        assert all(cases[name]["within_tolerance"].values()), (name, cases[name])
    assert [r["size"] for r in checks["clip_step"]["results"]] == ["1M"]
    runs = checks["overhead"]["runs"]
    assert list(runs) == ["resnet_tiny@50", "resnet_tiny@1"]
    assert all(
        set(run["variants"]) == set(overhead.VARIANTS)
        for run in runs.values()
    )


@pytest.mark.slow
def test_the_markdown_has_every_table_and_row(report):
    _, markdown = report
    lines = markdown.splitlines()
    for name, headers in HEADERS.items():
        assert "| " + " | ".join(headers) + " |" in lines, name
    rows = {line.split(" | ")[0].removeprefix("| ") for line in lines if line.startswith("| ")}
    assert set(CHECKS) <= rows
    assert {"none (mixin, no monitor)", "GradNormMonitor", "LRMonitor", "BatchNormMonitor"} <= rows
    assert "all (+ TensorBoardDashboard)" in rows
    assert set(AMP_CASES) <= rows
    assert "1M (1.0M, 60)" in rows and "resnet_tiny" in rows
    assert "sync_batchnorm" in rows and "fsdp" in rows
    assert "| all | skipped: needs CUDA: NCCL on 2 or more GPUs (the CPU form, gloo, is tests/sharded/) |" in markdown


class SyncingCallback(L.Callback):
    """Emits what ``set_sync_debug_mode("warn")`` emits, ``item()``s a tensor, on every logging step."""

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step % 2 == 0:
            warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)
            torch.ones(1).item()


def test_the_sync_counter_counts_per_step_and_names_the_line():
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        counter = gpu_check.SyncCounter(warmup=1, measured=4, records=records)
        trainer(max_steps=6, callbacks=[counter, SyncingCallback()]).fit(RecordingModel(), loader())
    # Step k ends with global_step k + 1 in on_train_batch_end: steps 1 and 3 of the measured 1..4 sync.
    assert [(step["sync_warnings"], step["items"]) for step in counter.steps] == [(1, 1), (0, 0), (1, 1), (0, 0)]
    assert counter.callers == {f"test_gpu_check.py:{SyncingCallback.on_train_batch_end.__code__.co_firstlineno + 2}": 2}
