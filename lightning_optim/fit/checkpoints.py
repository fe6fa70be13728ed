"""Checkpoint files that never run code when loaded, are checked before resuming and survive a failed save.

``SafeCheckpointIO`` is a Lightning ``CheckpointIO`` plugin (``Trainer(plugins=[SafeCheckpointIO()])``):

- loading uses ``torch.load(weights_only=True)`` for local files and URLs alike (Lightning loads URLs with
  ``weights_only=False``), also under ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``, unless the caller passes
  ``weights_only=False`` for a checkpoint it trusts; a URL is fetched to a temporary local file first;
- a missing, empty, truncated or corrupted file is refused before anything is unpickled (``verify_checkpoint``);
- a save writes a temporary file beside the target and renames it over the target, so a failed save (a full disk)
  leaves the previous checkpoint as it was; a successful save removes the temporary files that earlier saves into
  that directory left behind (a process killed mid-save);
- Lightning's tuners (``Tuner.lr_find``, ``Tuner.scale_batch_size`` and their callbacks) save the model to a hidden
  ``.lr_find_<uuid>.ckpt`` / ``.scale_batch_size_<uuid>.ckpt`` and load it back after their search: such a file that
  this object saved in this process, unchanged since (SHA-256), is loaded with full trust (it may hold what
  ``weights_only=True`` refuses, e.g. an ``nn.Module`` in ``hparams``) and deleted once read. Every other file,
  also one with a tuner's name, is loaded as data.

Examples:
    >>> import lightning as L
    >>> trainer = L.Trainer(plugins=[SafeCheckpointIO()], logger=False, enable_progress_bar=False)
    >>> type(trainer.strategy.checkpoint_io).__name__
    'SafeCheckpointIO'
"""

from __future__ import annotations

import _compat_pickle
import contextlib
import hashlib
import os
import pickle
import re
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

import fsspec
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.types import _PATH
from typing_extensions import override

from lightning_optim.errors import CheckpointError

__all__ = ["CheckpointError", "SafeCheckpointIO", "verify_checkpoint"]

OPT_OUT = (
    "If you trust where this checkpoint comes from, load it with `trainer.fit(..., weights_only=False)` "
    "(lightning-optim-train: `trust_checkpoint=true`); a class of your own that is safe to rebuild can be allowed "
    "alone with `torch.serialization.add_safe_globals([YourClass])`."
)


def verify_checkpoint(path: _PATH, name: str | None = None) -> None:
    """Check that a local file is a complete, undamaged ``torch.save`` archive, without unpickling anything.

    ``torch.save`` writes a zip archive whose entries carry CRC-32 checksums; every entry is read and checked, so
    flipped bytes inside a tensor are found before training resumes from them.

    Args:
        path: The local checkpoint file.
        name: How error messages call the file (e.g. the URL it was fetched from); defaults to ``path``.

    Raises:
        CheckpointError: If the file is missing, empty, not a zip archive, or an entry fails its CRC check.

    Examples:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "last.ckpt")
        >>> torch.save({"state_dict": {"weight": torch.ones(3)}}, path)
        >>> verify_checkpoint(path)
        >>> with open(path, "r+b") as file:
        ...     _ = file.truncate(100)
        >>> verify_checkpoint(path, name="last.ckpt")
        Traceback (most recent call last):
        ...
        lightning_optim.errors.CheckpointError: Checkpoint last.ckpt (100 bytes) is not a zip archive ...
    """
    name = name or os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"Checkpoint {name} does not exist or is not a file.")
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"Checkpoint {name} is empty (0 bytes): the save that wrote it did not finish.")
    try:
        is_zip = zipfile.is_zipfile(path)
        damage = _first_damaged_entry(path) if is_zip else None
    # A flipped byte in the archive's headers surfaces as whatever zipfile trips over: a bad name encoding
    # (UnicodeDecodeError), an unknown version or compression (NotImplementedError), an "encrypted" flag
    # (RuntimeError), a bad offset (OSError, EOFError), a bad number (ValueError).
    except (zipfile.BadZipFile, zipfile.LargeZipFile, RuntimeError, ValueError, OSError, EOFError) as error:
        raise CheckpointError(
            f"Checkpoint {name} is a damaged zip archive ({type(error).__name__}: {error}): its bytes changed after "
            "they were written, or it is not a checkpoint. Resume from another checkpoint."
        ) from None
    if not is_zip:
        raise CheckpointError(
            f"Checkpoint {name} ({size} bytes) is not a zip archive (the format torch.save writes): it is truncated, "
            "corrupted or not a checkpoint."
        )
    if damage is not None:
        entry, problem = damage
        raise CheckpointError(
            f"Checkpoint {name} is corrupted: entry {entry!r} {problem} (its bytes changed after they were written). "
            "Resume from another checkpoint."
        )


_DOS_DIRECTORY = 0x10
"""The MS-DOS directory bit of a zip entry's external attributes."""


