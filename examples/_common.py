"""Helpers the example scripts share: command line, figures, TensorBoard event files, quiet trainers.

Not an example itself; each ``NN_*.py`` script imports it from its own directory.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

DEFAULT_OUT = Path(tempfile.gettempdir()) / "lightning_optim_examples"
"""Where the scripts write when no ``--out`` is given."""


def parse_args(doc: str | None, argv: Sequence[str] | None, **extra: Any) -> argparse.Namespace:
    """``--out DIR`` (PNGs), ``--runs DIR`` (logs) and ``--quick`` (the reduced size the tests run), plus ``extra``.

    ``extra`` maps an option name to its default; its type is the default's type.
    """
    summary = (doc or "").strip().splitlines()[0] if doc else None
    parser = argparse.ArgumentParser(description=summary)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"folder for the PNGs (default {DEFAULT_OUT})")
    parser.add_argument(
        "--runs",
        type=Path,
        default=DEFAULT_OUT / "runs",
        help=f"folder for TensorBoard logs, Hydra runs and checkpoints (default {DEFAULT_OUT / 'runs'})",
    )
    parser.add_argument("--quick", action="store_true", help="a reduced run (seconds), as the tests use")
    for name, default in extra.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    args.runs.mkdir(parents=True, exist_ok=True)
    return args


def save(figure: Figure, out: Path, name: str) -> Path:
    """Write ``figure`` to ``out/name`` (a PNG) and return the path."""
    path = out / name
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def quiet() -> None:
    """Silence Lightning's banners and hints, so a script's own lines are what it prints."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    warnings.filterwarnings("ignore", message=".*(GPU|TPU|HPU) available.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")


QUIET_TRAINER: dict[str, Any] = {
    "accelerator": "cpu",
    "devices": 1,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}
"""Trainer arguments for a quiet single-process CPU run."""


QUIET_OVERRIDES = ["+trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false"]
"""The same for ``lightning-optim-train``."""


def run_app(module: str, *overrides: str) -> str:
    """Run a Hydra app (``python -m <module> <overrides>``) as a user would; return its stdout, raise on failure."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, "-m", module, *overrides], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(overrides)} exited {result.returncode}:\n{result.stderr[-4000:]}")
    return result.stdout


def _accumulators(logdir: Path) -> list[Any]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    guidance = {"scalars": 0, "histograms": 0, "tensors": 0}
    paths = sorted(Path(logdir).rglob("events.out.tfevents.*"))
    if not paths:
        raise FileNotFoundError(f"no TensorBoard event files under {logdir}")
    return [EventAccumulator(str(path), size_guidance=guidance).Reload() for path in paths]


def tb_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in the event files under ``logdir``: tag -> [(step, value), ...] sorted by step."""
    series: dict[str, dict[int, float]] = {}
    for events in _accumulators(logdir):
        for tag in events.Tags()["scalars"]:
            series.setdefault(tag, {}).update({event.step: event.value for event in events.Scalars(tag)})
    return {tag: sorted(values.items()) for tag, values in series.items()}


def tb_histograms(logdir: Path) -> dict[str, list[tuple[int, Any]]]:
    """Every histogram in the event files under ``logdir``: tag -> [(step, HistogramValue), ...] by step.

    A ``HistogramValue`` has ``min``, ``max``, ``num``, ``sum``, ``sum_squares``, ``bucket_limit`` and ``bucket``.
    """
    series: dict[str, dict[int, Any]] = {}
    for events in _accumulators(logdir):
        for tag in events.Tags()["histograms"]:
            series.setdefault(tag, {}).update({e.step: e.histogram_value for e in events.Histograms(tag)})
    return {tag: sorted(values.items()) for tag, values in series.items()}
