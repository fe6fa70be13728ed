"""The ``optim_config`` schema: plain containers in, clear errors out.

A model hands its optimisation settings to :class:`~lightning_optim.OptimMixin` as a dict, an OmegaConf
``DictConfig`` or an :class:`OptimConfig`. Everything is turned into plain ``dict``/``list``/scalars here, so the
config can be stored in ``hparams`` and checkpoints load under torch's default ``weights_only=True``.

Two forms: one optimizer (``optimizer``, ``param_groups``, ``scheduler``, and optionally ``clipping`` and
``layer_decay``, ``spike_guard``), or several named ones under ``optimizers``, each selecting its parameters by a
regex over parameter names (``params``) and holding the sections of the first form. ``clipping`` (adaptive norm
clipping, :mod:`lightning_optim.clipping.adaptive`), ``layer_decay`` (layer-wise lr decay,
:class:`~lightning_optim.optim.param_groups.LayerDecay`) and ``spike_guard``
(:mod:`lightning_optim.clipping.spike_guard`) appear only when set; so does ``resume`` (how a fit started from a
checkpoint goes on, :mod:`lightning_optim.config.resume`), a top-level key in both forms.

Examples:
    >>> to_plain_config({"optimizer": {"name": "adamw", "lr": 3e-4}})
    {'optimizer': {'name': 'adamw', 'lr': 0.0003}, 'param_groups': [], 'scheduler': None}
    >>> to_plain_config({"optimizers": {"generator": {"params": "^generator\\\\.", "optimizer": {"name": "adam"}}}})
    {'optimizers': {'generator': {'params': '^generator\\\\.', 'optimizer': {'name': 'adam'}, 'param_groups': [], \
'scheduler': None}}}
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from lightning_optim.config.resume import RESUME_KEY
from lightning_optim.errors import OptimConfigError, config_error, key_path

__all__ = ["OptimConfig", "changed_keys", "plain", "to_plain_config"]

TOP_LEVEL_KEYS = ("optimizer", "param_groups", "scheduler", "clipping", "spike_guard", "layer_decay", "resume")
OPTIMIZERS_KEY = "optimizers"
"""The top-level key of the several-optimizer form: optimizer name -> its section."""
SECTION_KEYS = ("params", *(key for key in TOP_LEVEL_KEYS if key != "resume"))
"""The keys of one named optimizer's section in the several-optimizer form."""
_NAME = re.compile(r"(?!\.+$)[A-Za-z0-9_.-]+")
"""An optimizer's name under ``optimizers``: part of metric keys and of TensorBoard's folders, so never ``.`` or
``..``."""


@dataclass
class OptimConfig:
    """Typed form of ``optim_config``; the sections stay mappings because their keys depend on the optimizer.

    Examples:
        >>> cfg = OptimConfig(optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9})
        >>> to_plain_config(cfg)["optimizer"]["momentum"]
        0.9
    """

    optimizer: dict[str, Any]
    param_groups: list[dict[str, Any]] = field(default_factory=list)
    scheduler: dict[str, Any] | None = None
    clipping: dict[str, Any] | None = None
    spike_guard: dict[str, Any] | None = None
    layer_decay: dict[str, Any] | None = None
    resume: dict[str, Any] | None = None


def plain(value: Any) -> Any:
    """Recursively turn OmegaConf containers, mappings and tuples into plain dicts and lists.

    Examples:
        >>> plain(OmegaConf.create({"betas": [0.9, 0.98]}))
        {'betas': [0.9, 0.98]}
    """
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


def to_plain_config(config: Mapping[str, Any] | DictConfig | OptimConfig) -> dict[str, Any]:
    """Return ``config`` as plain containers: the single form with all three sections present (``clipping`` when
    set), or ``optimizers`` with every named section complete (``params`` and the three sections).

    Raises:
        OptimConfigError: when ``optimizer`` is missing, a top-level key is unknown, or both forms are mixed.
    """
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if not isinstance(config, (Mapping, DictConfig)):
        raise OptimConfigError(
            f"optim_config must be a dict, a DictConfig or an OptimConfig, got {type(config).__name__}."
        )
    values: dict[str, Any] = plain(config)
    resume = values.pop(RESUME_KEY, None)
    kept = {RESUME_KEY: resume} if resume is not None else {}
    if OPTIMIZERS_KEY in values:
        return {OPTIMIZERS_KEY: _plain_optimizers(values), **kept}
    for key in values:
        if key not in TOP_LEVEL_KEYS:
            choices = (*TOP_LEVEL_KEYS, OPTIMIZERS_KEY)
            raise config_error(key, values[key], f"only the keys {', '.join(choices)}", choices, unknown_key=True)
    return {**_plain_section(values, ""), **kept}