def _first_damaged_entry(path: _PATH) -> tuple[str, str] | None:
    """The first entry that fails its CRC check or is flagged as a directory, and what is wrong with it."""
    with zipfile.ZipFile(path) as archive:
        # miniz, which torch.load reads with, takes an entry with the directory bit for a directory and hands back
        # other bytes for its tensor; zipfile's CRC check ignores the bit.
        flagged = next((info for info in archive.infolist() if info.external_attr & _DOS_DIRECTORY), None)
        if flagged is not None:
            return flagged.filename, "is flagged as a directory in the archive's index"
        failed = archive.testzip()
        return (failed, "fails its CRC check") if failed is not None else None


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with loading that never runs code, verified files and atomic saves.

    Examples:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "checkpoints", "last.ckpt")
        >>> io = SafeCheckpointIO()
        >>> io.save_checkpoint({"global_step": 3, "state_dict": {"weight": torch.ones(2)}}, path)
        >>> io.load_checkpoint(path)["global_step"]
        3
        >>> os.listdir(os.path.dirname(path))
        ['last.ckpt']
    """

    def __init__(self) -> None:
        super().__init__()
        self._tuner_checkpoints: dict[str, str] = {}
        """The tuner checkpoints this object saved and has not loaded yet: absolute path -> SHA-256 of the file."""

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        """Write ``checkpoint`` to a temporary file beside ``path``, fsync it, then rename it over ``path``; then
        remove the temporary files that earlier saves into that directory left behind.

        A remote path (an fsspec URL) is saved the way Lightning saves it. A tuner's checkpoint is remembered (see
        the module's docstring).

        Args:
            checkpoint: The checkpoint dictionary.
            path: Where to write it.
            storage_options: Not supported, as in ``TorchCheckpointIO``.
        """
        local_path = _local_path(path)
        if local_path is None or storage_options is not None:
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        _save_atomically(checkpoint, local_path)
        if _TUNER_CHECKPOINT.fullmatch(os.path.basename(local_path)):
            self._tuner_checkpoints[os.path.abspath(local_path)] = _sha256(local_path)

    @override
    def load_checkpoint(
        self,
        path: _PATH,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Verify and load a checkpoint with ``torch.load(weights_only=True)``; a URL is fetched to a local file first.

        Args:
            path: A local path or an fsspec URL (``http://``, ``https://``, ``s3://``, ...).
            map_location: As for ``torch.load``; by default tensors are loaded onto the CPU, as Lightning does.
            weights_only: Only an explicit ``False`` (for a checkpoint you trust) allows arbitrary objects; ``None``
                means ``True``.

        Returns:
            The checkpoint dictionary.

        Raises:
            CheckpointError: If the file is missing or damaged (see ``verify_checkpoint``), or holds an object whose
                unpickling could run code; the message names the key that holds it and the global it needs.
        """
        name = os.fspath(path)
        own_tuner_checkpoint = self._own_tuner_checkpoint(path)
        if own_tuner_checkpoint is not None and weights_only is not True:
            try:
                verify_checkpoint(own_tuner_checkpoint, name=name)
                return torch.load(own_tuner_checkpoint, map_location=map_location, weights_only=False)
            finally:
                # Read once, after the search: removed even when restoring from it fails.
                with contextlib.suppress(FileNotFoundError):
                    os.remove(own_tuner_checkpoint)
        with _local_copy(path) as local_file:
            verify_checkpoint(local_file, name=name)
            if weights_only is False:
                return torch.load(local_file, map_location=map_location, weights_only=False)
            try:
                return torch.load(local_file, map_location=map_location, weights_only=True)
            except pickle.UnpicklingError as error:
                raise CheckpointError(_unsafe_checkpoint_message(local_file, name, error)) from None
            except Exception as error:  # weights_only loading calls no code of the file's: any other error is damage
                reason = str(error).splitlines()[0] if str(error) else ""
                raise CheckpointError(
                    f"Checkpoint {name} could not be read ({type(error).__name__}: {reason}): its zip entries pass "
                    "their CRC checks, but its headers are damaged or it is not a checkpoint torch can read. Resume "
                    "from another checkpoint."
                ) from error

    def _own_tuner_checkpoint(self, path: _PATH) -> str | None:
        """The local path of ``path`` if it is a tuner checkpoint this object saved and nobody changed since."""
        local_path = _local_path(path)
        if local_path is None:
            return None
        digest = self._tuner_checkpoints.pop(os.path.abspath(local_path), None)
        if digest is None or not os.path.isfile(local_path) or _sha256(local_path) != digest:
            return None
        return local_path


_TUNER_CHECKPOINT = re.compile(
    r"\.(lr_find|scale_batch_size)_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.ckpt"
)
"""The names Lightning's lr finder and batch-size finder give the checkpoint they restore the model from."""

_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")
"""The names of :func:`_save_atomically`'s temporary files: ``.<target name>.<8 hex digits>.tmp``."""


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _local_path(path: _PATH) -> str | None:
    """The local filesystem path of ``path`` (``file://`` stripped), or ``None`` for a remote URL."""
    _, stripped = fsspec.core.url_to_fs(os.fspath(path))
    return stripped if fsspec.utils.get_protocol(os.fspath(path)) == "file" else None


