"""Named parameter groups from rules (by name, shape and owning module); first match wins, the rest form ``default``.

A rule selects with any of ``params`` (a regex searched in the parameter's name), ``ndim`` (a number of dimensions,
or a list of them) and ``module`` (a module class name, or a list of them: parameters owned directly by a module of
that class or a subclass); several keys must all hold. ``layer_decay`` (:class:`LayerDecay`) splits every group by
depth and scales its lr, the BEiT / timm layer-wise lr decay.

Examples:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    >>> rules = [{"name": "no_decay", "params": r"(\\.bias$|^1\\.)", "weight_decay": 0.0}]
    >>> groups = group_parameters(model.named_parameters(), rules, {"lr": 0.1, "weight_decay": 0.01})
    >>> [(g["name"], len(g["params"]), g.get("weight_decay")) for g in groups]
    [('no_decay', 3, 0.0), ('default', 1, None)]
    >>> rules = [{"name": "norm_weights", "module": "BatchNorm1d", "params": "weight$"}, {"name": "vectors", "ndim": 1}]
    >>> [(g["name"], len(g["params"])) for g in group_parameters(model.named_parameters(), rules, {}, module=model)]
    [('norm_weights', 1), ('vectors', 2), ('default', 1)]
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lightning_optim.errors import OptimConfigError, config_error, did_you_mean, key_path
from lightning_optim.names import named_modules, plain_name

__all__ = [
    "LAYER_DECAY_KEY",
    "RULE_KEYS",
    "SELECTOR_KEYS",
    "LayerDecay",
    "Placement",
    "Selector",
    "UnmatchedRuleWarning",
    "compile_rules",
    "group_name",
    "group_parameters",
    "place_parameters",
    "resolve_layer_decay",
    "warn_unmatched",
]

DEFAULT_GROUP = "default"
SELECTOR_KEYS = ("params", "ndim", "module")
"""The keys of a rule that select its parameters; a rule needs at least one, and all it has must hold."""
RULE_KEYS = ("name", *SELECTOR_KEYS, "lr_scale")
"""The keys of a rule that are not optimizer options."""
LAYER_DECAY_KEY = "layer_decay"
"""The ``optim_config`` key of layer-wise lr decay (beside ``param_groups``)."""


class UnmatchedRuleWarning(UserWarning):
    """A parameter-group rule matched no trainable parameter."""


@dataclass(frozen=True)
class Selector:
    """What one rule selects; each key it has must hold (``None``: the rule does not have it).

    Attributes:
        params: the compiled ``params`` regex, searched in the parameter's name.
        ndim: the numbers of dimensions taken.
        module: class names; a parameter is taken when a module owning it directly is of one of these classes or of
            a subclass (a class's own name anywhere in its MRO).

    Examples:
        >>> selector = compile_rules([{"name": "norms", "module": "LayerNorm", "ndim": 1}])[0]
        >>> layer_norm = torch.nn.LayerNorm(3)
        >>> selector.matches("weight", layer_norm.weight, [torch.nn.LayerNorm])
        True
    """

    params: re.Pattern[str] | None = None
    ndim: frozenset[int] | None = None
    module: tuple[str, ...] | None = None

    def matches(self, name: str, parameter: torch.Tensor, owners: Sequence[type]) -> bool:
        """Whether the parameter ``name`` (owned directly by modules of the classes ``owners``) is selected."""
        if self.params is not None and not self.params.search(name):
            return False
        if self.ndim is not None and parameter.ndim not in self.ndim:
            return False
        if self.module is None:
            return True
        return any(cls.__name__ in self.module for owner in owners for cls in owner.__mro__)


def compile_rules(rules: Sequence[Mapping[str, Any]], where: str = "") -> list[Selector]:
    """Check each rule's name and selector keys, naming the rule and key that is bad.

    ``where`` is the key path of the section holding ``param_groups`` (:func:`~lightning_optim.errors.key_path`).

    Examples:
        >>> compile_rules([{"name": "a", "params": "bias"}])[0].params.pattern
        'bias'
        >>> compile_rules([{"name": "a", "ndim": [0, 1]}])[0].ndim == {0, 1}
        True
    """
    selectors = []
    names = set()
    for index, rule in enumerate(rules):
        key = key_path(where, f"param_groups[{index}]")
        name = rule.get("name")
        if not isinstance(name, str) or not name:
            raise config_error(f"{key}.name", name, "a non-empty group name such as 'no_decay'")
        if name in names or name == DEFAULT_GROUP:
            raise config_error(f"{key}.name", name, f"a unique name other than {DEFAULT_GROUP!r}")
        names.add(name)
        if not any(selector in rule for selector in SELECTOR_KEYS):
            raise OptimConfigError(
                f"optim_config.{key} ({name!r}) needs 'params' (a regex on parameter names), 'ndim' "
                "(a number of dimensions) or 'module' (a module class name), or several of them."
            )
        selectors.append(
            Selector(
                _compile_params(rule["params"], key) if "params" in rule else None,
                _check_ndim(rule["ndim"], key) if "ndim" in rule else None,
                _check_module(rule["module"], key) if "module" in rule else None,
            )
        )
        scale = rule.get("lr_scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale < 0:
            raise config_error(f"{key}.lr_scale", scale, "a number >= 0 multiplying the base lr")
    return selectors


def _compile_params(value: Any, key: str) -> re.Pattern[str]:
    if not isinstance(value, str):
        # A bytes regex compiles, but searching the parameters' names with it fails only when the optimizer is built.
        raise config_error(f"{key}.params", value, r"a regex string matched against parameter names, e.g. 'bias$'")
    try:
        return re.compile(value)
    except re.error as error:
        raise config_error(f"{key}.params", value, f"a valid Python regex ({error})") from None


def _check_ndim(value: Any, key: str) -> frozenset[int]:
    values = value if isinstance(value, list) else [value]
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
        raise config_error(f"{key}.ndim", value, "a number of dimensions >= 0 (e.g. 1) or a list of them (e.g. [0, 1])")
    return frozenset(values)


def _check_module(value: Any, key: str) -> tuple[str, ...]:
    values = value if isinstance(value, list) else [value]
    if not values or any(not isinstance(v, str) or not v.isidentifier() for v in values):
        raise config_error(
            f"{key}.module",
            value,
            "a module class name (e.g. LayerNorm, Embedding, or a class of the model's own) or a list of them",
        )
    return tuple(values)


@dataclass(frozen=True)
class LayerDecay:
    """Layer-wise lr decay (BEiT, timm's ``param_groups_layer_decay``): deeper blocks train at larger lrs.

    ``layers`` is a regex whose one group captures a block's index from a parameter's name. With ``N`` blocks (the
    largest index + 1), a parameter has depth ``i + 1`` in block ``i``; depth 0 before the first block's first
    parameter in ``named_parameters()`` order (embeddings); depth ``N + 1`` after it and in no block (the head, a
    final norm). Its lr is scaled by ``rate ** (N + 1 - depth)``: ``rate ** (N - i)`` in block ``i``, ``rate ** (N +
    1)`` for the embeddings, 1 for the head.

    Attributes:
        rate: the factor per level, in (0, 1].
        layers: the compiled ``layers`` regex.

    Examples:
        >>> decay = resolve_layer_decay({"rate": 0.5, "layers": r"^blocks\\.(\\d+)\\."})
        >>> model = torch.nn.ModuleDict({"embed": torch.nn.Embedding(4, 2),
        ...     "blocks": torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)]),
        ...     "head": torch.nn.Linear(2, 1, bias=False)})
        >>> levels = decay.levels(model.named_parameters())
        >>> [(name, *levels[id(p)]) for name, p in model.named_parameters()]
        [('embed.weight', 0, 0.125), ('blocks.0.weight', 1, 0.25), ('blocks.0.bias', 1, 0.25), \
('blocks.1.weight', 2, 0.5), ('blocks.1.bias', 2, 0.5), ('head.weight', 3, 1.0)]
    """

    rate: float
    layers: re.Pattern[str]

    @property
    def config(self) -> dict[str, Any]:
        """The section as plain values."""
        return {"rate": self.rate, "layers": self.layers.pattern}

    def levels(
        self, named_parameters: Iterable[tuple[str, torch.Tensor]], where: str = ""
    ) -> dict[int, tuple[int, float]]:
        """Each parameter's depth and lr factor by ``id``, over all of the model's parameters (frozen ones too: they
        are part of the model's shape). ``where`` is the key path of the section holding ``layer_decay``.

        Raises:
            OptimConfigError: ``layers`` matches no parameter name, or captures something that is not an integer.
        """
        blocks: dict[int, int | None] = {}
        first = None
        for name, parameter in named_parameters:
            name = plain_name(name)
            match = self.layers.search(name)
            if match is None:
                blocks.setdefault(id(parameter), None)
                continue
            try:
                blocks[id(parameter)] = int(match.group(1))
            except (TypeError, ValueError):
                raise config_error(
                    key_path(where, f"{LAYER_DECAY_KEY}.layers"),
                    self.layers.pattern,
                    f"a regex whose group captures a block's index; in {name!r} it captures {match.group(1)!r}",
                ) from None
            first = len(blocks) - 1 if first is None else first
        if first is None:
            raise config_error(
                key_path(where, f"{LAYER_DECAY_KEY}.layers"),
                self.layers.pattern,
                r"a regex matching the parameters of the model's blocks, e.g. '^blocks\.(\d+)\.' (it matched no name "
                "in model.named_parameters())",
            )
        last = max(index for index in blocks.values() if index is not None) + 1
        depths = {
            key: index + 1 if index is not None else 0 if position < first else last + 1
            for position, (key, index) in enumerate(blocks.items())
        }
        return {key: (depth, float(self.rate ** (last + 1 - depth))) for key, depth in depths.items()}


def resolve_layer_decay(section: Any, where: str = "") -> LayerDecay:
    """Check ``optim_config.layer_decay``: ``{rate: 0.75, layers: <regex with one group capturing the block index>}``.

    ``where`` is the key path of the section holding ``layer_decay``.

    Examples:
        >>> resolve_layer_decay({"rate": 1.5, "layers": "x"})
        Traceback (most recent call last):
        ...
        lightning_optim.errors.OptimConfigError: optim_config.layer_decay.rate = 1.5 is not valid. Expected a number \
in (0, 1], e.g. 0.75 (each block's lr is rate times the next one's).
    """
    where = key_path(where, LAYER_DECAY_KEY)
    if not isinstance(section, Mapping):
        raise config_error(where, section, r"a mapping {rate: 0.75, layers: '^blocks\.(\d+)\.'}")
    for key in section:
        if key not in ("rate", "layers"):
            raise config_error(f"{where}.{key}", section[key], "only rate and layers", ["rate", "layers"], True)
    rate = section.get("rate")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1 or not math.isfinite(rate):
        raise config_error(
            f"{where}.rate",
            rate,
            "a number in (0, 1], e.g. 0.75 (each block's lr is rate times the next one's)",
        )
    layers = section.get("layers")
    if not isinstance(layers, str):
        # A bytes regex compiles, but searching the parameters' names with it fails only when the optimizer is built.
        raise config_error(f"{where}.layers", layers, r"a regex string, e.g. '^blocks\.(\d+)\.'")
    try:
        pattern = re.compile(layers)
    except re.error as error:
        raise config_error(f"{where}.layers", layers, f"a valid Python regex ({error})") from None
    if pattern.groups != 1:
        raise config_error(
            f"{where}.layers",
            layers,
            rf"a regex with exactly one group, capturing the block's index (e.g. '^blocks\.(\d+)\.'); it has "
            f"{pattern.groups}",
        )
    return LayerDecay(float(rate), pattern)


@dataclass(frozen=True)
class Placement:
    """Where one trainable parameter goes: the rule it matched (``len(rules)`` for none), under ``layer_decay`` its
    depth and lr factor."""

    name: str
    parameter: nn.Parameter
    rule: int
    depth: int | None = None
    decay: float = 1.0


def place_parameters(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    selectors: Sequence[Selector],
    module: nn.Module | None = None,
    layer_decay: LayerDecay | None = None,
    rules: Sequence[Mapping[str, Any]] = (),
    where: str = "",
) -> list[Placement]:
    """Each trainable parameter with the first rule whose selector holds, and its depth under ``layer_decay``.

    ``module`` (the whole model) tells which modules own each parameter (``module`` rules) and the model's depth
    (``layer_decay``); ``rules`` name the rule in errors, under ``where``, the key path of the section holding
    ``param_groups`` and ``layer_decay``.

    Raises:
        OptimConfigError: a ``module`` rule names a class that is neither in ``torch.nn`` nor in the model.

    Examples:
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
        >>> selectors = compile_rules([{"name": "norms", "module": "LayerNorm"}])
        >>> [(p.name, p.rule) for p in place_parameters(model.named_parameters(), selectors, model)]
        [('0.weight', 1), ('0.bias', 1), ('1.weight', 0), ('1.bias', 0)]
    """
    owners: dict[int, list[type]] = {}
    if module is not None:
        for _, submodule in named_modules(module):
            for parameter in submodule.parameters(recurse=False):
                owners.setdefault(id(parameter), []).append(type(submodule))
        _check_module_names(module, selectors, rules, where)
    elif any(selector.module is not None for selector in selectors) or layer_decay is not None:
        raise TypeError("place_parameters needs the model (module=) for 'module' rules and layer_decay")
    levels = (
        layer_decay.levels(module.named_parameters(), where) if layer_decay is not None and module is not None else {}
    )
    placements = []
    for name, parameter in named_parameters:
        if not parameter.requires_grad:
            continue
        name = plain_name(name)
        found = owners.get(id(parameter), [])
        index = next((i for i, s in enumerate(selectors) if s.matches(name, parameter, found)), len(selectors))
        placements.append(Placement(name, parameter, index, *levels.get(id(parameter), (None, 1.0))))
    return placements


def _check_module_names(
    module: nn.Module, selectors: Sequence[Selector], rules: Sequence[Mapping[str, Any]], where: str
) -> None:
    known = {cls.__name__ for _, submodule in named_modules(module) for cls in type(submodule).__mro__}
    for index, selector in enumerate(selectors):
        for name in selector.module or ():
            torch_class = getattr(nn, name, None)
            if name in known or (isinstance(torch_class, type) and issubclass(torch_class, nn.Module)):
                continue
            value = rules[index]["module"] if index < len(rules) else name
            raise OptimConfigError(
                f"optim_config.{key_path(where, f'param_groups[{index}]')}.module = {value!r} is not valid."
                f"{did_you_mean(name.lower(), sorted(known - {'Module', 'object'}))} Expected a class in torch.nn or "
                f"among the model's modules; {name!r} is neither."
            )


def group_name(base: str, depth: int | None) -> str:
    """A group's name: ``base``, and its depth under layer-wise decay (``default/layer_3``).

    Examples:
        >>> group_name("no_decay", 0), group_name("default", None)
        ('no_decay/layer_0', 'default')
    """
    return base if depth is None else f"{base}/layer_{depth}"


def warn_unmatched(index: int, rule: Mapping[str, Any], where: str = "") -> None:
    """Report a rule that matched no trainable parameter (:class:`UnmatchedRuleWarning`), naming its selector and its
    key under ``where``, the key path of the section holding ``param_groups``.

    Examples:
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn_unmatched(0, {"name": "cubes", "ndim": 3})
        >>> str(caught[0].message).split(" matched")[0]
        "optim_config.param_groups[0] ('cubes', ndim=3)"
    """
    shown = ", ".join(f"{key}={rule[key]!r}" for key in SELECTOR_KEYS if key in rule)
    key = key_path(where, f"param_groups[{index}]")
    warnings.warn(
        f"optim_config.{key} ({rule['name']!r}, {shown}) matched no trainable parameter; check it "
        "against model.named_parameters() (names are matched without the levels torch.compile, checkpoint_wrapper "
        "and FSDP1 insert).",
        UnmatchedRuleWarning,
        stacklevel=3,
    )


def group_parameters(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    rules: Sequence[Mapping[str, Any]],
    defaults: Mapping[str, Any],
    selectors: Sequence[Selector] | None = None,
    module: nn.Module | None = None,
    layer_decay: LayerDecay | None = None,
    where: str = "",
) -> list[dict[str, Any]]:
    """Split trainable parameters into named groups for ``torch.optim``.

    Rules match the names as :func:`~lightning_optim.names.plain_name` gives them: without the levels that
    ``torch.compile`` (``_orig_mod.``), ``checkpoint_wrapper`` and FSDP1 insert, so one rule fits the wrapped and the
    plain model.
    Each rule's options (any optimizer argument) go into its group; ``lr_scale`` multiplies the base ``lr``
    from ``defaults`` (which must then hold it: ``OptimizerSpec.lr`` gives the class's default), and so does
    ``layer_decay``'s factor, which splits each group by depth (``<name>/layer_<depth>``). Every group carries
    ``name``, which Lightning's LR logging shows. Parameter names are
    not stored in the groups: torch refuses to mix named and unnamed groups, and Lightning's finetuning
    callbacks add unnamed ones.
    A rule that matches nothing is reported with :class:`UnmatchedRuleWarning`. ``selectors`` are the rules'
    selectors from :func:`compile_rules`, where the caller has checked the rules already; ``module`` is the whole
    model, needed by ``module`` rules and ``layer_decay``; ``where``, the key path of the section holding
    ``param_groups``, is named in errors and warnings.
    """
    if selectors is None:
        selectors = compile_rules(rules, where)
    members: dict[tuple[int, int | None], list[Placement]] = {}
    for placement in place_parameters(named_parameters, selectors, module, layer_decay, rules, where):
        members.setdefault((placement.rule, placement.depth), []).append(placement)
    groups = []
    for index in range(len(rules) + 1):
        rule = rules[index] if index < len(rules) else {"name": DEFAULT_GROUP}
        keys = sorted((key for key in members if key[0] == index), key=lambda key: key[1] or 0)
        if index < len(rules) and not keys:
            warn_unmatched(index, rule, where)
        options = {key: value for key, value in rule.items() if key not in RULE_KEYS[1:]}
        for key in keys:
            placed = members[key]
            group = {"params": [p.parameter for p in placed], **options, "name": group_name(rule["name"], key[1])}
            if "lr_scale" in rule or key[1] is not None:
                group["lr"] = options.get("lr", defaults["lr"]) * rule.get("lr_scale", 1.0) * placed[0].decay
            groups.append(group)
    return groups
