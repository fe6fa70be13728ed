"""Every logged number and the parameters of a ``ModelParallelStrategy`` run (FSDP2 or tensor parallel on 2 processes,
both on 4, CPU and gloo) equal the one-process run on the same samples (:mod:`tests.sharded.runs`), so do the adaptive
clipping's statistics and the spike guard's skips on every rank, and the norms cost one ``all_reduce`` per step."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.sharded.runs import CASES, LAUNCHES, STEPS, mesh_shape, run

TOLERANCE = 1e-5
ROOT = Path(__file__).parents[2]


def sharded(launch: tuple[str, ...], tmp_path: Path) -> dict[str, list[dict[str, Any]]]:
    """Per case, each rank's outcome of ``python -m tests.sharded.runs`` running the cases of ``launch``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "tests.sharded.runs", ",".join(launch), str(tmp_path)]
    subprocess.run(command, cwd=tmp_path, env=env, check=True, timeout=600)
    ranks = range(math.prod(mesh_shape(launch[0])))
    return {case: [json.loads((tmp_path / f"{case}.rank{rank}.json").read_text()) for rank in ranks] for case in launch}


def relative(a: float, b: float) -> float:
    if a == b:
        return 0.0
    if math.isnan(a) or math.isnan(b):
        return 0.0 if math.isnan(a) and math.isnan(b) else math.inf
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


@pytest.mark.parametrize("launch", LAUNCHES, ids="+".join)
def test_sharded_run_logs_what_one_process_logs(launch: tuple[str, ...], tmp_path: Path) -> None:
    for case, ranks in sharded(launch, tmp_path).items():
        check_case(case, ranks, run(case))


def check_case(case: str, ranks: list[dict[str, Any]], reference: dict[str, Any]) -> None:
    logged = ranks[0]["logged"]
    assert [step for step, _ in logged] == [step for step, _ in reference["logged"]] == [1, 3, 5]
    for (step, metrics), (_, expected) in zip(logged, reference["logged"], strict=True):
        assert sorted(metrics) == sorted(expected)
        worst = {key: relative(metrics[key], expected[key]) for key in expected}
        assert max(worst.values()) < TOLERANCE, (step, {k: v for k, v in worst.items() if v >= TOLERANCE})
    for name, values in reference["params"].items():
        expected, actual = torch.tensor(values), torch.tensor(ranks[0]["params"][name])
        torch.testing.assert_close(actual, expected, rtol=TOLERANCE, atol=TOLERANCE * float(expected.abs().max()))
    # Every rank clipped at the same global norm and threshold (and so skipped the same steps), that of one process.
    assert all(rank["clipping"] == ranks[0]["clipping"] for rank in ranks)
    by_value = CASES[case].get("algorithm") == "value"
    assert len(reference["clipping"]) == (0 if by_value else STEPS)
    for measured, expected in zip(ranks[0]["clipping"], reference["clipping"], strict=True):
        assert max(map(relative, measured, expected)) < TOLERANCE
    # ZClip's and the spike guard's statistics, and the guard's skips: alike on every rank (NaN before they start),
    # and those of one process; the guard skips the spike's step and no other.
    assert all(json.dumps(rank["statistics"]) == json.dumps(ranks[0]["statistics"]) for rank in ranks)
    for measured, expected in zip(ranks[0]["statistics"], reference["statistics"], strict=True):
        assert max(map(relative, measured, expected), default=0.0) < TOLERANCE
    if (spike_at := CASES[case].get("spike_at")) is not None:
        assert [step[-1] for step in reference["statistics"]] == [0] * spike_at + [1] * (STEPS - spike_at)
    # Norm clipping: one all_reduce per optimizer step, which on logging steps carries every per-layer/per-group norm
    # too. Value clipping needs no norm: the monitor's norms before and after it, on logging steps only. UpdateMonitor
    # adds one on logging steps (every update and state norm: they exist only after the step), a guard on the loss
    # one per step (the mean loss over the ranks, before clipping).
    guard = CASES[case].get("spike_guard") or {}
    expected_calls = [
        [logging, ((2 if logging else 0) if by_value else 1) + logging + (guard.get("on") == "loss")]
        for logging, _ in ranks[0]["all_reduce"]
    ]
    assert ranks[0]["all_reduce"] == expected_calls
