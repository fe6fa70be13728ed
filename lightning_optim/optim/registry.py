"""The ``optimizer`` and ``param_groups`` sections: one info record per optimizer name, and the checks they derive.

Examples:
    >>> OPTIMIZER_INFOS["lbfgs"].single_group, OPTIMIZER_INFOS["sparse_adam"].conf_file
    (True, 'optimizer/sparse_adam.yaml')
    >>> optimizer_class({"name": "AdamW"}).__name__
    'AdamW'
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lightning_optim.errors import OptimConfigError, config_error, key_path
from lightning_optim.names import named_modules, named_parameters, plain_name
from lightning_optim.optim.external import check_required_arguments, external_optimizer_class, kwargs_switches
from lightning_optim.optim.lr_scaling import LR_SCALING_KEY, LrScaling, resolve_lr_scaling
from lightning_optim.optim.param_groups import (
    RULE_KEYS,
    LayerDecay,
    Selector,
    compile_rules,
    group_parameters,
    resolve_layer_decay,
)
from lightning_optim.targets import import_class
from lightning_optim.value_types import conform, conform_section, constructor_types, expected

if hasattr(torch.optim, "Muon"):  # torch 2.9 or later
    from lightning_optim.optim.muon import MUON_KEY, MuonWithAux, muon_groups

__all__ = [
    "EXTRA_OPTIMIZER_INFOS",
    "OPTIMIZERS",
    "OPTIMIZER_INFOS",
    "ExtraOptimizerInfo",
    "OptimizerInfo",
    "OptimizerSpec",
    "default_lr",
    "optimizer_class",
    "resolve_optimizer",
]

_SPEC_KEYS = ("name", "_target_")

MAX_LR = float(torch.finfo(torch.float32).max)
"""The largest learning rate taken: float32's largest number. A larger lr is infinite in a float32 kernel (fused
steps, an lr tensor), and every real lr is many orders of magnitude below it."""
_SPARSE_MODULES = (nn.Embedding, nn.EmbeddingBag)


@dataclass(frozen=True)
class OptimizerInfo:
    """One optimizer the config names: its class and what it can take.

    Attributes:
        name: the config name (``optimizer.name``, case-insensitive) and the stem of its conf file.
        cls: the ``torch.optim.Optimizer`` subclass.
        single_group: takes a single parameter group only (LBFGS), so no parameter-group rules.
        sparse_only: takes sparse gradients only (SparseAdam), those of ``Embedding(sparse=True)``.
        aliases: other spellings of ``name``.
        settings: keys the section takes that are not constructor arguments, each a count >= 0 with its default
            (``bn_recompute_batches`` of the schedule-free optimizers); they stay out of the constructor call.
        aux: the name of the default auxiliary optimizer where the section takes one (``muon``'s ``aux``: an
            optimizer section for the parameters Muon does not take).

    Examples:
        >>> OPTIMIZER_INFOS["lbfgs"].check_groups(torch.nn.Linear(2, 1), [{"name": "a"}, {"name": "b"}])
        Traceback (most recent call last):
        ...
        lightning_optim.errors.OptimConfigError: optim_config.param_groups = ['a', 'b'] is not valid. Expected no \
