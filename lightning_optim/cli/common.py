"""Helpers the command-line apps share: the model (with its ``optim_config``) and the run's length, from the Hydra
config, and the run directory's checks.

Examples:
    >>> from omegaconf import OmegaConf
    >>> cfg = OmegaConf.create({"optimizer": {"name": "sgd", "lr": 0.1}, "param_groups": [], "scheduler": None})
    >>> compose_optim_config(cfg)
    {'optimizer': {'name': 'sgd', 'lr': 0.1}, 'param_groups': [], 'scheduler': None}
    >>> count_optimizer_steps({"max_epochs": 3, "accumulate_grad_batches": 2, "limit_train_batches": 5}, 23)
    (9, 3)
"""

from __future__ import annotations

import functools
import math
import os
import re
import shlex
import sys
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from lightning_optim.targets import allow_target_modules

CONFIG_PATH = "pkg://lightning_optim.conf"
"""Where the apps find their configs: the package, so an installed wheel needs no checkout."""

# The default run directories (conf/train.yaml) end in the process id: two runs started in the same microsecond
# still get their own. Cached, as Hydra's `now` is: Hydra copies the cache into each job of a sweep, so jobs run by
# other processes (joblib, SLURM) resolve the sweep directory as the process that made it.
OmegaConf.register_new_resolver("pid", os.getpid, replace=True, use_cache=True)

LIGHTNING_DEFAULT_MAX_EPOCHS = 1000
"""What Lightning's Trainer runs when neither ``max_epochs`` nor ``max_steps`` is set."""

_PLAIN_HYDRA_VALUE = re.compile(r"[\w ./+@%:~-]+")
"""A value Hydra's override grammar reads as it is (no quoting needed)."""


def compose_optim_config(cfg: DictConfig) -> dict[str, Any]:
    """The model's ``optim_config``: the config's ``optimizer``, ``param_groups``, ``scheduler``, ``clipping`` and
    ``resume`` (the last two when set) as plain, resolved containers (a ``DictConfig`` in hparams would break
    ``weights_only`` checkpoint loading); with several optimizers (``optimizers=gan``), ``optimizers`` and ``resume``,
    and any single-optimizer section left set, which validation refuses."""
    resume = plain_sections({"resume": cfg.resume}) if cfg.get("resume") is not None else {}
    if cfg.get("optimizers") is not None:
        single = {key: cfg.get(key) for key in ("optimizer", "scheduler", "clipping") if cfg.get(key) is not None}
        return {"optimizers": OmegaConf.to_container(cfg.optimizers, resolve=True), **plain_sections(single), **resume}
    scheduler = cfg.get("scheduler")
    param_groups = cfg.get("param_groups")
    clipping = cfg.get("clipping")
    return {
        "optimizer": OmegaConf.to_container(cfg.optimizer, resolve=True),
        "param_groups": OmegaConf.to_container(param_groups, resolve=True) if param_groups is not None else [],
        "scheduler": OmegaConf.to_container(scheduler, resolve=True) if scheduler is not None else None,
        **({"clipping": OmegaConf.to_container(clipping, resolve=True)} if clipping is not None else {}),
        **resume,
    }


def plain_sections(sections: Mapping[str, Any]) -> dict[str, Any]:
    """Config sections as plain, resolved containers."""
    return {key: OmegaConf.to_container(value, resolve=True) for key, value in sections.items()}


def whole_number(key: str, value: Any) -> int:
    """``value`` as an int: a count written as ``1e9`` on the command line arrives as a float.

    Examples:
        >>> whole_number("trainer.max_steps", 1e9)
        1000000000
    """
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{key} = {value!r} is not valid. Expected a whole number, e.g. 1000 or 1e9.")
    return value


