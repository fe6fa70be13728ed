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

__all__ = ["OptimConfigError", "argument_error", "config_error", "did_you_mean"]


class OptimConfigError(ValueError):
    """A bad value in ``optim_config``, raised before training starts.

    The message names the key, the bad value and what would work.
    """


def did_you_mean(value: object, choices: Iterable[str]) -> str:
    """Return `` Did you mean 'x'?`` for the closest choice, or an empty string.

    Examples:
        >>> did_you_mean("adamm", ["adam", "sgd"])
        " Did you mean 'adam'?"
    """
    matches = difflib.get_close_matches(str(value).lower(), list(choices), n=1, cutoff=0.6)
    return f" Did you mean {matches[0]!r}?" if matches else ""


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
