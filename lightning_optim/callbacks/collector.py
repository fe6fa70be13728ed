"""``MetricCollector``: every monitor's metrics of one training step, made Python numbers with one host sync and
written to each logger at once.

Each monitor (:class:`~lightning_optim.callbacks.GradNormMonitor`, :class:`~lightning_optim.callbacks.LRMonitor`,
:class:`~lightning_optim.callbacks.BatchNormMonitor`) hands its values of a logging step, device tensors or Python
numbers, to the collector of its Trainer instead of converting them itself (``float(tensor)`` per metric, each a
device-to-host copy the host waits for). At the ``on_train_batch_end`` of the last of them in the Trainer's callbacks
(``on_train_batch_end`` is the last hook they write at), the collector stacks every tensor of the step into one and
converts it with one ``tolist()``, and writes all the step's keys in one call per logger
(:func:`~lightning_optim.callbacks.scalar_writer.write_scalars`). A monitor that computes several values in one
tensor hands it over as it is, with their keys (``stacked``): no 0-dim tensor per key to make and stack again.

Examples:
    >>> import lightning as L
    >>> import torch
    >>> trainer = L.Trainer(logger=False)
    >>> collector = MetricCollector.of(trainer)
    >>> collector.add(3, {"a": torch.tensor(0.5), "b": 2.0})
    >>> collector.add(3, {"n": torch.tensor(4)}, lambda numbers: {"half": numbers["n"] / 2})
    >>> collector.add(3, {}, stacked=[(["c", "d"], torch.tensor([1.5, 2.5]))])
    >>> collector.flush(trainer)
    {3: {'a': 0.5, 'b': 2.0, 'half': 2.0, 'c': 1.5, 'd': 2.5}}
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import lightning as L
import torch

from lightning_optim.callbacks.scalar_writer import write_scalars
from lightning_optim.fit.driver import driver_of
from lightning_optim.internals import callback_metrics_store, logging_step

__all__ = ["Finish", "MetricCollector", "Stacked", "to_device", "to_numbers"]

Finish = Callable[[dict[str, float]], Mapping[str, float]]
"""Turns a monitor's values, made Python numbers, into the metrics to log (and updates the monitor's own state)."""

Listener = Callable[[L.Trainer, dict[int, dict[str, float]]], None]
"""Gets the metrics of each flush, by step, after they were written to the loggers."""

Stacked = tuple[Sequence[str], torch.Tensor]
"""Several values in one tensor, with their keys: ``keys[i]`` is the tensor's ``i``-th element (flattened)."""


@dataclass
class _Entry:
    step: int
    values: Mapping[str, float | torch.Tensor]
    stacked: list[Stacked]
    finish: Finish | None
    callback_metrics: bool


