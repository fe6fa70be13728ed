"""Every logged number and the parameters of a 2-process ``ModelParallelStrategy`` run (FSDP2 or tensor parallel, CPU
and gloo) equal the one-process run on the same samples (:mod:`tests.sharded.runs`), and the norms cost one
``all_reduce`` per step."""

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

from tests.sharded.runs import CASES, STEPS, mesh_shape, run

TOLERANCE = 1e-5
ROOT = Path(__file__).parents[2]


def sharded(case: str, tmp_path: Path) -> list[dict[str, Any]]:
    """Each rank's outcome of ``python -m tests.sharded.runs case``."""
    out = tmp_path / case
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    subprocess.run(
        [sys.executable, "-m", "tests.sharded.runs", case, str(out)], cwd=tmp_path, env=env, check=True, timeout=600
    )
    return [json.loads(Path(f"{out}.rank{rank}.json").read_text()) for rank in range(math.prod(mesh_shape(case)))]


def relative(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b):
        return 0.0 if math.isnan(a) and math.isnan(b) else math.inf
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


@pytest.mark.parametrize("case", list(CASES))
def test_sharded_run_logs_what_one_process_logs(case: str, tmp_path: Path) -> None:
    ranks = sharded(case, tmp_path)
    reference = run(case)
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
    # Norm clipping: one all_reduce per optimizer step, which on logging steps carries every per-layer/per-group norm
    # too. Value clipping needs no norm: the monitor's norms before and after it, on logging steps only.
    expected_calls = [[logging, (2 if logging else 0) if by_value else 1] for logging, _ in ranks[0]["all_reduce"]]
    assert ranks[0]["all_reduce"] == expected_calls
