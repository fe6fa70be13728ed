"""TensorBoard's record checksums from google-crc32c: the same bytes as TensorBoard's own, read back by its reader."""

from __future__ import annotations

import glob
import os
import random
from pathlib import Path

import google_crc32c
import pytest
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.compat.tensorflow_stub import errors
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import PyRecordReader_New
from tensorboard.summary.writer import record_writer

from lightning_optim.callbacks.event_checksums import masked_crc32c, tensorboard_masked_crc32c, use_native_checksums
from lightning_optim.callbacks.scalar_writer import write_scalars


@pytest.mark.parametrize("size", [0, 1, 7, 12, 64, 1000, 4099])
def test_the_masked_checksum_is_tensorboard_s(size: int) -> None:
    data = random.Random(size).randbytes(size)
    assert masked_crc32c(data) == tensorboard_masked_crc32c(data)


def _records(path: str) -> list[bytes]:
    """Every record of an event file, through TensorBoard's reader, which checks both checksums of each."""
    reader = PyRecordReader_New(path)
    records = []
    while True:
        try:
            reader.GetNext()
        except errors.OutOfRangeError:
            return records
        records.append(reader.record())


def test_tensorboard_reads_back_what_is_written_with_native_checksums(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(record_writer, "masked_crc32c", tensorboard_masked_crc32c)
    logger = TensorBoardLogger(str(tmp_path), name="run", version=0)
    metrics = {f"batchnorm/features.{layer}/mean_drift": 0.25 * layer for layer in range(40)}
    write_scalars(logger, metrics, step=3)  # the first write switches the writer over
    assert record_writer.masked_crc32c is masked_crc32c
    write_scalars(logger, {"grad_norm/total": 1.5}, step=4)
    logger.experiment.flush()
    (path,) = glob.glob(os.path.join(logger.log_dir, "events.out.tfevents.*"))
    records = _records(path)
    assert len(records) == 3  # the file version event, then the two steps
    assert b"batchnorm/features.39/mean_drift" in records[1] and b"grad_norm/total" in records[2]

    corrupted = tmp_path / "corrupted"
    data = bytearray(Path(path).read_bytes())
    data[-5] ^= 0xFF  # a byte of the last record's payload
    corrupted.write_bytes(bytes(data))
    with pytest.raises(errors.DataLossError):
        _records(str(corrupted))


def test_without_the_c_extension_tensorboard_keeps_its_own(monkeypatch) -> None:
    monkeypatch.setattr(record_writer, "masked_crc32c", tensorboard_masked_crc32c)
    monkeypatch.setattr(google_crc32c, "implementation", "python")
    assert not use_native_checksums()
    assert record_writer.masked_crc32c is tensorboard_masked_crc32c


def test_a_writer_that_no_longer_uses_tensorboard_s_function_is_left_alone(monkeypatch) -> None:
    def replaced(data: bytes) -> int:
        return 0

    monkeypatch.setattr(record_writer, "masked_crc32c", replaced)
    assert not use_native_checksums()
    assert record_writer.masked_crc32c is replaced
