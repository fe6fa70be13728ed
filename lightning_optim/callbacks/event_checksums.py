"""TensorBoard's event-file checksums computed by ``google-crc32c``'s C code instead of TensorBoard's pure Python.

Every record TensorBoard writes carries two CRC-32C checksums, which TensorBoard (installed without TensorFlow, as
PyTorch users have it) computes byte by byte in Python: about 0.1 us a byte, on its writer thread, which holds the
GIL meanwhile and which Lightning's ``TensorBoardLogger`` waits for at every logging step (``save`` flushes). A
logging step of all the monitors writes a few kilobytes (about 40 bytes per scalar, most of it the tag), so the
checksum alone costs the training thread a quarter of a millisecond and more per logging step, growing with the
layers watched. ``google-crc32c`` (Google's, Apache-2.0, wheels with a C extension for every major platform)
computes the same checksum in about 0.2 us for the whole record.

:func:`use_native_checksums` points TensorBoard's record writer at it: the files are byte for byte the same, and
TensorBoard's readers, which check each record's checksum with their own code, read them as before. It changes
nothing when ``google-crc32c`` only has its pure-Python fallback, or when TensorBoard's writer no longer uses the
function it replaces (a future TensorBoard with fast checksums of its own).

Examples:
    >>> use_native_checksums() in (True, False)
    True
    >>> masked_crc32c(b"lightning_optim") == tensorboard_masked_crc32c(b"lightning_optim")
    True
"""

from __future__ import annotations

import google_crc32c
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import (  # type: ignore[import-untyped]  # no stubs
    masked_crc32c as tensorboard_masked_crc32c,
)
from tensorboard.summary.writer import record_writer  # type: ignore[import-untyped]  # no stubs

__all__ = ["masked_crc32c", "tensorboard_masked_crc32c", "use_native_checksums"]

_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TensorBoard's masked CRC-32C of ``data`` (the TFRecord format's: the checksum rotated right by 15 bits plus a
    constant), with the checksum from ``google-crc32c``."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & _U32


def use_native_checksums() -> bool:
    """Make TensorBoard's record writer use :func:`masked_crc32c` where ``google-crc32c`` has its C extension and
    the writer still uses TensorBoard's pure-Python function; return whether it does now. Idempotent."""
    if record_writer.masked_crc32c is masked_crc32c:
        return True
    if record_writer.masked_crc32c is not tensorboard_masked_crc32c or google_crc32c.implementation != "c":
        return False
    record_writer.masked_crc32c = masked_crc32c
    return True