def instantiate_model(model_cfg: DictConfig, optim_config: dict[str, Any]) -> L.LightningModule:
    """Instantiate the model config, then hand it ``optim_config`` as plain data.

    ``model`` is the user's own code path: Hydra instantiates it and every ``_target_`` inside it. ``optim_config``
    is not: a ``_target_`` in it reaches the model untouched, where the project's own check
    (:func:`lightning_optim.optim.build.import_class`) accepts only optimizer and scheduler classes, so nothing a
    command line puts into ``optimizer``, ``param_groups`` or ``scheduler`` is ever called by Hydra.

    Examples:
        >>> from omegaconf import OmegaConf
        >>> model_cfg = OmegaConf.create({"_target_": "lightning_optim.demos.QuadraticMLP", "hidden": 4})
        >>> opened = {"_target_": "builtins.open", "file": "x.txt", "mode": "w"}
        >>> type(instantiate_model(model_cfg, {"optimizer": {"name": "sgd", "lr": 0.1}})).__name__
        'QuadraticMLP'
        >>> from lightning_optim import OptimConfigError
        >>> try:
        ...     instantiate_model(model_cfg, {"optimizer": {"name": "sgd", "lr": 0.1, "x": opened}})
        ... except OptimConfigError as error:
        ...     print(str(error).split(" is not valid")[0])
        optim_config.optimizer.x = {'_target_': 'builtins.open', 'file': 'x.txt', 'mode': 'w'}
    """
    # _partial_ stops Hydra at the model's own arguments; optim_config then goes in through a plain call.
    build = instantiate(model_cfg, _partial_=True, _convert_="all")
    return build(optim_config=optim_config)


def apply_app_settings(cfg: DictConfig) -> None:
    """Check the settings every app reads before anything runs, and apply ``allowed_target_modules``.

    ``trust_checkpoint`` and the ``Trainer``'s boolean arguments must be real booleans (:func:`app_flag`,
    :func:`check_trainer_flags`); ``allowed_target_modules`` (a list of module names) extends the modules a
    ``_target_`` in ``optimizer``/``scheduler`` may name (:func:`lightning_optim.targets.allow_target_modules`).

    Raises:
        ValueError: naming the key, its value and what works.
    """
    if "trust_checkpoint" in cfg:
        app_flag(cfg, "trust_checkpoint")
    check_trainer_flags(cfg.get("trainer") or {})
    modules = cfg.get("allowed_target_modules")
    if modules is None:
        return
    if not isinstance(modules, ListConfig) or not all(isinstance(module, str) for module in modules):
        raise ValueError(
            f"allowed_target_modules = {_plain(modules)!r} is not valid. Expected a list of module names, e.g. "
            "allowed_target_modules=[mypkg.optim]."
        )
    try:
        allow_target_modules(*modules)
    except ValueError as error:
        raise ValueError(f"allowed_target_modules: {error}") from None


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if isinstance(value, DictConfig | ListConfig) else value


def app_flag(cfg: DictConfig, key: str) -> bool:
    """The boolean at ``key`` (resolved), refused unless it is a real ``true``/``false``.

    A command line makes strings easily (``trust_checkpoint=no``, ``'false'``, an ``oc.env`` default), and any
    non-empty string is true in Python: ``weights_only=not "no"`` would unpickle a checkpoint.

    Raises:
        ValueError: naming the key, the value and the spellings that work.

    Examples:
        >>> from omegaconf import OmegaConf
        >>> app_flag(OmegaConf.create({"trust_checkpoint": False}), "trust_checkpoint")
        False
        >>> app_flag(OmegaConf.create({"trust_checkpoint": "no"}), "trust_checkpoint")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: trust_checkpoint = 'no' is not valid. Expected true or false, unquoted ...
    """
    value = OmegaConf.select(cfg, key, throw_on_missing=True)
    if isinstance(value, bool):
        return value
    raise ValueError(_flag_message(key, value, "true or false"))


def _flag_message(key: str, value: Any, expected: str) -> str:
    return (
        f"{key} = {value!r} is not valid. Expected {expected}, unquoted (e.g. {key}=false): a string such as 'no' or "
        "'false' is not read as a boolean. From an environment variable, decode it: "
        f"{key}='${{oc.decode:${{oc.env:NAME,false}}}}'."
    )


