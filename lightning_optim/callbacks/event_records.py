"""TensorBoard event records checksummed with numpy: the same bytes, about 15x faster for a logging step's event.

Without TensorFlow, TensorBoard's ``RecordWriter`` computes each record's CRC-32C in pure Python, byte by byte
(about 0.15 µs a byte), on its writer thread and holding the GIL. A logging step of every monitor is one event of
1.5-2 KB, so 0.2-0.3 ms of checksum, and Lightning's ``logger.save()`` at the end of every logging step waits for it.
:func:`masked_crc32c` gives the same checksums in a few numpy operations, and :func:`fast_records` makes a writer's
records use it.

The checksum is linear over GF(2): from a zero register, a byte ``b`` followed by ``d`` more bytes contributes
``Z^d(table[b])`` (``Z``: the register step for a zero byte), independently of the other bytes. A table of those
contributions for every distance up to :data:`CHUNK` turns a chunk into one gather and one XOR reduction; the
register a chunk starts from is XORed into its first four bytes (the CRC is reflected), which is what processing them
from that register does.

Examples:
    >>> masked_crc32c(b"123456789") == tensorboard_masked_crc32c(b"123456789")
    True
    >>> hex(crc32c(b"123456789"))  # the standard check value of CRC-32C
    '0xe3069283'
"""

from __future__ import annotations

import functools
import itertools
import os
import socket
import struct
import time
from typing import Any

import numpy as np
from tensorboard.compat.proto import event_pb2  # type: ignore[import-untyped]  # no stubs
from tensorboard.compat.proto.summary_pb2 import Summary  # type: ignore[import-untyped]  # no stubs
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import CRC_TABLE  # type: ignore[import-untyped]  # no stubs
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as tensorboard_masked_crc32c
from tensorboard.summary.writer.record_writer import RecordWriter  # type: ignore[import-untyped]  # no stubs

from lightning_optim.internals import event_record_writer

__all__ = [
    "CHUNK",
    "EventFile",
    "FastRecordWriter",
    "crc32c",
    "fast_records",
    "masked_crc32c",
    "tensorboard_masked_crc32c",
]

CHUNK = 2048
"""Bytes checksummed by one gather: the distance table holds ``CHUNK * 256`` uint32 (2 MiB, made on first use)."""

_SHORT = 64
"""Up to this many bytes (a record's 8-byte header), the byte loop is faster than numpy's fixed costs."""

_MASK = 0xFFFFFFFF

_FILE_NUMBERS = itertools.count()


@functools.cache
def _by_distance() -> tuple[np.ndarray, np.ndarray]:
    """The flat table ``T[(CHUNK - 1 - d) * 256 + b] = Z^d(table[b])``, and each row's offset into it."""
    table = np.array(CRC_TABLE, dtype=np.uint32)
    rows = np.empty((CHUNK, 256), dtype=np.uint32)
    rows[0] = table
    for distance in range(1, CHUNK):
        previous = rows[distance - 1]
        rows[distance] = table[previous & 0xFF] ^ (previous >> 8)
    return rows[::-1].reshape(-1).copy(), np.arange(CHUNK, dtype=np.intp) * 256


def _update(register: int, data: bytes) -> int:
    """The CRC-32C register after ``data``, from ``register`` (no final XOR)."""
    if len(data) <= _SHORT:
        for byte in data:
            register = CRC_TABLE[(register ^ byte) & 0xFF] ^ (register >> 8)
        return register
    flat, offsets = _by_distance()
    for start in range(0, len(data), CHUNK):
        chunk = np.frombuffer(data, dtype=np.uint8, count=min(CHUNK, len(data) - start), offset=start)
        if chunk.size < 4:
            return _update(register, chunk.tobytes())
        indices = offsets[CHUNK - chunk.size :] + chunk
        indices[:4] ^= np.frombuffer(register.to_bytes(4, "little"), dtype=np.uint8)
        register = int(np.bitwise_xor.reduce(flat[indices]))
    return register


