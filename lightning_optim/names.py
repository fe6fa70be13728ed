"""Parameter and module names as the model's code spells them, with ``torch.compile``'s ``_orig_mod`` level left out.

``torch.compile(module)`` returns an ``OptimizedModule`` that holds the original module as its submodule
``_orig_mod``, so a model that compiles a submodule (``self.net = torch.compile(self.net)``) names its parameters
``net._orig_mod.0.weight`` where the eager model says ``net.0.weight``. Every name the package shows (metric keys) or
matches (``param_groups`` regexes) is taken through this module, so compiled and eager runs share tags and rules.

Examples:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.compile(torch.nn.Linear(2, 1)))
    >>> [name for name, _ in model.named_parameters()]
    ['0._orig_mod.weight', '0._orig_mod.bias']
    >>> [name for name, _ in named_parameters(model)]
    ['0.weight', '0.bias']
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

__all__ = ["COMPILED_LEVEL", "named_modules", "named_parameters", "plain_name"]

COMPILED_LEVEL = "_orig_mod"
"""The attribute under which ``torch.compile``'s ``OptimizedModule`` keeps the module it compiled."""


def plain_name(name: str) -> str:
    """A qualified name without the ``_orig_mod`` levels that ``torch.compile`` inserts.

    Examples:
        >>> plain_name("net._orig_mod.0.weight"), plain_name("_orig_mod.head.bias"), plain_name("head.bias")
        ('net.0.weight', 'head.bias', 'head.bias')
    """
    if COMPILED_LEVEL not in name:
        return name
    return ".".join(part for part in name.split(".") if part != COMPILED_LEVEL)


def named_parameters(module: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """``module.named_parameters()``, each name through :func:`plain_name` (a generator, like torch's)."""
    for name, parameter in module.named_parameters():
        yield plain_name(name), parameter


def named_modules(module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``module.named_modules()``, each name through :func:`plain_name`.

    A compiled submodule appears twice under one name: the ``OptimizedModule`` and the module it compiled.
    """
    for name, submodule in module.named_modules():
        yield plain_name(name), submodule