parameter-group rules with LBFGS: it supports a single parameter group.
    """

    name: str
    cls: type[torch.optim.Optimizer]
    single_group: bool = False
    sparse_only: bool = False
    aliases: tuple[str, ...] = ()
    settings: tuple[tuple[str, int], ...] = ()
    aux: str | None = None

    @property
    def conf_file(self) -> str:
        """The optimizer's file in the Hydra config tree (``lightning_optim/conf``), torch's defaults written out."""
        return f"optimizer/{self.name}.yaml"

    def check_settings(self, section: Mapping[str, Any], where: str) -> dict[str, int]:
        """Each of :attr:`settings` as ``section`` sets it (its default where unset), checked to be a count >= 0.

        Examples:
            >>> info = OptimizerInfo("sgd", torch.optim.SGD, settings=(("warm_batches", 0),))
            >>> info.check_settings({"warm_batches": 5.0}, "optimizer"), info.check_settings({}, "optimizer")
            ({'warm_batches': 5}, {'warm_batches': 0})
        """
        checked = {}
        for key, default in self.settings:
            value = conform(section.get(key, default), expected(int, default), f"{where}.{key}")
            if value < 0:
                raise config_error(f"{where}.{key}", value, f"an integer >= 0, e.g. {default}")
            checked[key] = value
        return checked

    def check_groups(
        self,
        module: nn.Module,
        groups: Sequence[Mapping[str, Any]],
        selection: Iterable[tuple[str, nn.Parameter]] | None = None,
        where: str = "",
    ) -> None:
        """Refuse parameter groups the optimizer cannot take: several for LBFGS, dense gradients for SparseAdam.

        ``selection`` is the optimizer's own share of ``module``'s parameters (one of several named optimizers);
        None means all of them. ``where`` is the key path of the section holding ``optimizer`` and ``param_groups``
        (:func:`~lightning_optim.errors.key_path`).
        """
        if self.single_group and len(groups) > 1:
            names = [group["name"] for group in groups]
            raise config_error(
                key_path(where, "param_groups"),
                names,
                "no parameter-group rules with LBFGS: it supports a single parameter group",
            )
        if self.sparse_only:
            sparse = sparse_parameter_names(module)
            selected = named_parameters(module) if selection is None else selection
            dense = [plain_name(name) for name, p in selected if p.requires_grad and plain_name(name) not in sparse]
            if dense:
                raise config_error(
                    key_path(where, "optimizer.name"),
                    self.name,
                    f"an optimizer for dense gradients (e.g. 'adam'): parameters {dense[:5]} get dense gradients, "
                    "and SparseAdam only takes those of Embedding(sparse=True)/EmbeddingBag(sparse=True)",
                )


def _registered(infos: Iterable[OptimizerInfo]) -> dict[str, OptimizerInfo]:
    return {info.name: info for info in infos}


OPTIMIZER_INFOS: dict[str, OptimizerInfo] = _registered(
    [
        OptimizerInfo("sgd", torch.optim.SGD),
        OptimizerInfo("adam", torch.optim.Adam),
        OptimizerInfo("adamw", torch.optim.AdamW),
        OptimizerInfo("radam", torch.optim.RAdam),
        OptimizerInfo("nadam", torch.optim.NAdam),
        OptimizerInfo("adamax", torch.optim.Adamax),
        OptimizerInfo("adagrad", torch.optim.Adagrad),
        OptimizerInfo("adadelta", torch.optim.Adadelta),
        OptimizerInfo("rmsprop", torch.optim.RMSprop),
        OptimizerInfo("asgd", torch.optim.ASGD),
        OptimizerInfo("rprop", torch.optim.Rprop),
        OptimizerInfo("lbfgs", torch.optim.LBFGS, single_group=True),
        OptimizerInfo("sparse_adam", torch.optim.SparseAdam, sparse_only=True, aliases=("sparseadam",)),
        OptimizerInfo("adafactor", torch.optim.Adafactor),
        # Muon arrived in torch 2.9, above the package's torch floor.
        *([OptimizerInfo("muon", MuonWithAux, aux="adamw")] if hasattr(torch.optim, "Muon") else []),
    ]
)
"""Every ``torch.optim`` optimizer by its config name (``muon``, torch's Muon with its auxiliary optimizer as one
:class:`~lightning_optim.optim.muon.MuonWithAux`, where the installed torch has it: torch 2.9 or later)."""


@dataclass(frozen=True)
class ExtraOptimizerInfo:
    """An optimizer from an optional extra: its package is imported only when a config names it.

    Attributes:
        name: the config name, as :attr:`OptimizerInfo.name`.
        module: the module holding the class.
        class_name: the class's name in ``module``.
        extra: the package's extra (``pip install 'lightning-optim[<extra>]'``).
        settings: as :attr:`OptimizerInfo.settings`.

    Examples:
        >>> EXTRA_OPTIMIZER_INFOS["adamw_schedulefree"].install_line
        "pip install 'lightning-optim[schedulefree]'"
    """

    name: str
    module: str
    class_name: str
    extra: str
    settings: tuple[tuple[str, int], ...] = ()

    @property
    def conf_file(self) -> str:
        """The optimizer's file in the Hydra config tree, the class's defaults written out."""
        return f"optimizer/{self.name}.yaml"

    @property
    def install_line(self) -> str:
        """The command that installs the extra."""
        return f"pip install 'lightning-optim[{self.extra}]'"

    def load(self, where: str = "optimizer") -> OptimizerInfo:
        """Import the class: the :class:`OptimizerInfo` it stands for; ``where`` is the section's key path.

        Raises:
            OptimConfigError: the package is not installed; the message gives :attr:`install_line`.
        """
        try:
            module = importlib.import_module(self.module)
        except ImportError as error:
            raise OptimConfigError(
                f"optim_config.{where}.name = {self.name!r} needs the {self.module.split('.')[0]} package, which "
                f"is not installed ({error}): {self.install_line}"
            ) from error
        return OptimizerInfo(self.name, getattr(module, self.class_name), settings=self.settings)


SCHEDULE_FREE_SETTINGS = (("bn_recompute_batches", 0),)
"""Training batches run under ``no_grad`` at the evaluation weights before each validation (:mod:`schedule_free`)."""

EXTRA_OPTIMIZER_INFOS: dict[str, ExtraOptimizerInfo] = {
    info.name: info
    for info in [
        ExtraOptimizerInfo(
            "adamw_schedulefree", "schedulefree", "AdamWScheduleFree", "schedulefree", SCHEDULE_FREE_SETTINGS
        ),
        ExtraOptimizerInfo(
            "sgd_schedulefree", "schedulefree", "SGDScheduleFree", "schedulefree", SCHEDULE_FREE_SETTINGS
        ),
        ExtraOptimizerInfo(
            "radam_schedulefree", "schedulefree", "RAdamScheduleFree", "schedulefree", SCHEDULE_FREE_SETTINGS
        ),
    ]
}
"""The optimizers of optional extras by config name, imported when named (:meth:`ExtraOptimizerInfo.load`)."""

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {name: info.cls for name, info in OPTIMIZER_INFOS.items()}
"""The optimizer classes by config name."""

_BY_SPELLING = {spelling: info for info in OPTIMIZER_INFOS.values() for spelling in (info.name, *info.aliases)}


def optimizer_info(spec: Mapping[str, Any], where: str = "optimizer") -> OptimizerInfo:
    """The info record ``optimizer.name`` (case-insensitive) names, or one for the class ``optimizer._target_`` names.

    ``where`` is the section's key path, named in errors.

    A name torch does not have is looked up in pytorch-optimizer (:mod:`lightning_optim.optim.external`).

    A ``_target_`` class keeps the limits of the registered optimizer it derives from (an LBFGS subclass takes a
    single group too).

    Examples:
        >>> optimizer_info({"_target_": "torch.optim.LBFGS"}).single_group
        True
    """
    if "_target_" in spec:
        cls = import_class(spec["_target_"], torch.optim.Optimizer, f"{where}._target_")
        limited = (info for info in OPTIMIZER_INFOS.values() if info.single_group or info.sparse_only)
        base = next((info for info in limited if issubclass(cls, info.cls)), None)
        return OptimizerInfo(spec["_target_"], cls) if base is None else dataclasses.replace(base, cls=cls)
    name = spec.get("name")
    names = [*OPTIMIZERS, *EXTRA_OPTIMIZER_INFOS]
    if name is None:
        raise OptimConfigError(f"optim_config.{where} needs 'name' (one of: " + ", ".join(names) + ") or '_target_'.")
    extra = EXTRA_OPTIMIZER_INFOS.get(str(name).lower())
    if extra is not None:
        return extra.load(where)
    info = _BY_SPELLING.get(str(name).lower())
    if info is None:
        return OptimizerInfo(str(name).lower(), external_optimizer_class(name, names, where))
    return info


def optimizer_class(spec: Mapping[str, Any]) -> type[torch.optim.Optimizer]:
    """Resolve ``optimizer.name`` (case-insensitive) or ``optimizer._target_`` to an Optimizer class.

    Examples:
        >>> optimizer_class({"name": "sparseadam"}).__name__
        'SparseAdam'
    """
    return optimizer_info(spec).cls


def check_options(cls: type[torch.optim.Optimizer], options: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Refuse an option ``cls`` does not accept, a value its signature does not take, and a negative learning rate.

    ``cls`` accepts its named constructor arguments and, for a pytorch-optimizer class, the switches it reads through
    ``**kwargs`` (:func:`~lightning_optim.optim.external.kwargs_switches`); a misspelt key is refused either way.

    Returns:
        ``options`` as the constructor takes them (an integral float for an integer argument as an int).

    Examples:
        >>> check_options(torch.optim.LBFGS, {"lr": 1, "max_iter": 1e2}, "optimizer")
        {'lr': 1, 'max_iter': 100}
        >>> check_options(torch.optim.SGD, {"nesterov": "yes"}, "optimizer")
        Traceback (most recent call last):
        ...
        lightning_optim.errors.OptimConfigError: optim_config.optimizer.nesterov = 'yes' is not valid. Expected \
true or false, e.g. false.
        >>> import pytorch_optimizer
        >>> check_options(pytorch_optimizer.Lion, {"cautious": True}, "optimizer")
        {'cautious': True}
        >>> check_options(pytorch_optimizer.Lion, {"cautios": True}, "optimizer")
        Traceback (most recent call last):
        ...
        lightning_optim.errors.OptimConfigError: optim_config.optimizer.cautios = True is not valid. Did you mean \
'cautious'? Expected an argument of Lion: lr, betas, weight_decay, weight_decouple, fixed_decay, foreach, maximize; \
or a switch it reads through **kwargs: adanorm, adanorm_r, cautious, use_gc.
    """
    arguments = constructor_types(cls)
    switches = kwargs_switches(cls)  # type: ignore[arg-type]  # classes hash; typeshed disagrees
    types = {**arguments, **switches}
    for key, value in options.items():
        if key not in types:
            also = f"; or a switch it reads through **kwargs: {', '.join(switches)}" if switches else ""
            raise config_error(
                f"{where}.{key}",
                value,
                f"an argument of {cls.__name__}: {', '.join(arguments)}{also}",
                types,
                unknown_key=True,
            )
    options = conform_section(options, types, where)
    lr = options.get("lr")
    if isinstance(lr, (int, float)) and not 0 <= lr <= MAX_LR:
        raise config_error(
            f"{where}.lr", lr, f"a learning rate >= 0 and at most {MAX_LR:.4g} (float32's largest), e.g. 1e-3"
        )
    return options