def crc32c(data: bytes) -> int:
    """The CRC-32C (Castagnoli) of ``data``."""
    return _update(_MASK, data) ^ _MASK


def masked_crc32c(data: bytes) -> int:
    """The masked CRC-32C of TFRecord files, as TensorBoard's ``masked_crc32c`` computes it.

    Examples:
        >>> data = bytes(range(256)) * 20
        >>> masked_crc32c(data) == tensorboard_masked_crc32c(data)
        True
    """
    value = crc32c(data)
    return (((value >> 15) | (value << 17)) + 0xA282EAD8) & _MASK


class FastRecordWriter(RecordWriter):
    """TensorBoard's ``RecordWriter`` with the checksums of :func:`masked_crc32c`: it writes the same bytes."""

    def write(self, data: bytes) -> None:
        header = struct.pack("<Q", len(data))
        checksums = struct.pack("<I", masked_crc32c(header)), struct.pack("<I", masked_crc32c(data))
        self._writer.write(header + checksums[0] + data + checksums[1])


def fast_records(file_writer: Any) -> None:
    """Make the records of ``file_writer`` (a ``SummaryWriter``'s ``FileWriter``) use :class:`FastRecordWriter`.

    Its writer thread holds the record writer too, so the instance changes class in place; a record writer of
    another class (a later TensorBoard's, tensorboardX's) is left as it is.
    """
    record_writer = event_record_writer(file_writer)
    if type(record_writer) is RecordWriter:
        record_writer.__class__ = FastRecordWriter


class EventFile:
    """A TensorBoard event file written from the calling thread: torch's ``SummaryWriter`` writes through a writer
    thread, woken for every event, which costs more than writing a small event here.

    The file is what ``SummaryWriter`` makes: named ``events.out.tfevents.<time>.<host>.<pid>.<n>``, a first event with
    the file version, with ``purge_step`` TensorBoard's restart marker at that step (``SummaryWriter(purge_step=...)``:
    TensorBoard drops the run's earlier events from that step on), then one record (:class:`FastRecordWriter`) per
    event. Like ``SummaryWriter`` it flushes every ``flush_secs`` (on the next event after them) and on :meth:`close`.

    Examples:
        >>> import tempfile
        >>> from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        >>> log_dir = tempfile.mkdtemp()
        >>> events = EventFile(log_dir)
        >>> events.add_summary(Summary(value=[Summary.Value(tag="clipping/norm", simple_value=2.5)]), step=3)
        >>> events.close()
        >>> [(event.step, event.value) for event in EventAccumulator(log_dir).Reload().Scalars("clipping/norm")]
        [(3, 2.5)]
    """

    def __init__(self, log_dir: str, purge_step: int | None = None, flush_secs: float = 120.0) -> None:
        os.makedirs(log_dir, exist_ok=True)
        stem = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
        while True:
            try:
                self._file = open(os.path.join(log_dir, f"{stem}.{next(_FILE_NUMBERS)}"), "xb")  # noqa: SIM115  # closed in close()
                break
            except FileExistsError:
                continue
        self._records = FastRecordWriter(self._file)
        self._flush_secs = flush_secs
        self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
        if purge_step is not None:
            restart = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
            self._write(event_pb2.Event(wall_time=time.time(), step=purge_step, file_version="brain.Event:2"))
            self._write(event_pb2.Event(wall_time=time.time(), step=purge_step, session_log=restart))
        self.flush()

    def add_summary(self, summary: Summary, step: int) -> None:
        """Write ``summary`` as the event of ``step``."""
        self._write(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))
        if time.monotonic() - self._flushed > self._flush_secs:
            self.flush()

    def _write(self, event: Any) -> None:
        self._records.write(event.SerializeToString())

    def flush(self) -> None:
        """Write what is buffered to the file."""
        self._file.flush()
        self._flushed = time.monotonic()

    def close(self) -> None:
        """Flush and close the file (again: nothing)."""
        if not self._file.closed:
            self._file.close()