class MetricCollector:
    """The metrics the monitors of one Trainer hand over during a training step, converted and logged together.

    ``MetricCollector.of(trainer)`` is the Trainer's own (made on first use). A monitor joins it in ``setup``, hands
    its values over with :meth:`add` and calls :meth:`batch_end` at the end of its ``on_train_batch_end``: the last
    member in ``trainer.callbacks`` order flushes. The members also flush at the end of an epoch and of training,
    for values handed over in a batch that ended early (``on_train_batch_start`` returning -1).
    """

    _of: weakref.WeakKeyDictionary[L.Trainer, MetricCollector] = weakref.WeakKeyDictionary()

    def __init__(self) -> None:
        self._members: list[L.Callback] = []
        self._listeners: list[Listener] = []
        self._entries: list[_Entry] = []

    @classmethod
    def of(cls, trainer: L.Trainer) -> MetricCollector:
        """The collector of ``trainer``."""
        collector = cls._of.get(trainer)
        if collector is None:
            collector = cls._of[trainer] = cls()
        return collector

    def join(self, monitor: L.Callback) -> None:
        """Count ``monitor`` among the callbacks that hand values over (called from its ``setup``); values left from
        an earlier fit are dropped."""
        if not any(member is monitor for member in self._members):
            self._members.append(monitor)
        self._entries.clear()

    def listen(self, listener: Listener) -> None:
        """Call ``listener`` after each flush with the metrics written, by step (once, however often it is given)."""
        if listener not in self._listeners:
            self._listeners.append(listener)

    def add(
        self,
        step: int,
        values: Mapping[str, float | torch.Tensor],
        finish: Finish | None = None,
        callback_metrics: bool = False,
        stacked: Iterable[Stacked] = (),
    ) -> None:
        """Hand over ``values`` (Python numbers or 0-dim tensors) and the ``stacked`` ones to log at ``step``.

        ``finish``, if given, gets them all as Python numbers at the flush (``values`` first, then the stacked keys)
        and returns the metrics to log instead. With ``callback_metrics``, the metrics are also put into
        ``trainer.callback_metrics`` at the flush (as ``LearningRateMonitor`` does for its lr keys), so
        ``EarlyStopping`` and ``ModelCheckpoint`` can monitor them.
        """
        self._entries.append(_Entry(step, values, list(stacked), finish, callback_metrics))

    def batch_end(self, trainer: L.Trainer, monitor: L.Callback) -> None:
        """``monitor``'s ``on_train_batch_end`` is done: flush if it is the last member in the Trainer's callbacks
        (or not among them)."""
        if not self._entries:
            return
        callbacks: list[L.Callback] = trainer.callbacks  # type: ignore[attr-defined]  # set by Lightning's connector
        joined = {id(member) for member in self._members}
        members = [callback for callback in callbacks if id(callback) in joined]
        if not members or members[-1] is monitor or not any(callback is monitor for callback in members):
            self.flush(trainer)

    def flush(self, trainer: L.Trainer) -> dict[int, dict[str, float]]:
        """Convert every tensor handed over with one host sync, and write each step's metrics to every logger.

        Returns the metrics logged, by step.
        """
        if not self._entries:
            return {}
        self._take_spike_guard(trainer)
        entries, self._entries = self._entries, []
        tensors = [
            tensor
            for entry in entries
            for tensor in itertools.chain(
                (value for value in entry.values.values() if isinstance(value, torch.Tensor)),
                (tensor for _, tensor in entry.stacked),
            )
        ]
        numbers = iter(to_numbers(tensors))
        by_step: dict[int, dict[str, float]] = {}
        for_callbacks: dict[str, float] = {}
        for entry in entries:
            converted = {
                key: next(numbers) if isinstance(value, torch.Tensor) else value for key, value in entry.values.items()
            }
            for keys, _ in entry.stacked:
                converted.update(zip(keys, itertools.islice(numbers, len(keys)), strict=True))
            metrics = entry.finish(converted) if entry.finish is not None else converted
            if metrics:
                by_step.setdefault(entry.step, {}).update(metrics)
                if entry.callback_metrics:
                    for_callbacks.update(metrics)
        if for_callbacks:
            on_device = to_device(list(for_callbacks.values()), trainer.strategy.root_device)
            callback_metrics_store(trainer).update(zip(for_callbacks, on_device, strict=True))
        for step, metrics in by_step.items():
            for logger in trainer.loggers:
                write_scalars(logger, metrics, step)
        for listener in self._listeners:
            listener(trainer, by_step)
        return by_step

    def _take_spike_guard(self, trainer: L.Trainer) -> None:
        # The spike guard's report (the mixin's driver, which cannot import this layer) rides on the same sync.
        module = trainer.lightning_module
        driver = driver_of(module) if module is not None else None
        report = driver.spike_guard_report(trainer) if driver is not None else None
        if report is not None:
            self.add(logging_step(trainer), *report)


def to_device(values: list[float], device: torch.device) -> list[torch.Tensor]:
    """0-dim float tensors of ``values`` on ``device``, copied in one non-blocking copy (from pinned memory to a GPU,
    so that the host does not wait).

    Examples:
        >>> to_device([0.5, 2.0], torch.device("cpu"))
        [tensor(0.5000), tensor(2.)]
    """
    host = torch.tensor(values)
    if device.type == "cuda":
        host = host.pin_memory()
    return list(host.to(device, non_blocking=True).unbind())


def to_numbers(tensors: list[torch.Tensor]) -> list[float]:
    """Python numbers of every element of ``tensors`` (each flattened, in order), with one device-to-host copy per
    device (one host sync).

    The tensors of each dtype are stacked (0-dim ones) or concatenated, cast to float64 (exact for every float and for
    integers up to 2**53; float32 on MPS, which has no float64) and concatenated, so a value is the same as
    ``float(tensor)``.

    Examples:
        >>> to_numbers([torch.tensor(0.1), torch.tensor(3), torch.tensor([0.25, 4.0], dtype=torch.float64)])
        [0.10000000149011612, 3.0, 0.25, 4.0]
    """
    sizes = [tensor.numel() for tensor in tensors]
    starts = list(itertools.accumulate(sizes, initial=0))
    numbers: list[float] = [0.0] * starts[-1]
    by_device: dict[torch.device, dict[torch.dtype, list[int]]] = {}
    for index, tensor in enumerate(tensors):
        by_device.setdefault(tensor.device, {}).setdefault(tensor.dtype, []).append(index)
    for device, by_dtype in by_device.items():
        wide = torch.float32 if device.type == "mps" else torch.float64
        order: list[int] = []
        parts: list[torch.Tensor] = []
        with torch.no_grad():
            for group in by_dtype.values():
                scalars = [index for index in group if tensors[index].dim() == 0]
                others = [index for index in group if tensors[index].dim() != 0]
                pieces = [torch.stack([tensors[index] for index in scalars])] if scalars else []
                pieces += [tensors[index].reshape(-1) for index in others]
                parts.append((pieces[0] if len(pieces) == 1 else torch.cat(pieces)).to(wide))
                order += scalars + others
            flat = parts[0] if len(parts) == 1 else torch.cat(parts)
        values = flat.tolist()
        position = 0
        for index in order:
            numbers[starts[index] : starts[index + 1]] = values[position : position + sizes[index]]
            position += sizes[index]
    return numbers