def check_effective_lrs(
    cls: type[torch.optim.Optimizer], options: Mapping[str, Any], rules: Sequence[Mapping[str, Any]], where: str = ""
) -> None:
    """Refuse an ``lr_scale`` that makes its group's lr (the rule's ``lr``, else the base lr, times it) overflow.

    ``where`` is the key path of the section holding ``optimizer`` and ``param_groups``.

    Raises:
        OptimConfigError: naming the rule's ``lr_scale``, its value and the lr it would give.

    Examples:
        >>> check_effective_lrs(torch.optim.SGD, {"lr": 0.1}, [{"name": "head", "params": "^head", "lr_scale": 1e308}])
        Traceback (most recent call last):
        ...
        lightning_optim.errors.OptimConfigError: optim_config.param_groups[0].lr_scale = 1e+308 is not valid. \
Expected a number >= 0 that keeps the group's lr (0.1 x lr_scale = 1e+307) at most 3.403e+38 (float32's largest), \
e.g. 10.
    """
    for index, rule in enumerate(rules):
        scale = rule.get("lr_scale")
        if scale is None:
            continue
        # The base lr group_parameters scales: the rule's, the section's, else the class's default.
        lr = rule.get("lr", options["lr"] if "lr" in options else default_lr(cls, key_path(where, "optimizer")))
        if isinstance(lr, (int, float)) and not lr * scale <= MAX_LR:
            raise config_error(
                key_path(where, f"param_groups[{index}].lr_scale"),
                scale,
                f"a number >= 0 that keeps the group's lr ({lr!r} x lr_scale = {lr * scale:.4g}) at most "
                f"{MAX_LR:.4g} (float32's largest), e.g. 10",
            )


