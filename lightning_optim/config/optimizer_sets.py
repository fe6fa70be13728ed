"""Several named optimizers: each selects its parameters by a regex over parameter names (``optim_config.optimizers``).

Lightning 2.x trains several optimizers only with manual optimization (``self.automatic_optimization = False``);
``configure_optimizers`` returns them in the config's order, which is the order of ``self.optimizers()``.

Examples:
    >>> import torch
    >>> from lightning_optim.config.validation import resolve_optim_config
    >>> model = torch.nn.ModuleDict({"generator": torch.nn.Linear(2, 2), "discriminator": torch.nn.Linear(2, 1)})
    >>> spec = resolve_optim_config({"optimizers": {
    ...     "generator": {"params": "^generator[.]", "optimizer": {"name": "adam", "lr": 2e-4}},
    ...     "discriminator": {"params": "^discriminator[.]", "optimizer": {"name": "sgd", "lr": 0.1}},
    ... }})
    >>> [[name for name, _ in selected] for selected in select_parameters(model.named_parameters(), spec.members)]
    [['generator.weight', 'generator.bias'], ['discriminator.weight', 'discriminator.bias']]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from lightning_optim.config.validation import NamedOptimSpec, OptimizerSetSpec, section_keys
from lightning_optim.errors import OptimConfigError, config_error
from lightning_optim.names import named_parameters
from lightning_optim.optim.build import build_optimizer
from lightning_optim.schedule.build import BuiltScheduler, build_scheduler

__all__ = ["build_optimizer_set", "select_parameters"]

_MOST_NAMED = 5
"""How many parameter names an error lists before it counts the rest."""


def select_parameters(
    named_parameters: Iterable[tuple[str, nn.Parameter]], members: Sequence[NamedOptimSpec]
) -> list[list[tuple[str, nn.Parameter]]]:
    """Each member's trainable parameters: those whose name its ``params`` regex finds (``re.search``).

    Frozen parameters (``requires_grad=False``) belong to no optimizer, as in the single form.

    Raises:
        OptimConfigError: a trainable parameter selected by two optimizers or by none (naming it), or an optimizer
            that selects no trainable parameter.
    """
    selected: list[list[tuple[str, nn.Parameter]]] = [[] for _ in members]
    unselected = []
    for name, parameter in named_parameters:
        if not parameter.requires_grad:
            continue
        owners = [index for index, member in enumerate(members) if member.params.search(name)]
        if len(owners) > 1:
            first, second = (members[index] for index in owners[:2])
            raise OptimConfigError(
                f"optim_config.optimizers: the parameter {name!r} is selected by both {first.name!r} "
                f"(params={first.params.pattern!r}) and {second.name!r} (params={second.params.pattern!r}). Each "
                "trainable parameter must belong to exactly one optimizer: make the regexes exclusive, e.g. anchor "
                "them at a submodule ('^generator\\.')."
            )
        if owners:
            selected[owners[0]].append((name, parameter))
        else:
            unselected.append(name)
    if unselected:
        shown = ", ".join(map(repr, unselected[:_MOST_NAMED]))
        more = f" and {len(unselected) - _MOST_NAMED} more" if len(unselected) > _MOST_NAMED else ""
        regexes = ", ".join(f"{member.name}: {member.params.pattern!r}" for member in members)
        raise OptimConfigError(
            f"optim_config.optimizers: the trainable parameter(s) {shown}{more} are selected by no optimizer's "
            f"params ({regexes}). Widen a regex to take them, or freeze them (requires_grad=False)."
        )
    for member, parameters in zip(members, selected, strict=True):
        if not parameters:
            raise config_error(
                f"{member.where}.params",
                member.params.pattern,
                "a regex that finds (re.search) the name of at least one trainable parameter in "
                "model.named_parameters()",
            )
    return selected


def build_optimizer_set(
    module: nn.Module,
    spec: OptimizerSetSpec,
    run_length: Callable[[NamedOptimSpec], int | None],
) -> list[tuple[torch.optim.Optimizer, BuiltScheduler | None]]:
    """Build each named optimizer over its selection, and its scheduler over ``run_length(member)`` steps.

    A scheduler without ``log_name`` is named ``lr-<optimizer name>`` for Lightning's LR logging, so two
    optimizers of the same class log under keys that say which is which.

    Raises:
        OptimConfigError: as :func:`select_parameters`, and what building one optimizer raises, naming the key
            under ``optimizers.<name>``.

    Examples:
        >>> from lightning_optim.config.validation import resolve_optim_config
        >>> model = torch.nn.ModuleDict({"actor": torch.nn.Linear(2, 2), "critic": torch.nn.Linear(2, 1)})
        >>> spec = resolve_optim_config({"optimizers": {
        ...     "actor": {"params": "^actor[.]", "optimizer": {"name": "adam"},
        ...               "scheduler": {"name": "warmup_constant", "warmup_steps": 2}},
        ...     "critic": {"params": "^critic[.]", "optimizer": {"name": "adam"}},
        ... }})
        >>> built = build_optimizer_set(model, spec, run_length=lambda member: 10)
        >>> [(type(opt).__name__, sch and sch.lightning_config["name"]) for opt, sch in built]
        [('Adam', 'lr-actor'), ('Adam', None)]
    """
    built = []
    for member, named in zip(spec.members, select_parameters(named_parameters(module), spec.members), strict=True):
        # The run length's own warning names the member's keys already.
        length = run_length(member) if member.spec.scheduler is not None else None
        with section_keys(member.where):
            optimizer = build_optimizer(module, member.spec.optimizer, named_parameters=named)
            scheduler = None
            if member.spec.scheduler is not None:
                scheduler = build_scheduler(optimizer, member.spec.scheduler, length)
                scheduler.lightning_config.setdefault("name", f"lr-{member.name}")
        built.append((optimizer, scheduler))
    return built