@contextlib.contextmanager
def _local_copy(path: _PATH) -> Iterator[str]:
    """Yield a local file holding the checkpoint at ``path``, fetching a remote one into a temporary directory."""
    local_path = _local_path(path)
    if local_path is not None:
        yield local_path
        return
    filesystem, remote_path = fsspec.core.url_to_fs(os.fspath(path))
    if not filesystem.exists(remote_path):
        raise CheckpointError(f"Checkpoint {os.fspath(path)} does not exist or is not a file.")
    with tempfile.TemporaryDirectory(prefix="lightning-optim-ckpt-") as directory:
        local_file = os.path.join(directory, "checkpoint.ckpt")
        filesystem.get_file(remote_path, local_file)
        yield local_file


def _save_atomically(checkpoint: dict[str, Any], path: str) -> None:
    """``torch.save`` into a new file in ``path``'s directory, then ``os.replace`` it over ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # Not ".ckpt": ModelCheckpoint's search for last*.ckpt must never pick up a half-written file.
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
    started = time.time()
    try:
        with open(temporary, "xb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except Exception as error:
        # torch.save reports a failed write (a full disk) as "unexpected pos ...", with the OSError as context.
        cause = error.__context__ if isinstance(error.__context__, OSError) else error
        raise CheckpointError(
            f"Checkpoint {path} was not saved ({cause}); the file that was there before, if any, is unchanged."
        ) from error
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
    _remove_stale_temporaries(directory, started)


def _remove_stale_temporaries(directory: str, before: float) -> None:
    """Remove the temporary files of saves into ``directory`` that never finished (a process killed mid-save):
    names :func:`_save_atomically` gives, last written before ``before`` (a save under way writes on)."""
    with os.scandir(directory) as entries:
        for entry in entries:
            if not _TEMPORARY.fullmatch(entry.name):
                continue
            # Gone already (another save swept it) or not removable: the checkpoint itself was saved all the same.
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < before:
                    os.remove(entry.path)


def _unsafe_checkpoint_message(local_file: str, name: str, error: pickle.UnpicklingError) -> str:
    """Why ``weights_only=True`` refused the checkpoint: each key holding an unsafe global, and the opt-out."""
    try:
        unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(local_file))
    except Exception:  # a pickle torch's static scan cannot read: torch's own reason is all there is
        unsafe = set()
    if not unsafe:
        reason = str(error).splitlines()[0]
        return f"Checkpoint {name} holds data that torch.load(weights_only=True) refuses ({reason}). {OPT_OUT}"
    places = _find_globals(local_file, unsafe)
    located = {global_name for _, global_name in places}
    listed = [f"`{key}` needs {global_name}" for key, global_name in places]
    listed += [f"{unknown} is needed at a key that could not be determined" for unknown in sorted(unsafe - located)]
    return (
        f"Checkpoint {name} was not loaded: it holds objects whose unpickling could run code (nothing in it ran): "
        f"{', '.join(listed)}. {OPT_OUT}"
    )


class _Stub:
    """What the scanning unpickler builds instead of any global: it records the global's name and what it holds."""

    global_name = ""
    arguments: list[Any]
    items: dict[Any, Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> _Stub:
        stub = object.__new__(cls)
        stub.arguments = [*args, *kwargs.values()]
        stub.items = {}
        return stub

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.arguments.append(state)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.arguments.append(value)

    def extend(self, values: Any) -> None:
        self.arguments.extend(values)


class _ScanningUnpickler(pickle.Unpickler):
    """Unpickles a checkpoint's ``data.pkl`` without importing or calling anything: every global is a ``_Stub``."""

    @override
    def find_class(self, module: str, name: str) -> type[_Stub]:
        # torch.save writes pickle protocol 2, which spells globals as Python 2 did (__builtin__.exec); torch's
        # list of unsafe globals uses today's names, as pickle's own fix_imports does.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        return type("Stub", (_Stub,), {"global_name": f"{module}.{name}"})

    @override
    def persistent_load(self, pid: Any) -> None:
        return None


def _find_globals(local_file: str, unsafe: set[str]) -> list[tuple[str, str]]:
    """``(key path, global)`` for every object in the checkpoint built from one of the ``unsafe`` globals."""
    found: list[tuple[str, str]] = []
    visited: set[int] = set()

    def walk(node: Any, key_path: str) -> None:
        if id(node) in visited:  # a pickle may share one object many times over: each is looked at once
            return
        visited.add(id(node))
        global_name = getattr(node, "global_name", None)
        if global_name in unsafe:
            found.append((key_path or "<the whole checkpoint>", global_name))
        elif isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{key_path}.{key}" if key_path else str(key))
        elif isinstance(node, (list, tuple)):
            for index, value in enumerate(node):
                walk(value, f"{key_path}.{index}" if key_path else str(index))
        elif isinstance(node, _Stub):
            for value in [*node.arguments, node.items]:
                walk(value, key_path)

    try:
        with zipfile.ZipFile(local_file) as archive:
            pickled = next(n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1)
            walk(_ScanningUnpickler(archive.open(pickled)).load(), "")
    except Exception:  # the key paths only improve the message; torch's own check already refused the file
        return []
    return found