def check_rule_options(
    cls: type[torch.optim.Optimizer], rules: Sequence[Mapping[str, Any]], where: str = ""
) -> list[dict[str, Any]]:
    """Check the optimizer options each parameter-group rule sets, as :func:`check_options` does.

    ``where`` is the key path of the section holding ``param_groups``.

    Returns:
        The rules with their options as the constructor takes them.
    """
    return [
        {
            **rule,
            **check_options(
                cls, {k: v for k, v in rule.items() if k not in RULE_KEYS}, key_path(where, f"param_groups[{index}]")
            ),
        }
        for index, rule in enumerate(rules)
    ]


def default_lr(cls: type[torch.optim.Optimizer], where: str = "optimizer") -> float:
    """The default of ``cls``'s ``lr`` argument: the lr of an optimizer section without one (at ``where``).

    Raises:
        OptimConfigError: ``cls`` has no default lr.

    Examples:
        >>> default_lr(torch.optim.Adadelta), default_lr(torch.optim.RMSprop), default_lr(torch.optim.Adam)
        (1.0, 0.01, 0.001)
    """
    parameter = inspect.signature(cls).parameters.get("lr")
    if parameter is None or parameter.default is inspect.Parameter.empty:
        raise config_error(f"{where}.lr", None, f"a learning rate: {cls.__name__} has no default")
    return float(parameter.default)


