"""SafeCheckpointIO: loading never runs code, damaged files are refused before training, a failed save loses nothing."""

from __future__ import annotations

import dataclasses
import errno
import functools
import http.server
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.tuner.tuning import Tuner

from lightning_optim import CheckpointError, SafeCheckpointIO
from tests.models import NetInHparams, RecordingModel, loader, trainer

pytestmark = pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")

OPT_OUT = (
    "If you trust where this checkpoint comes from, load it with `trainer.fit(..., weights_only=False)` "
    "(lightning-optim-train: `trust_checkpoint=true`); a class of your own that is safe to rebuild can be allowed "
    "alone with `torch.serialization.add_safe_globals([YourClass])`."
)
STEPS_PER_EPOCH = 8  # tests.models.loader(): 32 samples in batches of 4


def fit_with_checkpoints(directory: Path) -> Path:
    """One epoch through SafeCheckpointIO, keeping the newest step checkpoint and last.ckpt; returns last.ckpt."""
    checkpoints = ModelCheckpoint(dirpath=directory, save_last=True, every_n_train_steps=2, save_top_k=1)
    run = trainer(plugins=[SafeCheckpointIO()], enable_checkpointing=True, callbacks=[checkpoints])
    run.fit(RecordingModel(), loader())
    assert type(run.strategy.checkpoint_io) is SafeCheckpointIO
    return directory / "last.ckpt"


def resume(path: Path, **fit_kwargs: Any) -> RecordingModel:
    """Resume a second epoch from ``path`` through SafeCheckpointIO; returns the model (its ``lrs``: steps run)."""
    model = RecordingModel()
    run = trainer(max_epochs=2, plugins=[SafeCheckpointIO()])
    run.fit(model, loader(), ckpt_path=path, **fit_kwargs)
    assert run.global_step == 2 * STEPS_PER_EPOCH
    return model


@pytest.fixture
def last_checkpoint(tmp_path: Path) -> Path:
    return fit_with_checkpoints(tmp_path / "checkpoints")


# ------------------------------------------------------------------------------------------------ saving


def test_trainer_saves_and_removes_through_the_plugin_and_resumes(last_checkpoint):
    # every_n_train_steps=2 with save_top_k=1 saved steps 2, 4, 6, 8 and removed each older one.
    assert sorted(os.listdir(last_checkpoint.parent)) == [f"epoch=0-step={STEPS_PER_EPOCH}.ckpt", "last.ckpt"]
    assert SafeCheckpointIO().load_checkpoint(last_checkpoint)["global_step"] == STEPS_PER_EPOCH
    assert len(resume(last_checkpoint).lrs) == STEPS_PER_EPOCH, "only the second epoch ran"


class FullDisk:
    """A file whose disk fills up after ``room`` bytes: the write that does not fit raises ENOSPC."""

    def __init__(self, file: Any, room: int) -> None:
        self.file, self.room, self.written = file, room, 0

    def write(self, data: bytes) -> int:
        if self.written + len(data) > self.room:
            self.file.write(bytes(data[: self.room - self.written]))
            self.written = self.room
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += self.file.write(data)
        return len(data)

    def flush(self) -> None:
        self.file.flush()


def test_save_on_a_full_disk_leaves_the_previous_checkpoint(last_checkpoint, monkeypatch):
    before = last_checkpoint.read_bytes()
    files_before = sorted(os.listdir(last_checkpoint.parent))
    torch_save, disks = torch.save, []

    def save_until_the_disk_is_full(checkpoint: Any, file: Any, **kwargs: Any) -> None:
        disks.append((file.name, FullDisk(file, room=4096)))
        torch_save(checkpoint, disks[-1][1], **kwargs)

    monkeypatch.setattr(torch, "save", save_until_the_disk_is_full)
    run = trainer(plugins=[SafeCheckpointIO()])
    run.fit(RecordingModel(), loader())
    expected = (
        f"Checkpoint {last_checkpoint} was not saved ([Errno 28] No space left on device); the file that was there "
        "before, if any, is unchanged."
    )
    with pytest.raises(CheckpointError) as raised:
        run.save_checkpoint(last_checkpoint)
    monkeypatch.undo()

    assert str(raised.value) == expected
    [(temporary, disk)] = disks
    assert Path(temporary).parent == last_checkpoint.parent and disk.written == 4096, "written beside the target"
    assert last_checkpoint.read_bytes() == before
    assert sorted(os.listdir(last_checkpoint.parent)) == files_before, "no temporary file left"
    assert len(resume(last_checkpoint).lrs) == STEPS_PER_EPOCH