_MAPPING_SECTIONS = {
    "scheduler": "a mapping with a 'name', or null for a constant lr",
    "clipping": "a mapping with a name (autoclip or zclip), or null for no adaptive clipping",
    "spike_guard": "a mapping such as {on: grad_norm, z_threshold: 6.0}, or null for none",
}
"""The sections that are a mapping or null, with what a wrong value is told."""


def _plain_section(values: dict[str, Any], where: str) -> dict[str, Any]:
    """One optimizer's ``optimizer``, ``param_groups`` and ``scheduler``, all present, and ``clipping`` and
    ``layer_decay`` when set; ``where`` is the section's key path (empty: the top level)."""
    if not isinstance(values.get("optimizer"), dict):
        raise OptimConfigError(
            f"optim_config.{key_path(where, 'optimizer')} is required: a mapping such as "
            "{'name': 'adamw', 'lr': 3e-4}."
        )
    param_groups = values.get("param_groups") or []
    if not isinstance(param_groups, list):
        raise config_error(
            key_path(where, "param_groups"), param_groups, "a list of rules such as [{'name': ..., 'params': ...}]"
        )
    for key, expected in _MAPPING_SECTIONS.items():
        if values.get(key) is not None and not isinstance(values[key], dict):
            raise config_error(key_path(where, key), values[key], expected)
    section = {"optimizer": values["optimizer"], "param_groups": param_groups, "scheduler": values.get("scheduler")}
    optional = {key: values.get(key) for key in ("clipping", "spike_guard", "layer_decay")}
    return {**section, **{key: value for key, value in optional.items() if value is not None}}


def _plain_optimizers(values: dict[str, Any]) -> dict[str, Any]:
    """The ``optimizers`` form: each named section checked for its keys, in the config's order."""
    mixed = [key for key in values if key != OPTIMIZERS_KEY]
    if mixed:
        raise OptimConfigError(
            f"optim_config has both 'optimizers' and {', '.join(map(repr, mixed))}: use either one optimizer "
            "(optimizer, param_groups, scheduler at the top level) or several named ones, each with its own "
            "sections, under optimizers (e.g. optimizers: {generator: {params: '^generator\\.', optimizer: {...}}})."
        )
    optimizers = values[OPTIMIZERS_KEY]
    if isinstance(optimizers, dict) and any(not isinstance(section, dict) for section in optimizers.values()):
        # {"optimizers": {"name": "sgd"}} is the single form's optimizer section under a misspelt key.
        raise config_error(
            OPTIMIZERS_KEY,
            optimizers,
            "either optimizer: {name: ..., lr: ...} (one optimizer) or optimizers: {<name>: {params: <regex>, "
            "optimizer: {...}}} (several)",
            ["optimizer"],
            unknown_key=True,
        )
    if not isinstance(optimizers, dict) or not optimizers:
        raise config_error(
            OPTIMIZERS_KEY,
            optimizers,
            "a non-empty mapping from optimizer name to its section, e.g. {generator: {params: '^generator\\.', "
            "optimizer: {name: adam}}}",
        )
    sections = {}
    for name, section in optimizers.items():
        where = f"{OPTIMIZERS_KEY}.{name}"
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise OptimConfigError(
                f"optim_config.{OPTIMIZERS_KEY}: the optimizer name {name!r} is not valid. Expected letters, digits, "
                "'_', '-' and '.', other than '.' and '..' (the name is part of metric keys and log folders), e.g. "
                "'generator'."
            )
        if not isinstance(section, dict):
            raise config_error(where, section, "a mapping with params (a regex on parameter names) and optimizer")
        for key in section:
            if key not in SECTION_KEYS:
                raise config_error(
                    f"{where}.{key}", section[key], f"only the keys {', '.join(SECTION_KEYS)}", SECTION_KEYS, True
                )
        params = section.get("params")
        if not isinstance(params, str) or not params:
            raise config_error(
                f"{where}.params", params, f"a regex selecting this optimizer's parameters by name, e.g. '^{name}\\.'"
            )
        try:
            re.compile(params)
        except re.error as error:
            raise config_error(f"{where}.params", params, f"a valid Python regex ({error})") from None
        sections[name] = {"params": params, **_plain_section(section, where)}
    return sections


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """List the dotted keys whose values differ between two plain configs.

    Examples:
        >>> changed_keys({"optimizer": {"lr": 0.1, "name": "sgd"}}, {"optimizer": {"lr": 0.2, "name": "sgd"}})
        ['optimizer.lr']
    """
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [path for key in keys for path in changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".")]
