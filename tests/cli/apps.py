"""Run the command-line apps in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TINY = ["debug=tiny"]
"""Overrides that make a run take about a second: the ``debug=tiny`` group (``lightning_optim/conf/debug/``)."""

REPO = Path(__file__).resolve().parents[2]


def _environment() -> dict[str, str]:
    """The test's environment with the repository on ``PYTHONPATH``, so test-only callbacks (``tests.cli.*``) import."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def _run(module: str, overrides: tuple[str, ...], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_environment(),
    )


def run_app(module: str, *overrides: str, cwd: Path) -> str:
    """Run ``python -m <module> <overrides>`` and return its stdout; fail the test with stderr if it fails."""
    result = _run(module, overrides, cwd)
    if result.returncode != 0:
        pytest.fail(f"{module} {' '.join(overrides)} exited {result.returncode}:\n{result.stderr[-4000:]}")
    return result.stdout


def run_app_expecting_failure(
    module: str, *overrides: str, cwd: Path, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m <module> <overrides>``; fail the test if it succeeds or runs past ``timeout`` seconds, else
    return the finished process."""
    result = _run(module, overrides, cwd, timeout)
    if result.returncode == 0:
        pytest.fail(f"{module} {' '.join(overrides)} succeeded; expected it to fail:\n{result.stdout[-4000:]}")
    return result
