"""``SafeCheckpointIO``'s guarantees for ``ModelParallelStrategy`` (FSDP2, tensor parallelism), in both its forms.

Lightning's ``ModelParallelStrategy`` loads checkpoints itself, not through the Trainer's ``CheckpointIO``: a single
file (``save_distributed_checkpoint=False``) with ``torch.load``, a distributed checkpoint (a directory, the default)
with ``torch.distributed.checkpoint``, whose ``.metadata`` file is read with a plain ``pickle.load`` (which runs any
code the file names), and whose Lightning part ``meta.pt`` with ``torch.load(weights_only=None)``
(``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` turns that into ``False``). It saves the directory form without the
``CheckpointIO`` too, into the target directory itself. ``SafeModelParallelStrategy`` closes these gaps:

- before anything is loaded, on every rank, the checkpoint is verified (``verify_distributed_checkpoint``): a file as
  ``verify_checkpoint`` does; a directory's ``.metadata`` is read by an unpickler that builds only the classes torch
  writes there (anything else is refused, naming the global), every shard file it lists must hold the bytes it lists,
  every file the save recorded in ``checksums.json`` must have its size and CRC-32, and ``meta.pt`` must pass
  ``verify_checkpoint``; so a missing, truncated or corrupted file is refused before training, naming that file;
- ``meta.pt`` and the single file are loaded with ``weights_only=True`` unless the caller passes ``weights_only=False``;
- a directory is written into a temporary directory beside the target, which then replaces it, so a failed save
  leaves the previous checkpoint as it was; a single file is written by the ``CheckpointIO`` (``SafeCheckpointIO``
  by default: atomic).

Examples:
    >>> strategy = SafeModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1)
    >>> type(strategy.checkpoint_io).__name__
    'SafeCheckpointIO'
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import uuid
import zlib
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.strategies import ModelParallelStrategy
from typing_extensions import override

from lightning_optim.errors import CheckpointError
from lightning_optim.fit.checkpoints import SafeCheckpointIO, verify_checkpoint

__all__ = ["SafeModelParallelStrategy", "verify_distributed_checkpoint"]

CHECKSUMS = "checksums.json"
"""The file in a distributed checkpoint directory that lists every other file's size and CRC-32."""

_LIGHTNING_METADATA = "meta.pt"
"""Lightning's part of a distributed checkpoint (loops, callbacks, the mixin's records): a ``torch.save`` archive."""

_DCP_METADATA = ".metadata"

