"""Optimizer names to ``torch.optim`` classes, and building an optimizer from ``optim_config``.

Example:
    >>> import torch
    >>> model = torch.nn.Linear(2, 1)
    >>> optimizer = build_optimizer(model, {"name": "SGD", "lr": 0.1, "momentum": 0.9})
    >>> type(optimizer).__name__, optimizer.param_groups[0]["name"], optimizer.param_groups[0]["momentum"]
    ('SGD', 'default', 0.9)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lightning_optim.errors import OptimConfigError, config_error
from lightning_optim.param_groups import RULE_KEYS, group_parameters
from lightning_optim.targets import import_class
from lightning_optim.value_types import conform_section, constructor_types

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "radam": torch.optim.RAdam,
    "nadam": torch.optim.NAdam,
    "adamax": torch.optim.Adamax,
    "adagrad": torch.optim.Adagrad,
    "adadelta": torch.optim.Adadelta,
    "rmsprop": torch.optim.RMSprop,
    "asgd": torch.optim.ASGD,
    "rprop": torch.optim.Rprop,
    "lbfgs": torch.optim.LBFGS,
    "sparse_adam": torch.optim.SparseAdam,
    **{
        name: getattr(torch.optim, cls)
        for name, cls in (("adafactor", "Adafactor"), ("muon", "Muon"))
        if hasattr(torch.optim, cls)
    },
}
"""Every ``torch.optim`` optimizer by its config name (Adafactor and Muon where the installed torch has them)."""

_ALIASES = {"sparseadam": "sparse_adam"}
_SPEC_KEYS = ("name", "_target_")
_SPARSE_MODULES = (nn.Embedding, nn.EmbeddingBag)


def optimizer_class(spec: Mapping[str, Any]) -> type[torch.optim.Optimizer]:
    """Resolve ``optimizer.name`` (case-insensitive) or ``optimizer._target_`` to an Optimizer class.

    Example:
        >>> optimizer_class({"name": "AdamW"}).__name__
        'AdamW'
    """
    if "_target_" in spec:
        return import_class(spec["_target_"], torch.optim.Optimizer, "optimizer._target_")
    name = spec.get("name")
    if name is None:
        raise OptimConfigError(
            "optim_config.optimizer needs 'name' (one of: " + ", ".join(OPTIMIZERS) + ") or '_target_'."
        )
    key = str(name).lower()
    key = _ALIASES.get(key, key)
    if key not in OPTIMIZERS:
        raise config_error("optimizer.name", name, "one of: " + ", ".join(OPTIMIZERS), OPTIMIZERS)
    return OPTIMIZERS[key]


def check_options(cls: type[torch.optim.Optimizer], options: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Refuse an option ``cls`` does not accept, a value its signature does not take, and a negative learning rate.

    Returns:
        ``options`` as the constructor takes them (an integral float for an integer argument as an int).

    Example:
        >>> check_options(torch.optim.LBFGS, {"lr": 1, "max_iter": 1e2}, "optimizer")
        {'lr': 1, 'max_iter': 100}
        >>> check_options(torch.optim.SGD, {"nesterov": "yes"}, "optimizer")
        Traceback (most recent call last):
        ...
        lightning_optim.errors.OptimConfigError: optim_config.optimizer.nesterov = 'yes' is not valid. Expected \
true or false, e.g. false.
    """
    types = constructor_types(cls)
    for key, value in options.items():
        if key not in types:
            raise config_error(
                f"{where}.{key}",
                value,
                f"an argument of {cls.__name__}: {', '.join(types)}",
                types,
                unknown_key=True,
            )
    options = conform_section(options, types, where)
    lr = options.get("lr")
    if isinstance(lr, (int, float)) and lr < 0:
        raise config_error(f"{where}.lr", lr, "a learning rate >= 0, e.g. 1e-3")
    return options


def check_rule_options(cls: type[torch.optim.Optimizer], rules: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Check the optimizer options each parameter-group rule sets, as :func:`check_options` does.

    Returns:
        The rules with their options as the constructor takes them.
    """
    return [
        {**rule, **check_options(cls, {k: v for k, v in rule.items() if k not in RULE_KEYS}, f"param_groups[{index}]")}
        for index, rule in enumerate(rules)
    ]


def optimizer_options(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor keyword arguments in an ``optimizer`` section (everything but ``name``/``_target_``)."""
    return {key: value for key, value in spec.items() if key not in _SPEC_KEYS}


def sparse_parameter_names(module: nn.Module) -> set[str]:
    """Qualified names of parameters that receive sparse gradients (``Embedding(sparse=True)`` and friends)."""
    return {
        f"{prefix}.{name}" if prefix else name
        for prefix, sub in module.named_modules()
        if isinstance(sub, _SPARSE_MODULES) and sub.sparse
        for name, _ in sub.named_parameters(recurse=False)
    }


def _check_special_optimizers(
    cls: type[torch.optim.Optimizer], module: nn.Module, groups: Sequence[Mapping[str, Any]]
) -> None:
    if issubclass(cls, torch.optim.LBFGS) and len(groups) > 1:
        names = [group["name"] for group in groups]
        raise config_error(
            "param_groups", names, "no parameter-group rules with LBFGS: it supports a single parameter group"
        )
    if issubclass(cls, torch.optim.SparseAdam):
        sparse = sparse_parameter_names(module)
        dense = [name for name, p in module.named_parameters() if p.requires_grad and name not in sparse]
        if dense:
            raise config_error(
                "optimizer.name",
                "sparse_adam",
                f"an optimizer for dense gradients (e.g. 'adam'): parameters {dense[:5]} get dense gradients, "
                "and SparseAdam only takes those of Embedding(sparse=True)/EmbeddingBag(sparse=True)",
            )


def build_optimizer(
    module: nn.Module,
    spec: Mapping[str, Any],
    param_group_rules: Sequence[Mapping[str, Any]] = (),
) -> torch.optim.Optimizer:
    """Build the optimizer named by ``spec`` over ``module``'s trainable parameters, grouped by the rules.

    Frozen parameters (``requires_grad=False``) stay out, so a finetuning callback can add them later.

    Raises:
        OptimConfigError: unknown optimizer or option, a value of the wrong type, negative lr, bad rule, LBFGS
            with several groups, SparseAdam on dense gradients.
    """
    cls = optimizer_class(spec)
    options = check_options(cls, optimizer_options(spec), "optimizer")
    param_group_rules = check_rule_options(cls, param_group_rules)
    groups = group_parameters(module.named_parameters(), param_group_rules, options)
    _check_special_optimizers(cls, module, groups)
    if not groups:
        raise OptimConfigError("The model has no trainable parameters (all have requires_grad=False).")
    return cls(groups, **options)