def optimizer_options(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor keyword arguments in an ``optimizer`` section (everything but ``name``/``_target_``)."""
    return {key: value for key, value in spec.items() if key not in _SPEC_KEYS}


def sparse_parameter_names(module: nn.Module) -> set[str]:
    """Qualified names of parameters that receive sparse gradients (``Embedding(sparse=True)`` and friends)."""
    return {
        f"{prefix}.{name}" if prefix else name
        for prefix, sub in named_modules(module)
        if isinstance(sub, _SPARSE_MODULES) and sub.sparse
        for name, _ in sub.named_parameters(recurse=False)
    }


@dataclass(frozen=True)
class OptimizerSpec:
    """The ``optimizer`` and ``param_groups`` sections, checked: what ``build_optimizer`` takes as it is.

    Attributes:
        info: the optimizer's info record.
        options: the constructor's keyword arguments, as it takes them.
        rules: the parameter-group rules, their options as the constructor takes them.
        selectors: what each rule selects (``params``, ``ndim``, ``module``), checked.
        settings: the section's keys that are not constructor arguments (:attr:`OptimizerInfo.settings`), checked.
        aux: the auxiliary optimizer's section, checked (``muon``'s ``aux``; ``None`` for every other optimizer).
        layer_decay: ``optim_config.layer_decay``, checked, or None.
        lr_scaling: ``optimizer.lr_scaling``, checked, or None (the fit applies it: it needs the run's batch size).
        where: the key path of the section holding ``optimizer``, ``param_groups`` and ``layer_decay`` (empty: the
            top level of ``optim_config``; ``optimizers.<name>``), named in the errors of a build.

    Examples:
        >>> spec = resolve_optimizer({"name": "sgd", "lr": 0.1}, [{"name": "bias", "params": "bias$"}])
        >>> [group["name"] for group in spec.groups(torch.nn.Linear(2, 1))]
        ['bias', 'default']
    """

    info: OptimizerInfo
    options: dict[str, Any]
    rules: tuple[dict[str, Any], ...] = ()
    selectors: tuple[Selector, ...] = ()
    settings: dict[str, int] = dataclasses.field(default_factory=dict)
    aux: OptimizerSpec | None = None
    layer_decay: LayerDecay | None = None
    lr_scaling: LrScaling | None = None
    where: str = ""

    def arguments(self) -> dict[str, Any]:
        """The constructor's keyword arguments: :attr:`options`, the auxiliary optimizer as a factory of its groups."""
        if self.aux is None:
            return self.options
        return {**self.options, "aux": functools.partial(self.aux.info.cls, **self.aux.options)}

    @property
    def lr(self) -> float:
        """The base lr: the section's ``lr``, else the optimizer class's default (:func:`default_lr`).

        Examples:
            >>> resolve_optimizer({"name": "adagrad"}).lr, resolve_optimizer({"name": "sgd", "lr": 0.1}).lr
            (0.01, 0.1)
        """
        return self.options["lr"] if "lr" in self.options else default_lr(self.info.cls, self._key("optimizer"))

    def groups(
        self, module: nn.Module, named_parameters: Iterable[tuple[str, nn.Parameter]] | None = None
    ) -> list[dict[str, Any]]:
        """``module``'s trainable parameters in named groups by the rules, refused where the optimizer cannot take them.

        ``named_parameters`` narrows them to a selection of ``module``'s (one optimizer's among several).

        Raises:
            OptimConfigError: LBFGS with several groups, SparseAdam on dense gradients, no trainable parameter.
        """
        selection = None if named_parameters is None else list(named_parameters)
        if self.aux is not None:
            lr = self.lr
            matched = self.options.get("adjust_lr_fn") == "match_rms_adamw"
            aux_lr = self.aux.options.get(
                "lr", lr if matched else default_lr(self.aux.info.cls, self._key("optimizer.aux"))
            )
            groups = muon_groups(
                module,
                selection,
                self.rules,
                self.selectors,
                lr=lr,
                aux_lr=aux_lr,
                layer_decay=self.layer_decay,
                where=self.where,
            )
            if not groups:
                raise OptimConfigError("The model has no trainable parameters (all have requires_grad=False).")
            return groups
        scaled = self.layer_decay is not None or any("lr_scale" in rule for rule in self.rules)
        defaults = {**self.options, "lr": self.lr} if scaled else self.options
        groups = group_parameters(
            module.named_parameters() if selection is None else selection,
            self.rules,
            defaults,
            self.selectors,
            module,
            self.layer_decay,
            self.where,
        )
        self.info.check_groups(module, groups, selection, self.where)
        if not groups:
            raise OptimConfigError("The model has no trainable parameters (all have requires_grad=False).")
        return groups

    def _key(self, key: str) -> str:
        return key_path(self.where, key)


def resolve_optimizer(
    section: Mapping[str, Any],
    rules: Sequence[Mapping[str, Any]] = (),
    layer_decay: Mapping[str, Any] | None = None,
    where: str = "",
) -> OptimizerSpec:
    """Check an ``optimizer`` section, the ``param_groups`` rules and ``layer_decay`` once, for every later build.

    ``where`` is the key path of the section holding them (empty: the top level of ``optim_config``), named in every
    error and warning, also those of a later build.

    Raises:
        OptimConfigError: unknown optimizer or option, a value of the wrong type, negative lr, bad rule.

    Examples:
        >>> resolve_optimizer({"name": "sgd", "lr": -1}, where="optimizers.critic")
        Traceback (most recent call last):
        ...
        lightning_optim.errors.OptimConfigError: optim_config.optimizers.critic.optimizer.lr = -1 is not valid. \
Expected a learning rate >= 0 and at most 3.403e+38 (float32's largest), e.g. 1e-3.
    """
    key = key_path(where, "optimizer")
    info = optimizer_info(section, key)
    settings = info.check_settings(section, key)
    arguments = {name: value for name, value in optimizer_options(section).items() if name not in settings}
    lr_scaling = resolve_lr_scaling(arguments.pop(LR_SCALING_KEY), key) if LR_SCALING_KEY in arguments else None
    decay = resolve_layer_decay(layer_decay, where) if layer_decay is not None else None
    aux = aux_section = None
    if info.aux is not None:
        aux_section = arguments.pop("aux", {"name": info.aux})
        aux = _resolve_aux(aux_section, f"{key}.aux")
    options = check_options(info.cls, arguments, key)
    check_required_arguments(info.cls, options, key)
    selectors = compile_rules(rules, where)
    if aux is None:
        checked_rules = check_rule_options(info.cls, rules, where)
        check_effective_lrs(info.cls, options, checked_rules, where)
    else:
        assert aux_section is not None  # popped with aux above
        named = {name: value for name, value in aux_section.items() if name in _SPEC_KEYS}
        options["aux"] = {**named, **aux.options}
        checked_rules = _check_muon_rules(aux.info.cls, rules, where)
    return OptimizerSpec(info, options, tuple(checked_rules), tuple(selectors), settings, aux, decay, lr_scaling, where)


def _resolve_aux(section: Any, where: str) -> OptimizerSpec:
    """Check Muon's ``aux`` section (at ``where``): a torch optimizer that steps without a closure over dense
    gradients."""
    if not isinstance(section, Mapping):
        raise config_error(where, section, "an optimizer section, e.g. {name: adamw, lr: 3e-4}")
    if "_target_" in section:
        info = OptimizerInfo(
            section["_target_"], import_class(section["_target_"], torch.optim.Optimizer, f"{where}._target_")
        )
    else:
        names = [name for name, known in OPTIMIZER_INFOS.items() if _steps_as_aux(known)]
        by_name = _BY_SPELLING.get(str(section.get("name")).lower())
        if by_name is None or not _steps_as_aux(by_name):
            raise config_error(f"{where}.name", section.get("name"), f"one of: {', '.join(names)}", names)
        info = by_name
    options = check_options(info.cls, optimizer_options(section), where)
    check_required_arguments(info.cls, options, where)
    return OptimizerSpec(info, options)


def _steps_as_aux(info: OptimizerInfo) -> bool:
    return info.aux is None and not info.single_group and not info.sparse_only


def _check_muon_rules(
    aux_class: type[torch.optim.Optimizer], rules: Sequence[Mapping[str, Any]], where: str
) -> list[dict[str, Any]]:
    """Check each rule's ``muon`` side and its options against the optimizer(s) its parameters can reach."""
    checked = []
    for index, rule in enumerate(rules):
        side = rule.get(MUON_KEY)
        if side is not None and not isinstance(side, bool):
            raise config_error(
                key_path(where, f"param_groups[{index}].{MUON_KEY}"),
                side,
                "true (Muon) or false (the auxiliary optimizer)",
            )
        options = {key: value for key, value in rule.items() if key not in (*RULE_KEYS, MUON_KEY)}
        for cls in [torch.optim.Muon] * (side is not False) + [aux_class] * (side is not True):
            options = check_options(cls, options, key_path(where, f"param_groups[{index}]"))
        checked.append({**rule, **options})
    return checked
