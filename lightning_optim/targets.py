"""``_target_`` in a config: a dotted path to a class, imported only from allowed modules and checked before anything
is called.

Importing a module runs its code (``venv.__main__`` builds a virtualenv, ``this`` prints), so the module a
``_target_`` names is checked against an allow-list before it is imported: torch's optimizers and schedulers, the
optional optimizer packages and this package. Code (:func:`allow_target_modules`) and the command line of the apps
(``allowed_target_modules=[mypkg]``) can extend the list; a checkpoint cannot.

Examples:
    >>> import torch
    >>> import_class("torch.optim.SGD", torch.optim.Optimizer, "optimizer._target_").__name__
    'SGD'
"""

from __future__ import annotations

import importlib
from typing import TypeVar

from lightning_optim.errors import config_error

__all__ = ["DEFAULT_TARGET_MODULES", "allow_target_modules", "allowed_target_modules", "import_class"]

T = TypeVar("T")

DEFAULT_TARGET_MODULES = ("torch.optim", "schedulefree", "pytorch_optimizer", "lightning_optim")
"""The modules (with their submodules) a ``_target_`` may name without :func:`allow_target_modules`."""

_NEVER_IMPORTED = frozenset({"this", "antigravity"})
"""Modules that act when imported (print, open a browser), refused under any allowed prefix, as dunder modules
(``__main__``) are."""

_allowed: list[str] = list(DEFAULT_TARGET_MODULES)

HOW_TO_ALLOW = (
    "lightning_optim.allow_target_modules({module!r}) in code, or allowed_target_modules=[{module}] on the command "
    "line of the lightning-optim apps"
)


def allow_target_modules(*modules: str) -> None:
    """Let a ``_target_`` name classes in ``modules`` and their submodules, for the rest of the process.

    Args:
        modules: Dotted module names, e.g. ``"mypkg.optim"`` (``mypkg.optim.Lamb`` and ``mypkg.optim.extra.Lamb``
            become allowed, ``mypkg.optimx`` does not).

    Raises:
        ValueError: for a name that is not a dotted path of identifiers, or one that names a ``__main__`` (any
            dunder) module, ``this`` or ``antigravity``, which act when they are imported.

    Examples:
        >>> allow_target_modules("my_optimizers")
        >>> "my_optimizers" in allowed_target_modules()
        True
    """
    for module in modules:
        refused = _refused_component(module)
        if not isinstance(module, str) or not _is_dotted_path(module) or refused is not None:
            raise ValueError(
                f"allow_target_modules({module!r}) is not valid. Expected a dotted module name such as 'mypkg.optim'"
                f"{_never_imported_note(refused)}."
            )
        if module not in _allowed:
            _allowed.append(module)


def allowed_target_modules() -> tuple[str, ...]:
    """The modules a ``_target_`` may name now: :data:`DEFAULT_TARGET_MODULES` and those allowed since.

    Examples:
        >>> allowed_target_modules()[:2]
        ('torch.optim', 'schedulefree')
    """
    return tuple(_allowed)


def import_class(path: str, base: type[T], key: str, example: str = "torch.optim.AdamW") -> type[T]:
    """Import the class at dotted ``path`` from an allowed module and check it subclasses ``base``, calling nothing.

    Config from a command line or a checkpoint is untrusted: the module is imported only if it is allowed
    (:func:`allowed_target_modules`), and the object is refused unless it is a class deriving from ``base``.

    Raises:
        OptimConfigError: naming ``key``, the path, and (for a module not allowed, which is not imported) how to
            allow it.

    Examples:
        >>> import torch
        >>> import_class("torch.optim.AdamW", torch.optim.Optimizer, "optimizer._target_").__name__
        'AdamW'
        >>> import_class("venv.__main__.EnvBuilder", torch.optim.Optimizer, "optimizer._target_")
        ... # doctest: +ELLIPSIS, +NORMALIZE_WHITESPACE
        Traceback (most recent call last):
        ...
        lightning_optim.errors.OptimConfigError: optim_config.optimizer._target_ = 'venv.__main__.EnvBuilder' is not
        valid. Expected a dotted path to a torch.optim.optimizer.Optimizer subclass, e.g. 'torch.optim.AdamW'; module
        'venv.__main__' was not imported: ... never imported from a config ...
    """
    module_name, _, attribute = str(path).rpartition(".")
    expected = f"a dotted path to a {base.__module__}.{base.__qualname__} subclass, e.g. {example!r}"
    if not module_name or not _is_dotted_path(str(path)):
        raise config_error(key, path, expected)
    refusal = _refusal(module_name)
    if refusal is not None:
        raise config_error(key, path, f"{expected}; module {module_name!r} was not imported: {refusal}")
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise config_error(key, path, f"{expected} ({error})") from None
    if not (isinstance(found, type) and issubclass(found, base)):
        raise config_error(key, path, f"{expected}; it names {type(found).__name__} {found!r}")
    return found


def _refusal(module: str) -> str | None:
    """Why ``module`` may not be imported for a ``_target_``, or None when it may."""
    refused = _refused_component(module)
    if refused is not None:
        return f"{_never_imported_note(refused)[2:]}, whatever the allow-list holds"
    if any(module == allowed or module.startswith(f"{allowed}.") for allowed in _allowed):
        return None
    return (
        f"a _target_ may only name classes in {', '.join(_allowed)} (and their submodules), because importing a module "
        f"runs its code. If you trust {module!r}, allow it with {HOW_TO_ALLOW.format(module=module)}"
    )


def _refused_component(module: object) -> str | None:
    if not isinstance(module, str):
        return None
    return next(
        (part for part in module.split(".") if part.startswith("__") or part in _NEVER_IMPORTED),
        None,
    )


def _never_imported_note(component: str | None) -> str:
    if component is None:
        return ""
    return f"; {component!r} is never imported from a config (importing it runs code)"


def _is_dotted_path(path: str) -> bool:
    return all(part.isidentifier() for part in path.split("."))
