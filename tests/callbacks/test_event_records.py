"""Event records checksummed with numpy: TensorBoard's checksums, and event files identical byte for byte."""

from __future__ import annotations

import random

import pytest
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as tensorboard_masked_crc32c
from tensorboard.summary.writer.record_writer import RecordWriter

from lightning_optim.callbacks.event_records import CHUNK, FastRecordWriter, fast_records, masked_crc32c
from lightning_optim.callbacks.scalar_writer import write_scalars
from lightning_optim.internals import event_record_writer
from tests import tb

LENGTHS = [0, 1, 3, 4, 5, 8, 63, 64, 65, 100, CHUNK - 1, CHUNK, CHUNK + 1, CHUNK + 3, CHUNK + 4, 2 * CHUNK + 2, 5000]


@pytest.mark.parametrize("length", LENGTHS)
def test_the_checksum_is_tensorboards_at_every_length_around_the_chunks(length):
    data = random.Random(length).randbytes(length)
    assert masked_crc32c(data) == tensorboard_masked_crc32c(data)
    assert masked_crc32c(b"\xff" * length) == tensorboard_masked_crc32c(b"\xff" * length)


class FixedRecords:
    """A file-like object that keeps what a record writer writes."""

    def __init__(self) -> None:
        self.written = b""

    def write(self, data: bytes) -> None:
        self.written += data


def test_a_fast_record_is_the_same_bytes_as_tensorboards():
    slow, fast = FixedRecords(), FixedRecords()
    for length in LENGTHS:
        data = random.Random(length).randbytes(length)
        RecordWriter(slow).write(data)
        FastRecordWriter(fast).write(data)
    assert fast.written == slow.written


def test_the_logger_writes_fast_records_after_write_scalars_and_reads_back_the_same(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="tb")
    record_writer = event_record_writer(logger.experiment.file_writer)
    assert type(record_writer) is RecordWriter
    metrics = {f"layer{index}/norm": index / 7 for index in range(100)}
    write_scalars(logger, metrics, step=3)
    assert type(record_writer) is FastRecordWriter
    logger.log_metrics({"train/loss": 0.5}, step=3)
    logger.finalize("success")
    scalars = tb.scalars(tmp_path)
    assert scalars["train/loss"] == [(3, 0.5)]
    assert {key: values[0][1] for key, values in scalars.items() if key != "train/loss"} == pytest.approx(metrics)


def test_a_record_writer_of_another_class_is_left_as_it_is(tmp_path):
    class OwnRecordWriter(RecordWriter):
        pass

    logger = TensorBoardLogger(tmp_path, name="tb")
    record_writer = event_record_writer(logger.experiment.file_writer)
    record_writer.__class__ = OwnRecordWriter
    fast_records(logger.experiment.file_writer)
    assert type(record_writer) is OwnRecordWriter
