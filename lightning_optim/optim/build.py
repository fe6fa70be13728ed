"""Building an optimizer from the ``optimizer`` and ``param_groups`` sections of ``optim_config``.

Examples:
    >>> import torch
    >>> model = torch.nn.Linear(2, 1)
    >>> optimizer = build_optimizer(model, {"name": "SGD", "lr": 0.1, "momentum": 0.9})
    >>> type(optimizer).__name__, optimizer.param_groups[0]["name"], optimizer.param_groups[0]["momentum"]
    ('SGD', 'default', 0.9)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lightning_optim.optim.fused_sgd import zero_momentum_before_first_step
from lightning_optim.optim.registry import OptimizerSpec, resolve_optimizer

__all__ = ["build_optimizer"]


def build_optimizer(
    module: nn.Module,
    spec: OptimizerSpec | Mapping[str, Any],
    param_group_rules: Sequence[Mapping[str, Any]] = (),
    named_parameters: Iterable[tuple[str, nn.Parameter]] | None = None,
    layer_decay: Mapping[str, Any] | None = None,
) -> torch.optim.Optimizer:
    """Build the optimizer ``spec`` describes over ``module``'s trainable parameters, grouped by the rules.

    ``spec`` is an ``optimizer`` section with its ``param_group_rules`` and ``layer_decay`` section, checked here, or
    an :class:`OptimizerSpec` (rules and layer decay included) that validation already checked. Frozen parameters
    (``requires_grad=False``) stay out, so a finetuning callback can add them later. ``named_parameters`` narrows the
    parameters to a selection of ``module``'s.
    A fused SGD's momentum starts from zero buffers, so a skipped first step cannot leave them uninitialised
    (:mod:`lightning_optim.optim.fused_sgd`).

    Raises:
        OptimConfigError: unknown optimizer or option, a value of the wrong type, negative lr, bad rule, LBFGS
            with several groups, SparseAdam on dense gradients.
    """
    if not isinstance(spec, OptimizerSpec):
        spec = resolve_optimizer(spec, param_group_rules, layer_decay)
    optimizer = spec.info.cls(spec.groups(module, named_parameters), **spec.arguments())
    zero_momentum_before_first_step(optimizer)
    return optimizer