def check_trainer_flags(trainer_cfg: Mapping[str, Any]) -> None:
    """Refuse a string for any ``Trainer`` argument that takes a boolean (``enable_checkpointing=no``), unless the
    argument's annotation names that string (``deterministic: warn``).

    Raises:
        ValueError: naming ``trainer.<key>``, the value and what works.

    Examples:
        >>> check_trainer_flags({"deterministic": "warn", "inference_mode": False, "max_epochs": 3})
        >>> check_trainer_flags({"enable_checkpointing": "off"})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: trainer.enable_checkpointing = 'off' is not valid. Expected true or false, unquoted ...
    """
    for key in trainer_cfg:
        words = _trainer_flags().get(str(key))
        if words is None:
            continue
        value = trainer_cfg[key]  # only the flags: other values may interpolate what exists only inside the app
        if not isinstance(value, str) or value in words:
            continue
        expected = " or ".join(["true", "false", *(repr(word) for word in sorted(words))])
        raise ValueError(_flag_message(f"trainer.{key}", value, expected))


@functools.cache
def _trainer_flags() -> dict[str, frozenset[str]]:
    """``Trainer`` arguments whose annotation admits a bool, each with the strings it also admits (``Literal``)."""
    flags = {}
    for name, annotation in typing.get_type_hints(L.Trainer.__init__).items():
        members = _annotation_members(annotation)
        if bool in members:
            flags[name] = frozenset(str(member) for member in members if isinstance(member, str))
    return flags


def _annotation_members(annotation: Any) -> set[Any]:
    """The types and ``Literal`` values a (union) annotation is made of."""
    if typing.get_origin(annotation) is Literal:
        return set(typing.get_args(annotation))
    arguments = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and arguments:
        return set().union(*(_annotation_members(argument) for argument in arguments))
    return {annotation}


def count_optimizer_steps(trainer_cfg: Mapping[str, Any], num_train_batches: int) -> tuple[int, int]:
    """The optimizer steps a run will take and those per epoch, as ``trainer.estimated_stepping_batches`` counts.

    Args:
        trainer_cfg: The Trainer's arguments: ``max_epochs``, ``max_steps``, ``accumulate_grad_batches``,
            ``limit_train_batches`` (missing keys take Lightning's defaults).
        num_train_batches: ``len(train_dataloader)``.

    Returns:
        ``(total_steps, steps_per_epoch)``.

    Raises:
        ValueError: the run has no end (``max_epochs: -1`` without ``max_steps``) or no training batches.
    """
    limit = trainer_cfg.get("limit_train_batches")
    limit = 1.0 if limit is None else limit
    if isinstance(limit, int) and not isinstance(limit, bool):
        batches = min(num_train_batches, limit)
    else:
        batches = int(num_train_batches * float(limit))
    if batches <= 0:
        raise ValueError(f"No training batches: {num_train_batches} batches with limit_train_batches={limit}.")
    accumulate = trainer_cfg.get("accumulate_grad_batches") or 1
    # Lightning also steps on an epoch's last, incomplete accumulation.
    steps_per_epoch = math.ceil(batches / accumulate)
    max_steps = trainer_cfg.get("max_steps")
    max_steps = -1 if max_steps is None else whole_number("trainer.max_steps", max_steps)
    max_epochs = trainer_cfg.get("max_epochs")
    max_epochs = None if max_epochs is None else whole_number("trainer.max_epochs", max_epochs)
    if max_epochs is None:
        max_epochs = LIGHTNING_DEFAULT_MAX_EPOCHS if max_steps == -1 else -1
    if max_epochs == -1:
        if max_steps == -1:
            raise ValueError("The run has no end: set trainer.max_epochs or trainer.max_steps.")
        return max_steps, steps_per_epoch
    total = steps_per_epoch * max(max_epochs, 1)
    return (min(total, max_steps) if max_steps != -1 else total), steps_per_epoch


RUN_CLAIM = ".run.lock"
"""The file in a run directory whose lock says a run is using it (see :func:`claimed_run_dir`)."""


