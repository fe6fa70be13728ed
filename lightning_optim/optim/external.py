"""Optimizers beyond torch by name: pytorch-optimizer's own lower-case names, its package imported only when named.

torch's names come first and stay torch's (``adamw`` is ``torch.optim.AdamW``); every other name in
pytorch-optimizer's registry (``pytorch_optimizer.get_supported_optimizers()``: ``lion``, ``prodigy``, ``soap``,
``adopt``, ...) names its class. A name torch does not have imports ``pytorch_optimizer`` (about 2 s) to look it up;
a torch name never does. Without the package, a well-known name gives the ``pip install`` line.

Examples:
    >>> external_optimizer_class("lion", ["sgd", "adamw"]).__name__
    'Lion'
    >>> external_optimizer_class("lino", ["sgd", "adamw"])
    Traceback (most recent call last):
    ...
    lightning_optim.errors.OptimConfigError: optim_config.optimizer.name = 'lino' is not valid. Did you mean \
'lion'? Expected one of: sgd, adamw; or one of pytorch-optimizer's own names \
(pytorch_optimizer.get_supported_optimizers()).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Collection, Mapping
from typing import Any

from lightning_optim.errors import OptimConfigError, config_error

__all__ = ["INSTALL_LINE", "WELL_KNOWN", "check_required_arguments", "external_optimizer_class"]

PACKAGE = "pytorch_optimizer"
INSTALL_LINE = "pip install 'lightning-optim[pytorch-optimizer]'"
"""What installs the extra that names pytorch-optimizer's optimizers."""

WELL_KNOWN = (
    "lion",
    "prodigy",
    "soap",
    "adopt",
    "sophiah",
    "ranger",
    "ranger21",
    "lamb",
    "lars",
    "adan",
    "adabelief",
    "madgrad",
    "came",
    "kron",
    "shampoo",
    "ademamix",
    "dadaptadam",
    "galore",
    "mars",
    "tiger",
)
"""pytorch-optimizer names recognised without the package, so that they get the ``pip install`` line."""


def external_optimizer_class(name: str, torch_names: Collection[str], where: str = "optimizer") -> type[Any]:
    """The pytorch-optimizer class ``name`` (case-insensitive) stands for, where torch has no optimizer of that name.

    ``where`` is the optimizer section's key path, named in errors.

    Raises:
        OptimConfigError: an unknown name (with the closest among torch's and pytorch-optimizer's names); a
            pytorch-optimizer name without the package (with :data:`INSTALL_LINE`); an optimizer the mixin cannot
            build from parameter groups or cannot run correctly (it takes the model, or has train/eval modes).
    """
    key = str(name).lower()
    try:
        package = importlib.import_module(PACKAGE)
    except ImportError:
        if key in WELL_KNOWN:
            raise OptimConfigError(
                f"optim_config.{where}.name = {name!r} is pytorch-optimizer's, which is not installed: {INSTALL_LINE}"
            ) from None
        raise config_error(
            f"{where}.name",
            name,
            f"one of: {', '.join(torch_names)}; or, with pytorch-optimizer installed ({INSTALL_LINE}), "
            f"one of its own names, e.g. {', '.join(WELL_KNOWN[:4])}",
            [*torch_names, *WELL_KNOWN],
        ) from None
    names = [n for n in package.get_supported_optimizers() if n not in torch_names]
    if key not in names:
        raise config_error(
            f"{where}.name",
            name,
            f"one of: {', '.join(torch_names)}; or one of pytorch-optimizer's own names "
            f"({PACKAGE}.get_supported_optimizers())",
            [*torch_names, *names],
        )
    cls: type[Any] = package.load_optimizer(key)
    _refuse_unsupported(key, cls, where)
    return cls


def _refuse_unsupported(name: str, cls: type[Any], where: str) -> None:
    first = next(iter(list(inspect.signature(cls.__init__).parameters)[1:2]), None)
    if first != "params":
        raise config_error(
            f"{where}.name",
            name,
            f"an optimizer built from parameters: {cls.__name__} takes {first!r} first; "
            "build it in your own configure_optimizers",
        )
    if callable(getattr(cls, "train", None)) and callable(getattr(cls, "eval", None)):
        raise config_error(
            f"{where}.name",
            name,
            f"an optimizer without train/eval modes: {cls.__name__} needs optimizer.eval() before every evaluation "
            "and checkpoint, which only the schedule-free optimizers get (adamw_schedulefree, sgd_schedulefree, "
            "radam_schedulefree)",
        )


def check_required_arguments(cls: type[Any], options: Mapping[str, Any], where: str) -> None:
    """Refuse a section that leaves out a constructor argument without a default (Ranger21's ``num_iterations``).

    Examples:
        >>> class Needs:
        ...     def __init__(self, params, num_iterations, lr=1e-3): ...
        >>> check_required_arguments(Needs, {"lr": 0.1}, "optimizer")
        Traceback (most recent call last):
        ...
        lightning_optim.errors.OptimConfigError: optim_config.optimizer.num_iterations is required by Needs, \
which has no default for it: set it, e.g. optimizer.num_iterations=...
    """
    for parameter in list(inspect.signature(cls.__init__).parameters.values())[2:]:
        kinds = (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
        if parameter.kind in kinds and parameter.default is parameter.empty and parameter.name not in options:
            raise OptimConfigError(
                f"optim_config.{where}.{parameter.name} is required by {cls.__name__}, which has no default for it: "
                f"set it, e.g. {where}.{parameter.name}=..."
            )
