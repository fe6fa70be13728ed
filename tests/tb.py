"""Read TensorBoard event files back with TensorBoard's own reader, as the TensorBoard UI does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2

LAYOUT_TAG = "custom_scalars__config__"
"""The tag under which ``SummaryWriter.add_custom_scalars`` stores the layout."""


def run_dir(logdir: str | Path) -> Path:
    """The one run under ``logdir`` (itself included): the directory holding event files that every other such
    directory is inside (``TensorBoardDashboard``'s series runs sit in the logger's own); fails if there are several."""
    dirs = sorted({path.parent for path in Path(logdir).rglob("events.out.tfevents.*")})
    top = [path for path in dirs if not any(other in path.parents for other in dirs)]
    assert len(top) == 1, f"expected event files in exactly one run under {logdir}, found {dirs}"
    return top[0]


def accumulator(logdir: str | Path) -> EventAccumulator:
    """All events (no sampling) of the run in exactly ``logdir``, or of the one run under it (:func:`run_dir`)."""
    guidance = {"scalars": 0, "tensors": 0, "histograms": 0}
    return EventAccumulator(str(run_dir(logdir)), size_guidance=guidance).Reload()


def scalars(logdir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of the run under ``logdir``: tag -> [(step, value), ...] in the order written."""
    events = accumulator(logdir)
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def nested_runs(logdir: str | Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """The scalars of each run inside the run under ``logdir``, by its path relative to that run."""
    top = run_dir(logdir)
    dirs = sorted({path.parent for path in top.rglob("events.out.tfevents.*")} - {top})
    return {path.relative_to(top).as_posix(): scalars_of(path) for path in dirs}


def scalars_of(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """The scalar series of the event files in exactly ``directory``."""
    guidance = {"scalars": 0, "tensors": 0, "histograms": 0}
    events = EventAccumulator(str(directory), size_guidance=guidance).Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def histogram_steps(logdir: str | Path) -> dict[str, list[int]]:
    """Every histogram tag of the run under ``logdir`` -> the steps it was written at."""
    events = accumulator(logdir)
    return {tag: [event.step for event in events.Histograms(tag)] for tag in events.Tags()["histograms"]}


def layout(logdir: str | Path) -> layout_pb2.Layout:
    """The custom-scalars layout of the run under ``logdir`` (the first one written)."""
    events = accumulator(logdir)
    assert LAYOUT_TAG in events.Tags()["tensors"], f"no custom-scalars layout in {run_dir(logdir)}"
    proto = layout_pb2.Layout()
    proto.ParseFromString(events.Tensors(LAYOUT_TAG)[0].tensor_proto.string_val[0])
    return proto


def layout_dict(proto: layout_pb2.Layout) -> dict[str, dict[str, list[str]]]:
    """A multiline-only layout as {category: {chart title: [tag regexes]}}."""
    return {
        category.title: {chart.title: list(chart.multiline.tag) for chart in category.chart}
        for category in proto.category
    }


def float32(value: float) -> float:
    """``value`` as TensorBoard stores a scalar (float32), for exact comparisons."""
    return float(np.float32(value))
