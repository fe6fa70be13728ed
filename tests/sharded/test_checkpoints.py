"""Checkpoints of a 2-process FSDP2 run under ``SafeModelParallelStrategy``, in both forms (a distributed checkpoint
directory, one file): resuming continues the lr sequence of an uninterrupted run, and a
damaged copy is refused before any batch runs, naming the damaged file (:func:`tests.sharded.runs.run_resumed`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sharded.runs import CODE_RAN, CORRUPTIONS, RESUME_CASE, STEPS, run

TOLERANCE = 1e-5
ROOT = Path(__file__).parents[2]
DAMAGED = {
    "truncated_shard": "truncated_shard/__1_0.distcp has 35917 bytes, the save wrote 71835",
    "truncated_shard_unlisted": "truncated_shard_unlisted/__1_0.distcp is truncated or missing (35917 bytes;",
    "flipped_byte_in_shard": "flipped_byte_in_shard/__1_0.distcp is corrupted: its CRC-32 differs",
    "no_metadata": "no_metadata/.metadata does not exist",
    "code_in_metadata": "code_in_metadata/.metadata was not loaded: it names builtins.exec",
    "truncated_meta_pt": "truncated_meta_pt/meta.pt has 1930 bytes, the save wrote 3860",
    "truncated": "truncated.ckpt (",
    "flipped_byte": "flipped_byte.ckpt is",
}
"""Per damage, what the refusal says (the file it names, and how it is damaged)."""


def flat(steps: list[list[float]]) -> list[float]:
    return [value for step in steps for value in step]


@pytest.mark.parametrize("form", list(CORRUPTIONS))
def test_resume_from_each_form_continues_the_run_and_refuses_damage(form: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    subprocess.run(
        [sys.executable, "-m", "tests.sharded.runs", "resume", form, str(tmp_path)],
        cwd=tmp_path,
        env=env,
        check=True,
        timeout=600,
    )
    ranks = [json.loads((tmp_path / f"{form}.rank{rank}.json").read_text()) for rank in range(2)]
    reference = run(RESUME_CASE)
    half = STEPS // 2
    for outcome in ranks:
        # At each resumed step: the lr of every group, and AutoClip's total norm and threshold (its history before
        # the stop holds a skipped, non-finite step) are the uninterrupted one-process run's.
        assert flat(outcome["lrs"]) == pytest.approx(flat(reference["lrs"][half:]), rel=TOLERANCE, abs=1e-12)
        assert flat(outcome["clipping"]) == pytest.approx(flat(reference["clipping"][half:]), rel=TOLERANCE)
        for how, refusal in outcome["refusals"].items():
            assert refusal["batches"] == 0, how
            assert f"Checkpoint {tmp_path}/{DAMAGED[how]}" in refusal["error"], how
    assert sorted(ranks[0]["refusals"]) == sorted(CORRUPTIONS[form])
    assert not (tmp_path / CODE_RAN).exists()
