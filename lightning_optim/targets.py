"""``_target_`` in a config: a dotted path to a class, imported and checked before anything is called.

Examples:
    >>> import torch
    >>> import_class("torch.optim.SGD", torch.optim.Optimizer, "optimizer._target_").__name__
    'SGD'
"""

from __future__ import annotations

import importlib
from typing import TypeVar

from lightning_optim.errors import config_error

__all__ = ["import_class"]

T = TypeVar("T")


def import_class(path: str, base: type[T], key: str, example: str = "torch.optim.AdamW") -> type[T]:
    """Import the class at dotted ``path`` and check it subclasses ``base`` without calling anything.

    Config from a command line is untrusted: the object is refused unless it is a class deriving from ``base``.

    Examples:
        >>> import torch
        >>> import_class("torch.optim.AdamW", torch.optim.Optimizer, "optimizer._target_").__name__
        'AdamW'
    """
    module_name, _, attribute = str(path).rpartition(".")
    expected = f"a dotted path to a {base.__module__}.{base.__qualname__} subclass, e.g. {example!r}"
    if not module_name:
        raise config_error(key, path, expected)
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise config_error(key, path, f"{expected} ({error})") from None
    if not (isinstance(found, type) and issubclass(found, base)):
        raise config_error(key, path, f"{expected}; it names {type(found).__name__} {found!r}")
    return found
