"""Building an optimizer from the ``optimizer`` and ``param_groups`` sections of ``optim_config``.

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

from lightning_optim.optimizer_specs import (
    check_options,
    check_rule_options,
    model_groups,
    optimizer_info,
    optimizer_options,
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
    info = optimizer_info(spec)
    options = check_options(info.cls, optimizer_options(spec), "optimizer")
    param_group_rules = check_rule_options(info.cls, param_group_rules)
    return info.cls(model_groups(module, info, options, param_group_rules), **options)
