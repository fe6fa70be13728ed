"""Parameter and module names as the model's code spells them, with the levels that wrappers insert left out.

``torch.compile(module)`` returns an ``OptimizedModule`` that holds the original module as its submodule
``_orig_mod``, so a model that compiles a submodule (``self.net = torch.compile(self.net)``) names its parameters
``net._orig_mod.0.weight`` where the eager model says ``net.0.weight``. Activation checkpointing's
``checkpoint_wrapper`` inserts ``_checkpoint_wrapped_module`` the same way, FSDP1's ``FullyShardedDataParallel``
``_fsdp_wrapped_module`` (FSDP2's ``fully_shard`` and tensor parallelism's ``parallelize_module`` keep the names).
Every name the package shows (metric keys) or matches (``param_groups`` regexes) is taken through this module, so
wrapped and plain runs share tags and rules.

The naming protocol of several optimizers lives here too (:class:`NamesOptimizers`, :func:`optimizer_labels`): the
monitors name each optimizer's metric keys by it without importing any config builder.

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
from typing import Any, Protocol, runtime_checkable

from torch import nn

__all__ = [
    "COMPILED_LEVEL",
    "WRAPPER_LEVELS",
    "NamesOptimizers",
    "named_modules",
    "named_parameters",
    "optimizer_labels",
    "plain_name",
]

COMPILED_LEVEL = "_orig_mod"
"""The attribute under which ``torch.compile``'s ``OptimizedModule`` keeps the module it compiled."""

WRAPPER_LEVELS = frozenset({COMPILED_LEVEL, "_checkpoint_wrapped_module", "_fsdp_wrapped_module"})
"""The attributes under which wrappers keep the module they wrap: ``torch.compile``, ``checkpoint_wrapper``, FSDP1."""


def plain_name(name: str) -> str:
    """A qualified name without the levels that ``torch.compile``, ``checkpoint_wrapper`` and FSDP1 insert.

    Examples:
        >>> plain_name("net._orig_mod.0.weight"), plain_name("_orig_mod.head.bias"), plain_name("head.bias")
        ('net.0.weight', 'head.bias', 'head.bias')
        >>> plain_name("_fsdp_wrapped_module.blocks.0._checkpoint_wrapped_module.attn.weight")
        'blocks.0.attn.weight'
    """
    if not any(level in name for level in WRAPPER_LEVELS):
        return name
    return ".".join(part for part in name.split(".") if part not in WRAPPER_LEVELS)


def named_parameters(module: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """``module.named_parameters()``, each name through :func:`plain_name` (a generator, like torch's)."""
    for name, parameter in module.named_parameters():
        yield plain_name(name), parameter


def named_modules(module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``module.named_modules()``, each name through :func:`plain_name`.

    A wrapped submodule appears twice under one name: the wrapper and the module it wraps.
    """
    for name, submodule in module.named_modules():
        yield plain_name(name), submodule


@runtime_checkable
class NamesOptimizers(Protocol):
    """A LightningModule whose optimizers have names (``OptimMixin`` with ``optim_config.optimizers``).

    ``optimizer_names`` is parallel to ``trainer.optimizers``, or empty when the optimizers have no names. The
    monitors check ``isinstance(pl_module, NamesOptimizers)`` instead of importing the mixin.

    Examples:
        >>> class Model:
        ...     optimizer_names = ("generator", "discriminator")
        >>> isinstance(Model(), NamesOptimizers), isinstance(object(), NamesOptimizers)
        (True, False)
    """

    @property
    def optimizer_names(self) -> tuple[str, ...]: ...


def optimizer_labels(pl_module: Any, count: int) -> list[str]:
    """The name of each of ``count`` optimizers in metric keys: the module's names, else ``optimizer_<index>``.

    ``index`` is the position in ``self.optimizers()``, stable for a given ``configure_optimizers``.

    Examples:
        >>> optimizer_labels(object(), 2)
        ['optimizer_0', 'optimizer_1']
    """
    # The attribute NamesOptimizers asks for, read directly: a runtime-checkable protocol's isinstance costs ~10 us.
    names = getattr(pl_module, "optimizer_names", ())
    return list(names) if len(names) == count else [f"optimizer_{index}" for index in range(count)]
