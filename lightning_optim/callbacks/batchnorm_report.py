"""The BatchNorm health report at the end of fit: one row per layer from
:class:`~lightning_optim.callbacks.batchnorm_monitor.BatchNormMonitor`'s last measurement, printed as a table and
written to ``batchnorm_report.json``.

Examples:
    >>> import torch
    >>> limits = HealthLimits(1e-5, drift_threshold=0.5, var_ratio_range=(0.5, 2.0), divergence_threshold=0.05,
    ...                       min_batch_size=8)
    >>> row = report_row("bn", torch.nn.BatchNorm1d(4), {"mean_drift": 0.9, "dead_fraction": 0.25}, True, 32, set(),
    ...                  limits)
    >>> row["dead_channels"], row["attention"]
    (1, ['dead channels', 'mean drift > 0.5'])
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info
from rich.console import Console
from rich.table import Table
from torch.nn.parameter import is_lazy

from lightning_optim.internals import BatchNormLayer

__all__ = ["REPORT_FILE", "HealthLimits", "attention", "health_table", "report_health", "report_row"]

REPORT_FILE = "batchnorm_report.json"
"""The report's file in ``trainer.log_dir``."""


@dataclass(frozen=True)
class HealthLimits:
    """The limits beyond which a layer needs attention (the monitor's arguments of the same names).

    Attributes:
        dead_threshold: batch variance below which a channel counts as dead.
        drift_threshold: ``mean_drift`` above which a layer is marked.
        var_ratio_range: ``(low, high)``; a ``var_ratio`` outside it marks a layer.
        divergence_threshold: ``rank_divergence`` above which a layer is marked.
        min_batch_size: per-device samples below which a training batch is too small for BatchNorm.

    Examples:
        >>> HealthLimits(1e-5, 0.5, (0.5, 2.0), 0.05, 8).config()["var_ratio_range"]
        [0.5, 2.0]
    """

    dead_threshold: float
    drift_threshold: float
    var_ratio_range: tuple[float, float]
    divergence_threshold: float
    min_batch_size: int

    def config(self) -> dict[str, Any]:
        """The limits as JSON values, as the report's ``thresholds`` holds them."""
        return {
            "dead_threshold": self.dead_threshold,
            "drift_threshold": self.drift_threshold,
            "var_ratio_range": list(self.var_ratio_range),
            "divergence_threshold": self.divergence_threshold,
            "min_batch_size": self.min_batch_size,
        }


def report_row(
    name: str,
    layer: BatchNormLayer,
    last: Mapping[str, float],
    training: bool | None,
    batch_size: int | None,
    nonfinite: Set[str],
    limits: HealthLimits,
) -> dict[str, Any]:
    """One layer's row: its ``last`` measurement, mode (``training``; None: never seen in a training forward),
    divergence, the ``batch_size`` it saw, its ``nonfinite`` keys, and the reasons it needs attention."""
    channels = layer.num_features if not is_lazy(layer.weight) else None
    dead = last.get("dead_fraction")
    row = {
        "layer": name,
        "type": type(layer).__name__,
        "channels": channels,
        "mode": None if training is None else ("train" if training else "eval"),
        "mean_drift": last.get("mean_drift"),
        "var_ratio": last.get("var_ratio"),
        "dead_fraction": dead,
        "dead_channels": None if dead is None or channels is None else round(dead * channels),
        "rank_divergence": last.get("rank_divergence"),
        "batch_size": batch_size,
        "nonfinite": sorted(nonfinite),
    }
    row["attention"] = attention(row, layer, limits)
    return row


def attention(row: Mapping[str, Any], layer: BatchNormLayer, limits: HealthLimits) -> list[str]:
    """Why the layer of ``row`` needs attention; empty when it needs none."""
    reasons = []
    if row["mode"] == "eval" and layer.track_running_stats:
        reasons.append("eval mode while training")
    if row["dead_fraction"]:
        reasons.append("dead channels")
    if row["mean_drift"] is not None and row["mean_drift"] > limits.drift_threshold:
        reasons.append(f"mean drift > {limits.drift_threshold:g}")
    low, high = limits.var_ratio_range
    if row["var_ratio"] is not None and not low <= row["var_ratio"] <= high:
        reasons.append(f"var ratio outside [{low:g}, {high:g}]")
    if row["rank_divergence"] is not None and row["rank_divergence"] > limits.divergence_threshold:
        reasons.append("ranks diverge: set sync_batchnorm=True")
    if row["batch_size"] is not None and row["batch_size"] < limits.min_batch_size:
        reasons.append(f"batch < {limits.min_batch_size} per device")
    if row["nonfinite"]:
        reasons.append("NaN/Inf statistics")
    return reasons


def health_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    """The rows as the table printed at the end of fit, a row needing attention marked ``!`` and in yellow.

    Examples:
        >>> health_table([]).title
        'BatchNorm health (last logging step; ! = needs attention)'
    """

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.3g}"

    table = Table(title="BatchNorm health (last logging step; ! = needs attention)")
    table.add_column("layer", no_wrap=True)
    table.add_column("type")
    table.add_column("mode")
    for column in ("mean drift", "var ratio", "dead", "rank div."):
        table.add_column(column, justify="right")
    table.add_column("attention")
    for row in rows:
        dead = "-" if row["dead_channels"] is None else f"{row['dead_channels']}/{row['channels']}"
        reasons = row["attention"]
        table.add_row(
            f"! {row['layer']}" if reasons else row["layer"],
            row["type"],
            row["mode"] or "-",
            number(row["mean_drift"]),
            number(row["var_ratio"]),
            dead,
            number(row["rank_divergence"]),
            "; ".join(reasons) or "ok",
            style="yellow" if reasons else None,
        )
    return table


def report_health(
    rows: Sequence[Mapping[str, Any]],
    log_dir: str | None,
    step: int,
    limits: HealthLimits,
    warnings: Sequence[str],
) -> None:
    """Print the table (through Lightning's logger) and, with a ``log_dir``, write the rows, the logging ``step`` they
    come from, the limits and the ``warnings`` given to ``<log_dir>/batchnorm_report.json``."""
    # Through Lightning's logger, not print: the Hydra app's train.log then holds the table the console showed.
    rendered = io.StringIO()
    Console(file=rendered, width=shutil.get_terminal_size().columns).print(health_table(rows))
    rank_zero_info(rendered.getvalue().rstrip())
    if log_dir is None:
        return
    path = Path(log_dir, REPORT_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {"step": step, "thresholds": limits.config(), "layers": list(rows), "warnings": list(warnings)}
    path.write_text(json.dumps(report, indent=2) + "\n")