@contextmanager
def claimed_run_dir(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir`` for this run: a second run there, even one started in the same instant, is refused.

    The claim is an exclusive ``flock`` on ``<run_dir>/.run.lock``, which also holds the process id for the message.
    The operating system drops the lock when the process ends, however it ends (``kill -9`` too), so a later run in
    the directory (a resume) is never refused by a stale claim. Not taken on Windows, which has no ``flock``.

    Raises:
        FileExistsError: naming the directory, the process that holds it, and the ways on.
    """
    if sys.platform == "win32":
        yield
        return
    import fcntl

    run_dir.mkdir(parents=True, exist_ok=True)
    claim = os.open(run_dir / RUN_CLAIM, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(claim, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(claim, 32, 0).decode(errors="replace").strip() or "unknown"
            raise FileExistsError(
                f"The run directory {run_dir} is in use by another run (process {holder}); two runs there would write "
                "into each other's checkpoints and curves. Start this run in another directory (leave hydra.run.dir "
                "at its default, or name an unused one), or wait for that run to end and then resume it with "
                f"ckpt_path=<{run_dir}/checkpoints/last.ckpt>."
            ) from None
        os.ftruncate(claim, 0)
        os.pwrite(claim, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(claim)  # releases the lock


def previous_outputs(run_dir: Path) -> list[str]:
    """What an earlier run left in ``run_dir``: its entries, less what Hydra writes before the app starts.

    Hydra creates ``.hydra/`` and the job's ``<job name>.log`` in every run directory (a DDP rank adds
    ``<job name>_ddp_process_<rank>.log``), and :func:`claimed_run_dir` its ``.run.lock``; anything else
    (checkpoints, event files, metrics) is an earlier run's.

    Examples:
        >>> import tempfile
        >>> run_dir = Path(tempfile.mkdtemp())
        >>> (run_dir / ".hydra").mkdir(); (run_dir / "train.log").touch()
        >>> previous_outputs(run_dir)
        []
        >>> (run_dir / "checkpoints").mkdir()
        >>> previous_outputs(run_dir)
        ['checkpoints']
    """
    if not run_dir.is_dir():
        return []
    return sorted(
        entry.name for entry in run_dir.iterdir() if entry.name not in (".hydra", RUN_CLAIM) and entry.suffix != ".log"
    )


def refuse_used_run_dir(run_dir: Path) -> None:
    """Refuse to start a fresh run in a directory that holds an earlier run's outputs.

    Raises:
        FileExistsError: naming the directory, what is in it, and the two ways on (a new directory, or resuming).
    """
    found = previous_outputs(run_dir)
    if found:
        raise FileExistsError(
            f"The run directory {run_dir} already holds an earlier run's outputs ({', '.join(found)}); a fresh run "
            "there would mix its checkpoints and curves with them. Start it in a new directory (leave hydra.run.dir "
            "at its default, or name an empty one), or resume that run with "
            f"ckpt_path=<{run_dir}/checkpoints/last.ckpt>."
        )


def saved_step(checkpoint: Path) -> int:
    """The global step a checkpoint was saved at; memory-mapped, so its tensors are not read."""
    return torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)["global_step"]


def hydra_value(text: str) -> str:
    """``text`` as the value of a Hydra override: as it is unless Hydra's grammar would parse some of it.

    Examples:
        >>> hydra_value("/runs/a b/last.ckpt"), hydra_value("/runs/epoch=0-step=4.ckpt")
        ('/runs/a b/last.ckpt', "'/runs/epoch=0-step=4.ckpt'")
    """
    if _PLAIN_HYDRA_VALUE.fullmatch(text):
        return text
    return "'" + text.replace("'", "\\'") + "'"


def fresh_command(overrides: Iterable[str]) -> str:
    """The shell command that runs the run's ``overrides`` again from the start, without its ``ckpt_path``.

    Examples:
        >>> fresh_command(["optimizer=adamw", "ckpt_path=/old.ckpt"])
        'lightning-optim-train optimizer=adamw'
    """
    return shlex.join(["lightning-optim-train", *_without_ckpt_path(overrides)])


def resume_command(checkpoint: Path, overrides: Iterable[str]) -> str:
    """The shell command that resumes a run from ``checkpoint`` with the run's own ``overrides``.

    Examples:
        >>> resume_command(Path("/runs/a b/interrupted.ckpt"), ["optimizer=adamw", "ckpt_path=/old.ckpt"])
        "lightning-optim-train optimizer=adamw 'ckpt_path=/runs/a b/interrupted.ckpt'"
    """
    return shlex.join(
        ["lightning-optim-train", *_without_ckpt_path(overrides), f"ckpt_path={hydra_value(str(checkpoint))}"]
    )


def _without_ckpt_path(overrides: Iterable[str]) -> list[str]:
    return [override for override in overrides if not override.lstrip("+~").startswith("ckpt_path=")]
