"""What each config value must be, derived from the constructor or dataclass that receives it.

A key's type is the receiver's annotation; where there is none (or it cannot be resolved), its default decides: a
bool default takes true/false, a number default any number, a tuple default a list of that length, a None default
anything. Values are checked and conformed before anything is built: an integer key takes an integral float
(``1e9`` from a command line) and gets it as an int; a bool is never a number.

Examples:
    >>> import torch
    >>> types = constructor_types(torch.optim.Adam)
    >>> conform([0.9, 0.98], types["betas"], "optimizer.betas")
    [0.9, 0.98]
    >>> conform(0.9, types["betas"], "optimizer.betas")
    Traceback (most recent call last):
    ...
    lightning_optim.errors.OptimConfigError: optim_config.optimizer.betas = 0.9 is not valid. Expected a pair of \
numbers, e.g. [0.9, 0.999].
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, NamedTuple

from lightning_optim.errors import config_error

__all__ = ["Expected", "conform", "conform_section", "constructor_types", "dataclass_types", "describe", "expected"]

_EMPTY = inspect.Parameter.empty
_UNIONS = (typing.Union, types.UnionType)
_NOUNS = {float: ("a number", "numbers"), int: ("an integer", "integers"), bool: ("true or false", "booleans")}
_NOUNS |= {str: ("a string", "strings"), type(None): ("null", "nulls")}
_SAMPLES = {float: 0.1, int: 100, bool: True}
"""Examples for a key with no usable default."""


class Expected(NamedTuple):
    """The type a key takes and the example its error shows."""

    hint: Any
    example: Any = None


class _Mismatch(Exception):
    pass


def expected(hint: Any = _EMPTY, default: Any = _EMPTY) -> Expected:
    """The :class:`Expected` for a key annotated ``hint`` (or, without one, typed by its ``default``).

    Examples:
        >>> expected(default=(0.5, 1.2))
        Expected(hint=tuple[float, float], example=[0.5, 1.2])
    """
    if hint is _EMPTY:
        hint = _hint_of_default(default)
    if typing.get_origin(hint) is Literal:
        return Expected(hint)
    try:
        example = _sample(hint) if default is _EMPTY or default is None else _conform(default, hint)
    except _Mismatch:
        example = _sample(hint)
    return Expected(hint, example)


def constructor_types(cls: type[Any]) -> dict[str, Expected]:
    """The keyword arguments of ``cls.__init__`` after its first one (the parameters or the optimizer), typed.

    Examples:
        >>> import torch
        >>> constructor_types(torch.optim.SGD)["nesterov"]
        Expected(hint=<class 'bool'>, example=False)
    """
    function = cls.__init__
    parameters = list(inspect.signature(function).parameters.values())[2:]
    return {
        p.name: expected(_resolve(p.annotation, function), p.default)
        for p in parameters
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def dataclass_types(cls: type) -> dict[str, Expected]:
    """The fields of dataclass ``cls``, typed by their annotations.

    Examples:
        >>> from lightning_optim.schedule.closed_form import StepDecay
        >>> dataclass_types(StepDecay)["step_size"]
        Expected(hint=<class 'int'>, example=100)
    """
    hints = typing.get_type_hints(cls)
    return {
        field.name: expected(hints[field.name], field.default if field.default is not dataclasses.MISSING else _EMPTY)
        for field in dataclasses.fields(cls)
    }


def conform(value: Any, wanted: Expected, key: str) -> Any:
    """Return ``value`` as ``wanted`` takes it (an integral float as an int for an integer key).

    Raises:
        OptimConfigError: naming ``key``, the value, and what works with an example.
    """
    try:
        return _conform(value, wanted.hint)
    except _Mismatch:
        example = "" if wanted.example is None else f", e.g. {_render(wanted.example)}"
        raise config_error(key, value, f"{describe(wanted.hint)}{example}") from None


def conform_section(section: Mapping[str, Any], types: Mapping[str, Expected], where: str) -> dict[str, Any]:
    """Conform every key of ``section`` that ``types`` knows; other keys are left to the caller's checks."""
    return {
        key: conform(value, types[key], f"{where}.{key}") if key in types else value for key, value in section.items()
    }


