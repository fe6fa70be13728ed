"""Every logged number and the parameters of a ``ModelParallelStrategy`` run (FSDP2 or tensor parallel on 2 processes,
both on 4, CPU and gloo) or a ``DDPStrategy`` run (2 processes) equal the one-process run on the same samples
(:mod:`tests.sharded.runs`), so do the adaptive clipping's statistics, the BatchNorm running statistics and the steps
skipped on every rank, and the norms cost one ``all_reduce`` per step (none under DDP)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.sharded.runs import CASES, LAUNCHES, STEPS, differences, expected_all_reduce, mesh_shape, run

TOLERANCE = 1e-5
ROOT = Path(__file__).parents[2]


def sharded(launch: tuple[str, ...], tmp_path: Path) -> dict[str, list[dict[str, Any]]]:
    """Per case, each rank's outcome of ``python -m tests.sharded.runs`` running the cases of ``launch``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "tests.sharded.runs", ",".join(launch), str(tmp_path)]
    subprocess.run(command, cwd=tmp_path, env=env, check=True, timeout=600)
    ranks = range(math.prod(mesh_shape(launch[0])))
    return {case: [json.loads((tmp_path / f"{case}.rank{rank}.json").read_text()) for rank in ranks] for case in launch}


@pytest.mark.parametrize("launch", LAUNCHES, ids="+".join)
def test_sharded_run_logs_what_one_process_logs(launch: tuple[str, ...], tmp_path: Path) -> None:
    for case, ranks in sharded(launch, tmp_path).items():
        check_case(case, ranks, run(case))


def check_case(case: str, ranks: list[dict[str, Any]], reference: dict[str, Any]) -> None:
    logged = ranks[0]["logged"]
    assert [step for step, _ in logged] == [step for step, _ in reference["logged"]] == [1, 3, 5]
    for (_, metrics), (_, expected) in zip(logged, reference["logged"], strict=True):
        assert sorted(metrics) == sorted(expected)
    # Every logged number, the parameters, the clipping's norms and thresholds, ZClip's and the spike guard's
    # statistics, the BatchNorm buffers each step started from: those of one process.
    worst = differences(ranks, reference)
    assert max(worst.values()) < TOLERANCE, worst
    # Every rank clipped at the same global norm and threshold, and its adaptive statistics and skips are alike (NaN
    # before they start), so every rank skipped the same steps; the guard skips the spike's step and no other.
    for kind in ("clipping", "statistics", "taken", "params"):
        assert all(json.dumps(rank[kind]) == json.dumps(ranks[0][kind]) for rank in ranks), kind
    by_norm = CASES[case]["clip"] is not None and CASES[case].get("algorithm") != "value"
    assert len(reference["clipping"]) == (STEPS if by_norm or CASES[case]["clipping"] is not None else 0)
    if (spike_at := CASES[case].get("spike_at")) is not None:
        assert [step[-1] for step in reference["statistics"]] == [0] * spike_at + [1] * (STEPS - spike_at)
    if (clipped_at := CASES[case].get("clipped_spike_at")) is not None:
        # ZClip let the steps before the spike through and cut the spike's norm down to its threshold.
        norms, thresholds = zip(*reference["clipping"], strict=True)
        assert norms[clipped_at] > 2 * thresholds[clipped_at], reference["clipping"]
        before = zip(norms[:clipped_at], thresholds[:clipped_at], strict=True)
        assert all(norm <= threshold for norm, threshold in before)
    # Every parameter took a step at every step but the NaN one and the spike, on every rank as in one process.
    skipped = {CASES[case][key] for key in ("nan_at", "spike_at") if key in CASES[case]}
    taken = [sum(step not in skipped for step in range(last + 1)) for last in range(STEPS)]
    assert ranks[0]["taken"] == reference["taken"] == [[count] * len(reference["taken"][0]) for count in taken]
    # The step after a skipped one starts from the BatchNorm buffers (batch count too) the skipped one started from.
    for step in sorted(skipped):
        assert all(rank["running"][step + 1] == rank["running"][step] for rank in [*ranks, reference]), step
    if CASES[case]["parallel"] == "ddp":
        # DDP broadcasts rank 0's BatchNorm buffers before each forward (FSDP2 leaves each rank its own): every rank's
        # forward starts from the statistics of one process.
        assert all(rank["running"] == ranks[0]["running"] for rank in ranks)
    assert ranks[0]["all_reduce"] == expected_all_reduce(case, [logging for logging, _ in ranks[0]["all_reduce"]])