KILLED_MID_SAVE = """
import os, sys, time, torch
from lightning_optim.fit.checkpoints import _save_atomically

class Stalls:
    def __reduce__(self):
        open(sys.argv[2], "w").close()  # the temporary file is being written: the parent may kill now
        time.sleep(60)
        return int, (0,)

_save_atomically({"state_dict": {"weight": torch.ones(256)}, "stalls": Stalls()}, sys.argv[1])
"""


def test_a_save_removes_the_temporary_files_that_saves_killed_mid_write_left(last_checkpoint, tmp_path):
    directory = last_checkpoint.parent
    started = tmp_path / "writing"
    killed = subprocess.Popen(
        [sys.executable, "-c", KILLED_MID_SAVE, str(directory / "epoch=0-step=6.ckpt"), str(started)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    deadline = time.monotonic() + 120
    while not started.exists() and time.monotonic() < deadline and killed.poll() is None:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    left = sorted(name for name in os.listdir(directory) if name.endswith(".tmp"))
    assert len(left) == 1 and left[0].startswith(".epoch=0-step=6.ckpt."), left
    # Not this code's temporary files: another name, or written after the save began (a save under way).
    others = [".notes.tmp", ".last.ckpt.tmp", ".last.ckpt.0123ABCD.tmp", "last.ckpt.0123abcd.tmp", ".x.0123abcd.tmp"]
    for name in others:
        (directory / name).write_bytes(b"kept")
    os.utime(directory / ".x.0123abcd.tmp", (time.time() + 3600, time.time() + 3600))
    SafeCheckpointIO().save_checkpoint({"global_step": 9}, directory / "last.ckpt")
    assert sorted(name for name in os.listdir(directory) if name.endswith(".tmp")) == sorted(others)
    assert SafeCheckpointIO().load_checkpoint(directory / "last.ckpt") == {"global_step": 9}


# ------------------------------------------------------------------------------------------------ damaged files


def flip_bytes_in_a_tensor(path: Path) -> str:
    """Invert 64 bytes inside the storage of ``encoder.weight`` (8 x 4 floats); returns that zip entry's name."""
    storage = torch.load(path, weights_only=True)["state_dict"]["encoder.weight"].numpy().tobytes()
    with zipfile.ZipFile(path) as archive:
        [entry] = [name for name in archive.namelist() if archive.read(name) == storage]
    data = bytearray(path.read_bytes())
    start = data.index(storage)
    data[start : start + 64] = bytes(byte ^ 0xFF for byte in data[start : start + 64])
    path.write_bytes(data)
    return entry


@pytest.mark.parametrize("damage", ["flipped", "empty", "random", "missing"])
def test_damaged_checkpoint_is_refused_before_training(last_checkpoint, damage):
    if damage == "flipped":
        entry = flip_bytes_in_a_tensor(last_checkpoint)
        expected = (
            f"Checkpoint {last_checkpoint} is corrupted: entry {entry!r} fails its CRC check (its bytes changed after "
            "they were written). Resume from another checkpoint."
        )
    elif damage == "empty":
        last_checkpoint.write_bytes(b"")
        expected = f"Checkpoint {last_checkpoint} is empty (0 bytes): the save that wrote it did not finish."
    elif damage == "random":
        last_checkpoint.write_bytes(random.Random(0).randbytes(4096))
        expected = (
            f"Checkpoint {last_checkpoint} (4096 bytes) is not a zip archive (the format torch.save writes): it is "
            "truncated, corrupted or not a checkpoint."
        )
    else:
        last_checkpoint.unlink()
        expected = f"Checkpoint {last_checkpoint} does not exist or is not a file."
    model = RecordingModel()
    with pytest.raises(CheckpointError) as raised:
        trainer(max_epochs=2, plugins=[SafeCheckpointIO()]).fit(model, loader(), ckpt_path=last_checkpoint)
    assert str(raised.value) == expected
    assert model.lrs == [], "no training step ran"


def same(a: Any, b: Any) -> bool:
    """``a == b`` through nested containers, tensors compared by dtype, shape and every value."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[key], b[key]) for key in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@pytest.mark.slow
def test_any_single_byte_flip_is_refused_naming_the_file_or_changes_nothing_loaded(tmp_path):
    model = RecordingModel()
    run = trainer(max_steps=2, plugins=[SafeCheckpointIO()])
    run.fit(model, loader(samples=8))
    original = tmp_path / "small.ckpt"
    run.save_checkpoint(original)
    data = original.read_bytes()
    expected = SafeCheckpointIO().load_checkpoint(original)
    flipped = tmp_path / "flipped.ckpt"
    generator = random.Random(0)
    wrong: list[str] = []
    for position in generator.sample(range(len(data)), 300):
        for mask in (0x01, 0x80, 0xFF):
            damaged = bytearray(data)
            damaged[position] ^= mask
            flipped.write_bytes(damaged)
            try:
                loaded = SafeCheckpointIO().load_checkpoint(flipped)
            except CheckpointError as error:
                if not str(error).startswith(f"Checkpoint {flipped} "):
                    wrong.append(f"{position}^{mask:#x}: {error}")
            except Exception as error:
                wrong.append(f"{position}^{mask:#x}: {type(error).__name__}: {error}")
            else:
                if not same(loaded, expected):
                    wrong.append(f"{position}^{mask:#x}: loaded other values")
    assert wrong == []


# ------------------------------------------------------------------------------------------------ hostile files


class Payload:
    """What an attacker pickles: unpickling it calls ``exec``, which here only creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "payload-ran"


@pytest.fixture
def malicious_checkpoint(last_checkpoint: Path, marker: Path) -> Path:
    checkpoint = torch.load(last_checkpoint, weights_only=True)
    checkpoint["hyper_parameters"] = {"lr": 0.5, "payload": Payload(marker)}
    path = last_checkpoint.parent.parent / "served" / "x.ckpt"
    path.parent.mkdir()
    torch.save(checkpoint, path)
    return path


def refusal(name: str, key: str = "hyper_parameters.payload", needs: str = "builtins.exec") -> str:
    return (
        f"Checkpoint {name} was not loaded: it holds objects whose unpickling could run code (nothing in it ran): "
        f"`{key}` needs {needs}. {OPT_OUT}"
    )


@pytest.mark.parametrize("force_no_weights_only", [False, True])
def test_local_checkpoint_with_code_is_refused(malicious_checkpoint, marker, monkeypatch, force_no_weights_only):
    if force_no_weights_only:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(CheckpointError) as raised:
        SafeCheckpointIO().load_checkpoint(malicious_checkpoint)
    assert str(raised.value) == refusal(str(malicious_checkpoint))
    assert not marker.exists()


@pytest.fixture
def server_url(malicious_checkpoint: Path):
    """``http://127.0.0.1:<port>`` serving the folder of the malicious checkpoint."""

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    handler = functools.partial(QuietHandler, directory=str(malicious_checkpoint.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_url_checkpoint_with_code_is_refused_where_lightning_runs_it(server_url, marker, tmp_path, monkeypatch):
    url = f"{server_url}/x.ckpt"
    with pytest.raises(CheckpointError) as raised:
        SafeCheckpointIO().load_checkpoint(url)
    assert str(raised.value) == refusal(url)
    assert not marker.exists()

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-hub"))  # where torch.hub downloads the file
    TorchCheckpointIO().load_checkpoint(url)
    assert marker.exists(), "plain Lightning unpickles a URL with weights_only=False: the payload ran"


def test_fit_from_a_checkpoint_with_code_is_refused(malicious_checkpoint, marker):
    model = RecordingModel()
    with pytest.raises(CheckpointError) as raised:
        trainer(max_epochs=2, plugins=[SafeCheckpointIO()]).fit(model, loader(), ckpt_path=malicious_checkpoint)
    assert str(raised.value) == refusal(str(malicious_checkpoint))
    assert not marker.exists() and model.lrs == []


@dataclasses.dataclass
class TrustedConfig:
    lr: float = 0.5


def test_trusted_checkpoint_loads_with_the_explicit_opt_out(last_checkpoint):
    checkpoint = torch.load(last_checkpoint, weights_only=True)
    checkpoint["callbacks"]["Custom"] = {"cfg": TrustedConfig()}
    torch.save(checkpoint, last_checkpoint)
    with pytest.raises(CheckpointError) as raised:
        SafeCheckpointIO().load_checkpoint(last_checkpoint)
    assert str(raised.value) == refusal(str(last_checkpoint), "callbacks.Custom.cfg", f"{__name__}.TrustedConfig")
    loaded = SafeCheckpointIO().load_checkpoint(last_checkpoint, weights_only=False)
    assert loaded["callbacks"]["Custom"]["cfg"] == TrustedConfig()
    assert len(resume(last_checkpoint, weights_only=False).lrs) == STEPS_PER_EPOCH


# ------------------------------------------------------------------------------------------------ tuners


def net_in_hparams() -> NetInHparams:
    torch.manual_seed(0)
    return NetInHparams(torch.nn.Linear(4, 1), {"optimizer": {"name": "sgd", "lr": 0.01}})


def tuner_files(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.startswith((".lr_find_", ".scale_batch_size_")))


@pytest.mark.filterwarnings("ignore:Attribute 'net' is an instance of `nn.Module`")
def test_lightnings_tuners_restore_a_model_whose_hparams_hold_a_module_and_leave_no_checkpoint(tmp_path):
    model = net_in_hparams()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    tuner = Tuner(trainer(max_epochs=1, plugins=[SafeCheckpointIO()], default_root_dir=tmp_path))
    finder = tuner.lr_find(model, num_training=10, early_stop_threshold=None, update_attr=False)
    assert len(finder.results["lr"]) == 10
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in before.items())
    assert tuner.scale_batch_size(model, mode="power", steps_per_trial=1, max_trials=3) == 8
    assert tuner_files(tmp_path) == []


@pytest.mark.filterwarnings("ignore:Attribute 'net' is an instance of `nn.Module`")
def test_only_an_unchanged_tuner_checkpoint_this_io_saved_is_trusted(tmp_path):
    run = trainer(max_steps=1, plugins=[SafeCheckpointIO()], default_root_dir=tmp_path)
    run.fit(net_in_hparams())
    io = run.strategy.checkpoint_io
    refused = "`hyper_parameters.net` needs torch.nn.modules.linear.Linear"
    # The user's own checkpoint, and one named as a tuner's that this object did not save, load as data.
    run.save_checkpoint(tmp_path / "user.ckpt")
    copied = tmp_path / ".lr_find_00000000-0000-4000-8000-000000000000.ckpt"
    copied.write_bytes((tmp_path / "user.ckpt").read_bytes())
    for path in (tmp_path / "user.ckpt", copied):
        with pytest.raises(CheckpointError, match=re.escape(refused)):
            io.load_checkpoint(path)
    # A tuner checkpoint this object saved, then changed by someone else, loads as data too.
    changed = tmp_path / ".lr_find_11111111-1111-4111-8111-111111111111.ckpt"
    run.save_checkpoint(changed)
    checkpoint = torch.load(changed, weights_only=False)
    checkpoint["global_step"] = 7
    torch.save(checkpoint, changed)
    with pytest.raises(CheckpointError, match=re.escape(refused)):
        io.load_checkpoint(changed)
    # Unchanged: loaded with its module, once, and deleted; asked for again it is refused as missing.
    own = tmp_path / ".scale_batch_size_22222222-2222-4222-8222-222222222222.ckpt"
    run.save_checkpoint(own)
    assert type(io.load_checkpoint(own)["hyper_parameters"]["net"]) is torch.nn.Linear
    assert not own.exists()
    with pytest.raises(CheckpointError, match="does not exist"):
        io.load_checkpoint(own)


# ------------------------------------------------------------------------------------------------ the app


@pytest.mark.parametrize(
    "overrides", [[], ["trainer=ddp"], ["experiment=cnn"], ["experiment=rnn"], ["experiment=transformer"]]
)
def test_every_app_trainer_uses_the_plugin(overrides):
    with initialize_config_module(version_base="1.3", config_module="lightning_optim.conf"):
        cfg = compose(config_name="train", overrides=overrides)
    assert [type(plugin) for plugin in instantiate(cfg.trainer.plugins)] == [SafeCheckpointIO]