def describe(hint: Any) -> str:
    """What a value of type ``hint`` is, in words.

    Examples:
        >>> describe(tuple[float, float]), describe(int | None), describe(Literal["cos", "linear"])
        ('a pair of numbers', 'an integer or null', "one of 'cos', 'linear'")
    """
    return _describe(hint) or f"a {getattr(hint, '__name__', hint)}"


def _describe(hint: Any) -> str | None:
    """Words for ``hint``, or None for a type a config file cannot hold (e.g. a Tensor)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in _NOUNS:
        return _NOUNS[hint][0]
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in _UNIONS:
        # A config file holds numbers, not tensors: name the arms it can write, when there are any.
        words = [word for word in map(_describe, args) if word is not None]
        return " or ".join(words) if words else None
    if origin in (list, tuple) and (not args or args[-1] is Ellipsis or origin is list):
        return f"a list of {_plural(args[0]) if args else 'values'}"
    if origin is tuple:
        if len(set(args)) == 1:
            count = "a pair of" if len(args) == 2 else f"a list of {len(args)}"
            return f"{count} {_plural(args[0])}"
        return f"a list of {len(args)} values: " + ", then ".join(map(describe, args))
    if hint is Any or hint is _EMPTY:
        return "any value"
    return None


def _plural(hint: Any) -> str:
    if hint in _NOUNS:
        return _NOUNS[hint][1]
    if typing.get_origin(hint) in _UNIONS:
        words = [_plural(arm) for arm in typing.get_args(hint) if _describe(arm) is not None]
        if words:
            return " or ".join(words)
    return f"values that are each {describe(hint)}"


def _conform(value: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is _EMPTY:
        return value
    if origin in _UNIONS:
        for arm in args:
            try:
                return _conform(value, arm)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is Literal:
        # Only the type: the receiver refuses a value outside the set with its own message.
        return _require(value, any(type(value) is type(option) for option in args))
    if origin in (list, tuple):
        return _conform_items(value, origin, args)
    if hint is bool:
        return _require(value, isinstance(value, bool))
    if hint is float:
        return _require(value, isinstance(value, (int, float)) and not isinstance(value, bool))
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return _require(value, isinstance(value, int) and not isinstance(value, bool))
    target = origin or hint
    return _require(value, not isinstance(target, type) or isinstance(value, target))


def _conform_items(value: Any, origin: type, args: tuple[Any, ...]) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise _Mismatch
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise _Mismatch
        return [_conform(item, arg) for item, arg in zip(value, args, strict=True)]
    return [_conform(item, args[0]) for item in value] if args else list(value)


def _require(value: Any, condition: bool) -> Any:
    if not condition:
        raise _Mismatch
    return value


def _hint_of_default(default: Any) -> Any:
    if default is _EMPTY or default is None:
        return Any
    if isinstance(default, bool):
        return bool
    if isinstance(default, (int, float)):
        # An int default often stands for any number (weight_decay=0), so only an annotation makes a key integer.
        return float
    if isinstance(default, tuple):
        return tuple[tuple(_hint_of_default(item) for item in default)]  # type: ignore[misc]  # built at run time
    return type(default)


def _resolve(annotation: Any, function: Callable[..., Any]) -> Any:
    """An annotation written as a string (``from __future__ import annotations``), evaluated where it was written.

    One parameter at a time, unlike ``typing.get_type_hints``: a name that cannot be resolved leaves that one
    parameter to its default, not the whole signature. ``typing``'s names are there too, as torch's ``lr_scheduler``
    imports ``Callable`` only under ``TYPE_CHECKING``.
    """
    if not isinstance(annotation, str):
        return annotation
    try:
        return eval(annotation, {**vars(typing), **getattr(function, "__globals__", {})})
    except Exception:
        return _EMPTY


def _sample(hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in _SAMPLES:
        return _SAMPLES[hint]
    if origin in _UNIONS:
        return next((sample for sample in map(_sample, args) if sample is not None), None)
    if origin in (list, tuple) and args:
        items = [_sample(arg) for arg in (args[:1] if origin is list or args[-1] is Ellipsis else args)]
        return None if None in items else items
    return None


def _render(value: Any) -> str:
    """``value`` as a config file writes it (``true``, ``null``, ``[0.9, 0.999]``)."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(_render, value)) + "]"
    return repr(value)
