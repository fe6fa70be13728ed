"""Event records checksummed with numpy: TensorBoard's checksums, and event files identical byte for byte."""

from __future__ import annotations

import os
import random
import re
import socket

import pytest
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as tensorboard_masked_crc32c
from tensorboard.summary.writer.record_writer import RecordWriter
from torch.utils.tensorboard import SummaryWriter

from lightning_optim.callbacks.event_records import CHUNK, EventFile, FastRecordWriter, fast_records, masked_crc32c
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


def test_an_event_file_reads_back_as_what_summary_writer_writes_and_is_named_alike(tmp_path):
    own, torch_writer = EventFile(str(tmp_path / "own")), SummaryWriter(str(tmp_path / "torch"))
    for step, value in enumerate([0.5, 2.0, float("inf")]):
        own.add_summary(Summary(value=[Summary.Value(tag="clipping/norm", simple_value=value)]), step)
        torch_writer.add_scalar("clipping/norm", value, global_step=step)
    own.close()
    own.close()
    torch_writer.close()
    assert tb.scalars(tmp_path / "own") == tb.scalars(tmp_path / "torch")
    name = re.compile(rf"events\.out\.tfevents\.\d{{10}}\.{re.escape(socket.gethostname())}\.{os.getpid()}\.\d+")
    for run in ("own", "torch"):
        (path,) = (tmp_path / run).iterdir()
        assert name.fullmatch(path.name), path.name


def test_two_event_files_of_one_directory_in_one_second_get_their_own_names(tmp_path):
    first, second = EventFile(str(tmp_path)), EventFile(str(tmp_path))
    first.close()
    second.close()
    assert len(list(tmp_path.iterdir())) == 2
