"""Errors that name the key, the bad value and what would work; nothing here imports torch, Lightning or OmegaConf.

Examples:
    >>> str(config_error("optimizer.name", "adamm", "one of: adam, sgd", ["adam", "sgd"]))
    "optim_config.optimizer.name = 'adamm' is not valid. Did you mean 'adam'? Expected one of: adam, sgd."
    >>> str(argument_error("GradNormMonitor", "nonfinite", "wran", "'warn', 'skip' or 'raise'", ["warn", "skip"]))
    "GradNormMonitor(nonfinite='wran') is not valid. Did you mean 'warn'? Expected 'warn', 'skip' or 'raise'."
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "CheckpointError",
    "OptimConfigError",
    "argument_error",
    "checkpoint_error",
    "config_error",
    "did_you_mean",
    "key_path",
]


class OptimConfigError(ValueError):
    """A bad value in ``optim_config``, raised before training starts.

    The message names the key, the bad value and what would work.
    """


class CheckpointError(RuntimeError):
    """A checkpoint that is not loaded (missing, damaged, holding objects whose unpickling could run code, or records
    whose values no run could have written) or not saved.

    Examples:
        >>> raise CheckpointError("Checkpoint missing.ckpt does not exist or is not a file.")
        Traceback (most recent call last):
        ...
        lightning_optim.errors.CheckpointError: Checkpoint missing.ckpt does not exist or is not a file.
    """


def did_you_mean(value: object, choices: Iterable[str]) -> str:
    """Return `` Did you mean 'x'?`` for the closest choice, or an empty string.

    Examples:
        >>> did_you_mean("adamm", ["adam", "sgd"])
        " Did you mean 'adam'?"
    """
    matches = difflib.get_close_matches(str(value).lower(), list(choices), n=1, cutoff=0.6)
    return f" Did you mean {matches[0]!r}?" if matches else ""


def key_path(where: str, key: str) -> str:
    """``key`` inside the section at ``where``: a key path under ``optim_config``, empty for its top level.

    Several named optimizers resolve each section as a single-optimizer config at ``optimizers.<name>``; the checks
    take that ``where`` so that their messages name the key from the root when they are made.

    Examples:
        >>> key_path("", "optimizer.lr"), key_path("optimizers.critic", "optimizer.lr")
        ('optimizer.lr', 'optimizers.critic.optimizer.lr')
    """
    return f"{where}.{key}" if where else key


def config_error(
    key: str, value: object, expected: str, choices: Iterable[str] = (), unknown_key: bool = False
) -> OptimConfigError:
    """Build the error for ``key`` holding ``value``, saying what was ``expected``.

    Close matches among ``choices`` are suggested for the value, or for the key's own name if ``unknown_key``.

    Examples:
        >>> str(config_error("scheduler.step_size", 0, "an integer >= 1"))
        'optim_config.scheduler.step_size = 0 is not valid. Expected an integer >= 1.'
    """
    return OptimConfigError(
        f"optim_config.{key} = {value!r} is not valid."
        f"{did_you_mean(key.rsplit('.', 1)[-1] if unknown_key else value, choices)} Expected {expected}."
    )


def argument_error(owner: str, argument: str, value: object, expected: str, choices: Iterable[str] = ()) -> ValueError:
    """Build the error for the constructor argument ``argument`` of ``owner``, phrased as :func:`config_error` does.

    Examples:
        >>> str(argument_error("BatchNormMonitor", "histogram_every_n", 0, "a positive int or None"))
        'BatchNormMonitor(histogram_every_n=0) is not valid. Expected a positive int or None.'
    """
    return ValueError(f"{owner}({argument}={value!r}) is not valid.{did_you_mean(value, choices)} Expected {expected}.")


def positive_int_argument(owner: str, argument: str, value: object) -> int:
    """``value`` if it is an int >= 1 (a bool is not), else raise :func:`argument_error` for it.

    Examples:
        >>> positive_int_argument("UpdateMonitor", "every_n_logging_steps", 10)
        10
        >>> positive_int_argument("UpdateMonitor", "every_n_logging_steps", 0)
        Traceback (most recent call last):
        ...
        ValueError: UpdateMonitor(every_n_logging_steps=0) is not valid. Expected an int >= 1, e.g. 10.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise argument_error(owner, argument, value, "an int >= 1, e.g. 10")
    return value


def checkpoint_error(key: str, value: object, expected: str) -> CheckpointError:
    """Build the error for a record restored from a checkpoint: ``key`` (its path in the checkpoint) holds ``value``.

    Examples:
        >>> print(checkpoint_error("optim_clipping[0].state.count", -3, "an integer >= 0"))
        ... # doctest: +NORMALIZE_WHITESPACE
        Checkpoint entry optim_clipping[0].state.count = -3 is not valid: expected an integer >= 0. Nothing was
        restored from it; the checkpoint was edited or damaged after it was saved. Resume from another checkpoint, or
        delete the top-level entry optim_clipping to start that state afresh.
    """
    shown = _short_repr(value)
    entry = key.split(".", 1)[0].split("[", 1)[0]
    return CheckpointError(
        f"Checkpoint entry {key} = {shown} is not valid: expected {expected}. Nothing was restored from it; the "
        "checkpoint was edited or damaged after it was saved. Resume from another checkpoint, or delete the top-level "
        f"entry {entry} to start that state afresh."
    )


def _short_repr(value: object, limit: int = 120) -> str:
    shown = repr(value)
    return shown if len(shown) <= limit else f"{shown[: limit - 5]} ...)"
