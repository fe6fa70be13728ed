"""Named parameter groups from regex rules; first match wins, the rest form the group ``default``.

Examples:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    >>> rules = [{"name": "no_decay", "params": r"(\\.bias$|^1\\.)", "weight_decay": 0.0}]
    >>> groups = group_parameters(model.named_parameters(), rules, {"lr": 0.1, "weight_decay": 0.01})
    >>> [(g["name"], len(g["params"]), g.get("weight_decay")) for g in groups]
    [('no_decay', 3, 0.0), ('default', 1, None)]
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from lightning_optim.errors import OptimConfigError, config_error
from lightning_optim.names import plain_name

__all__ = ["RULE_KEYS", "UnmatchedRuleWarning", "compile_rules", "group_parameters"]

DEFAULT_GROUP = "default"
RULE_KEYS = ("name", "params", "lr_scale")
"""The keys of a rule that are not optimizer options."""


class UnmatchedRuleWarning(UserWarning):
    """A parameter-group rule matched no trainable parameter."""


def compile_rules(rules: Sequence[Mapping[str, Any]]) -> list[re.Pattern[str]]:
    """Compile each rule's ``params`` regex, naming the rule whose regex or name is bad.

    Examples:
        >>> compile_rules([{"name": "a", "params": "bias"}])[0].pattern
        'bias'
    """
    patterns = []
    names = set()
    for index, rule in enumerate(rules):
        name = rule.get("name")
        if not isinstance(name, str) or not name:
            raise config_error(f"param_groups[{index}].name", name, "a non-empty group name such as 'no_decay'")
        if name in names or name == DEFAULT_GROUP:
            raise config_error(f"param_groups[{index}].name", name, f"a unique name other than {DEFAULT_GROUP!r}")
        names.add(name)
        try:
            patterns.append(re.compile(rule["params"]))
        except KeyError:
            raise OptimConfigError(
                f"optim_config.param_groups[{index}] ({name!r}) needs 'params': a regex on parameter names."
            ) from None
        except (re.error, TypeError) as error:
            raise config_error(
                f"param_groups[{index}].params", rule["params"], f"a valid Python regex ({error})"
            ) from None
        scale = rule.get("lr_scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale < 0:
            raise config_error(f"param_groups[{index}].lr_scale", scale, "a number >= 0 multiplying the base lr")
    return patterns


def group_parameters(
    named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
    rules: Sequence[Mapping[str, Any]],
    defaults: Mapping[str, Any],
    patterns: Sequence[re.Pattern[str]] | None = None,
) -> list[dict[str, Any]]:
    """Split trainable parameters into named groups for ``torch.optim``.

    Rules match the names as :func:`~lightning_optim.names.plain_name` gives them: without the levels that
    ``torch.compile`` (``_orig_mod.``), ``checkpoint_wrapper`` and FSDP1 insert, so one rule fits the wrapped and the
    plain model.
    Each rule's options (any optimizer argument) go into its group; ``lr_scale`` multiplies the base ``lr``
    from ``defaults`` (which must then hold it: ``OptimizerSpec.lr`` gives the class's default). Every group carries
    ``name``, which Lightning's LR logging shows. Parameter names are
    not stored in the groups: torch refuses to mix named and unnamed groups, and Lightning's finetuning
    callbacks add unnamed ones.
    A rule that matches nothing is reported with :class:`UnmatchedRuleWarning`. ``patterns`` are the rules'
    regexes from :func:`compile_rules`, where the caller has checked the rules already.
    """
    if patterns is None:
        patterns = compile_rules(rules)
    members: list[list[torch.nn.Parameter]] = [[] for _ in range(len(rules) + 1)]
    for name, parameter in named_parameters:
        if not parameter.requires_grad:
            continue
        name = plain_name(name)
        index = next((i for i, pattern in enumerate(patterns) if pattern.search(name)), len(rules))
        members[index].append(parameter)
    groups = []
    for index, rule in enumerate(rules):
        if not members[index]:
            warnings.warn(
                f"optim_config.param_groups[{index}] ({rule['name']!r}, params={rule['params']!r}) matched no "
                "trainable parameter; check the regex against model.named_parameters() (names are matched without "
                "the levels torch.compile, checkpoint_wrapper and FSDP1 insert).",
                UnmatchedRuleWarning,
                stacklevel=2,
            )
            continue
        options = {key: value for key, value in rule.items() if key not in RULE_KEYS[1:]}
        if "lr_scale" in rule:
            options["lr"] = options.get("lr", defaults["lr"]) * rule["lr_scale"]
        groups.append({"params": members[index], **options})
    if members[-1]:
        groups.append({"params": members[-1], "name": DEFAULT_GROUP})
    return groups
