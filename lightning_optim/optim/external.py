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

import ast
import functools
import importlib
import inspect
import textwrap
from collections.abc import Collection, Mapping
from typing import Any, TypeGuard

from lightning_optim.errors import OptimConfigError, config_error
from lightning_optim.value_types import Expected, expected

__all__ = ["INSTALL_LINE", "WELL_KNOWN", "check_required_arguments", "external_optimizer_class", "kwargs_switches"]

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


@functools.cache
def kwargs_switches(cls: type[Any]) -> dict[str, Expected]:
    """The variant switches a pytorch-optimizer class takes through ``**kwargs``, typed: its allow-list of extra keys.

    pytorch-optimizer's constructors put ``**kwargs`` into the parameter groups' defaults, and the class reads its
    switches from a group (``group.get('cautious')``, ``group.get('adanorm', False)``). The allow-list is read from
    the source of the class and of its pytorch-optimizer bases: every key read with ``group.get('key'...)`` that is
    neither a named constructor argument nor a key the class writes into a group itself (``group['step'] = 0``),
    provided the constructor's ``**kwargs`` reach the defaults (in a ``{..., **kwargs}`` dict, or through
    ``super().__init__(..., **kwargs)`` to a constructor that puts them there). A key is typed by the literal default
    it is read with (``False``: true or false), else takes any value. Other classes take no switches.

    Examples:
        >>> import pytorch_optimizer
        >>> list(kwargs_switches(pytorch_optimizer.Lion))
        ['adanorm', 'adanorm_r', 'cautious', 'use_gc']
        >>> kwargs_switches(pytorch_optimizer.AdaBelief)["adanorm"]
        Expected(hint=<class 'bool'>, example=False)
    """
    if not _kwargs_reach_groups(cls.__mro__):
        return {}
    reads: dict[str, Any] = {}
    written: set[str] = set()
    for klass in cls.__mro__:
        tree = _syntax(klass)
        if tree is None:
            continue
        for node in ast.walk(tree):
            key = _group_key_read(node)
            if key is not None:
                assert isinstance(node, ast.Call)  # _group_key_read matches calls only
                if reads.get(key, inspect.Parameter.empty) in (inspect.Parameter.empty, None):
                    reads[key] = _literal_default(node)
                continue
            written.update(_group_keys_written(node))
    named = set(inspect.signature(cls.__init__).parameters)
    return {
        key: expected(default=default)
        for key, default in sorted(reads.items())
        if key not in named and key not in written
    }


def _syntax(target: Any) -> ast.Module | None:
    """The parsed source of a pytorch-optimizer class or function, or None for anything else or without source."""
    if not getattr(target, "__module__", "").startswith(PACKAGE):
        return None
    try:
        return ast.parse(textwrap.dedent(inspect.getsource(target)))
    except (OSError, TypeError):
        return None


def _kwargs_reach_groups(mro: tuple[type[Any], ...]) -> bool:
    """Whether the first constructor in ``mro`` puts its ``**kwargs`` into the groups' defaults."""
    index = next((i for i, klass in enumerate(mro) if "__init__" in vars(klass)), None)
    if index is None:
        return False
    tree = _syntax(mro[index].__init__)
    function = None if tree is None else tree.body[0]
    if not isinstance(function, ast.FunctionDef) or function.args.kwarg is None:
        return False
    name = function.args.kwarg.arg
    for node in ast.walk(function):
        if isinstance(node, ast.Dict) and any(
            key is None and _is_name(value, name) for key, value in zip(node.keys, node.values, strict=True)
        ):
            return True
        if _is_super_init(node) and any(kw.arg is None and _is_name(kw.value, name) for kw in node.keywords):
            return _kwargs_reach_groups(mro[index + 1 :])
    return False


def _is_name(node: ast.AST, name: str) -> bool:
    return isinstance(node, ast.Name) and node.id == name


def _is_super_init(node: ast.AST) -> TypeGuard[ast.Call]:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "__init__"
        and isinstance(node.func.value, ast.Call)
        and _is_name(node.func.value.func, "super")
    )


def _group_call_key(node: ast.AST, method: str) -> str | None:
    """``key`` where ``node`` is ``group.<method>('key'...)``."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == method
        and _is_name(node.func.value, "group")
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        return node.args[0].value
    return None


def _group_key_read(node: ast.AST) -> str | None:
    """``key`` where ``node`` is ``group.get('key'...)``."""
    return _group_call_key(node, "get")


def _literal_default(node: ast.Call) -> Any:
    if len(node.args) < 2:
        return inspect.Parameter.empty
    try:
        return ast.literal_eval(node.args[1])
    except ValueError:
        return inspect.Parameter.empty


def _group_keys_written(node: ast.AST) -> set[str]:
    """The keys ``node`` writes into a group: ``group['key'] = ...``, ``group['key'] += ...``, ``group.setdefault``."""
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AugAssign) else []
    keys = {
        target.slice.value
        for target in targets
        if isinstance(target, ast.Subscript)
        and _is_name(target.value, "group")
        and isinstance(target.slice, ast.Constant)
        and isinstance(target.slice.value, str)
    }
    if (key := _group_call_key(node, "setdefault")) is not None:
        keys.add(key)
    return keys