_DCP_GLOBALS = {
    ("torch.distributed.checkpoint.metadata", name)
    for name in (
        "Metadata",
        "TensorStorageMetadata",
        "TensorProperties",
        "ChunkStorageMetadata",
        "BytesStorageMetadata",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),
    ("torch", "Size"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("collections", "OrderedDict"),
}
"""What ``torch.distributed.checkpoint``'s ``FileSystemWriter`` pickles into ``.metadata`` (and dtypes, below)."""


class _MetadataUnpickler(pickle.Unpickler):
    """Builds only the classes torch writes into ``.metadata``; any other global is refused before it is imported."""

    def __init__(self, file: Any, name: str) -> None:
        super().__init__(file)
        self.name = name

    @override
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _DCP_GLOBALS or (
            module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        ):
            return super().find_class(module, name)
        raise CheckpointError(
            f"Checkpoint {self.name} was not loaded: it names {module}.{name}, which torch.distributed.checkpoint "
            "never writes there, and unpickling it could run code (nothing in it ran)."
        )


def verify_distributed_checkpoint(path: _PATH) -> None:
    """Check a ``ModelParallelStrategy`` checkpoint (a file or a distributed checkpoint directory) without running
    anything it holds.

    Args:
        path: The checkpoint file or directory.

    Raises:
        CheckpointError: Naming the file that is missing, truncated, corrupted or names a global that could run code.

    Examples:
        >>> import tempfile
        >>> directory = tempfile.mkdtemp()
        >>> verify_distributed_checkpoint(directory)
        Traceback (most recent call last):
        ...
        lightning_optim.errors.CheckpointError: Checkpoint .../.metadata does not exist: ...
    """
    path = Path(path)
    if not path.is_dir():
        verify_checkpoint(path)
        return
    metadata_file = path / _DCP_METADATA
    if not metadata_file.is_file():
        raise CheckpointError(
            f"Checkpoint {metadata_file} does not exist: {path} is not a complete distributed checkpoint "
            "(torch.distributed.checkpoint writes it last)."
        )
    recorded = _recorded_checksums(path)
    for name, (size, crc) in recorded.items():
        _check_file(path / name, size, crc)
    try:
        with open(metadata_file, "rb") as file:
            metadata = _MetadataUnpickler(file, os.fspath(metadata_file)).load()
        extents = {(info.relative_path, info.offset + info.length) for info in metadata.storage_data.values()}
    except CheckpointError:
        raise
    except Exception as error:
        raise CheckpointError(
            f"Checkpoint {metadata_file} could not be read ({type(error).__name__}: {error}): it is truncated or "
            "corrupted. Resume from another checkpoint."
        ) from None
    for relative_path, end in sorted(extents):
        shard = path / relative_path
        if not shard.is_file() or shard.stat().st_size < end:
            found = f"{shard.stat().st_size} bytes" if shard.is_file() else "missing"
            raise CheckpointError(
                f"Checkpoint {shard} is truncated or missing ({found}; {metadata_file} lists data up to byte {end}). "
                "Resume from another checkpoint."
            )
    verify_checkpoint(path / _LIGHTNING_METADATA)


def _recorded_checksums(directory: Path) -> dict[str, tuple[int, int]]:
    """``name -> (size, CRC-32)`` from ``checksums.json`` (none for a checkpoint saved without it)."""
    listing = directory / CHECKSUMS
    if not listing.is_file():
        return {}
    try:
        return {name: (int(size), int(crc)) for name, (size, crc) in json.loads(listing.read_text()).items()}
    except (ValueError, TypeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"Checkpoint {listing} is corrupted ({error}). Resume from another checkpoint.") from None


def _check_file(file: Path, size: int, crc: int) -> None:
    if not file.is_file():
        raise CheckpointError(f"Checkpoint {file} is missing (the save recorded it). Resume from another checkpoint.")
    if file.stat().st_size != size:
        raise CheckpointError(
            f"Checkpoint {file} has {file.stat().st_size} bytes, the save wrote {size}: it is truncated or corrupted. "
            "Resume from another checkpoint."
        )
    if _crc32(file) != crc:
        raise CheckpointError(
            f"Checkpoint {file} is corrupted: its CRC-32 differs from the one recorded when it was saved. Resume "
            "from another checkpoint."
        )


def _crc32(file: Path) -> int:
    crc = 0
    with open(file, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            crc = zlib.crc32(block, crc)
    return crc


def _write_checksums(directory: Path) -> None:
    listing = {
        entry.name: [entry.stat().st_size, _crc32(Path(entry.path))]
        for entry in os.scandir(directory)
        if entry.is_file() and entry.name != CHECKSUMS
    }
    with open(directory / CHECKSUMS, "w") as file:
        json.dump(listing, file, sort_keys=True)
        file.flush()
        os.fsync(file.fileno())


class SafeModelParallelStrategy(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` whose checkpoints, in both forms, are verified before loading, loaded
    without running code and saved so that a failed save leaves the previous checkpoint intact (see the module).

    Takes ``ModelParallelStrategy``'s arguments; its ``CheckpointIO`` is a ``SafeCheckpointIO`` unless another is
    given.

    Examples:
        >>> SafeModelParallelStrategy(save_distributed_checkpoint=False)._save_distributed_checkpoint
        False
    """

    @property  # type: ignore[explicit-override]  # mypy misses @override on a property with a setter (mypy#15900)
    @override
    def checkpoint_io(self) -> CheckpointIO:
        # Chosen only when nothing else was: a CheckpointIO given as a Trainer plugin is set here by Lightning, and
        # one set in __init__ would make Lightning refuse the plugin ("set through both strategy class and plugins").
        if self._checkpoint_io is None:
            self._checkpoint_io = SafeCheckpointIO()
        return self._checkpoint_io

    @checkpoint_io.setter
    def checkpoint_io(self, io: CheckpointIO) -> None:
        self._checkpoint_io = io

    @override
    def load_checkpoint(self, checkpoint_path: _PATH, weights_only: bool | None = None) -> dict[str, Any]:
        """Verify the checkpoint on every rank, then load it as Lightning does, with ``weights_only=True`` unless
        ``weights_only=False`` is passed.

        Args:
            checkpoint_path: A checkpoint file or distributed checkpoint directory.
            weights_only: Only an explicit ``False`` (a checkpoint you trust) allows arbitrary objects in it.

        Returns:
            The checkpoint's remaining entries, as ``ModelParallelStrategy.load_checkpoint`` returns them.
        """
        path = Path(self.broadcast(checkpoint_path))
        verify_distributed_checkpoint(path)
        return super().load_checkpoint(path, weights_only=weights_only is not False)

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: _PATH, storage_options: Any | None = None) -> None:
        """Save as ``ModelParallelStrategy`` does; a distributed checkpoint goes to a temporary directory beside
        ``filepath`` first, gets a ``checksums.json`` and then replaces ``filepath``.

        Args:
            checkpoint: The checkpoint dictionary.
            filepath: The target file or directory.
            storage_options: Not supported, as in ``ModelParallelStrategy``.

        Raises:
            CheckpointError: If the save failed; the previous checkpoint at ``filepath`` is unchanged.
        """
        if not self._save_distributed_checkpoint or storage_options is not None:
            super().save_checkpoint(checkpoint, filepath, storage_options)
            return
        path = Path(self.broadcast(filepath))
        temporary = Path(self.broadcast(path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"))
        try:
            super().save_checkpoint(checkpoint, temporary)
            self.barrier("SafeModelParallelStrategy.save_checkpoint")
            if self.global_rank == 0:
                _write_checksums(temporary)
                _replace(temporary, path)
        except Exception as error:
            raise CheckpointError(
                f"Checkpoint {path} was not saved ({error}); the checkpoint that was there before, if any, is "
                "unchanged."
            ) from error
        finally:
            if self.global_rank == 0 and temporary.exists():
                shutil.rmtree(temporary, ignore_errors=True)
        self.barrier("SafeModelParallelStrategy.save_checkpoint")


def _replace(new: Path, path: Path) -> None:
    """Put the directory ``new`` at ``path``; the previous checkpoint there is removed only once ``new`` is in place."""
    previous = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.old"
    if path.exists():
        os.replace(path, previous)
    os.replace(new, path)
    with contextlib.suppress(FileNotFoundError):
        if previous.is_dir():
            shutil.rmtree(previous)
        else:
            previous.unlink()
