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

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lightning_optim.config.optim_config import OPTIMIZERS_KEY
from lightning_optim.config.validation import NamedOptimSpec, OptimizerSetSpec
from lightning_optim.errors import OptimConfigError, config_error
from lightning_optim.names import named_parameters
from lightning_optim.optim.build import build_optimizer
from lightning_optim.schedule.build import BuiltScheduler, build_scheduler

__all__ = ["build_optimizer_set", "select_parameters", "states_in_config_order"]

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
        length = run_length(member) if member.spec.scheduler is not None else None
        optimizer = build_optimizer(module, member.spec.optimizer, named_parameters=named)
        scheduler = None
        if member.spec.scheduler is not None:
            scheduler = build_scheduler(optimizer, member.spec.scheduler, length)
            scheduler.lightning_config.setdefault("name", f"lr-{member.name}")
        built.append((optimizer, scheduler))
    return built


def states_in_config_order(
    checkpoint: Mapping[str, Any], config_key: str, optim_config: Mapping[str, Any]
) -> dict[str, Any]:
    """The checkpoint's entries to replace so that its optimizer and scheduler states follow ``optim_config``.

    Lightning restores ``optimizer_states`` and ``lr_schedulers`` by position; named optimizers listed in another
    order, or a scheduler removed from one of them, would silently give states to the wrong owner. The saved
    ``optim_config`` (under ``config_key``) says whose each state is: the names in its ``optimizers`` order, and which
    of them had a scheduler. Each optimizer state goes to its name; each scheduler state to its optimizer's scheduler,
    if it still has one; a scheduler new since the checkpoint starts fresh. Nothing is mutated; the returned entries
    (none when nothing moves, or there is nothing to map by name: one optimizer, other names, whose refusal is the
    resume check's) also hold the saved config in the new order, so that later comparisons with it see the same order.

    Raises:
        OptimConfigError: a new scheduler comes before one with a saved state (Lightning's positions cannot skip it).

    Examples:
        >>> saved = {"optimizers": {"a": {"scheduler": None}, "b": {"scheduler": {"name": "step"}}}}
        >>> checkpoint = {"optim_config": saved, "optimizer_states": ["state a", "state b"], "lr_schedulers": ["b"]}
        >>> now = {"optimizers": {"b": {"scheduler": {"name": "step"}}, "a": {"scheduler": None}}}
        >>> replaced = states_in_config_order(checkpoint, "optim_config", now)
        >>> replaced["optimizer_states"], replaced["lr_schedulers"], list(replaced["optim_config"]["optimizers"])
        (['state b', 'state a'], ['b'], ['b', 'a'])
    """
    saved = checkpoint.get(config_key)
    if not isinstance(saved, Mapping) or OPTIMIZERS_KEY not in saved or OPTIMIZERS_KEY not in optim_config:
        return {}
    saved_sections, sections = saved[OPTIMIZERS_KEY], optim_config[OPTIMIZERS_KEY]
    saved_names, names = list(saved_sections), list(sections)
    states = checkpoint.get("optimizer_states") or []
    if sorted(saved_names) != sorted(names) or len(states) != len(names):
        return {}
    saved_scheduled = [name for name in saved_names if saved_sections[name].get("scheduler") is not None]
    scheduled = [name for name in names if sections[name].get("scheduler") is not None]
    if saved_names == names and saved_scheduled == scheduled:
        return {}
    replaced: dict[str, Any] = {}
    if saved_names != names:
        saved_states = dict(zip(saved_names, states, strict=True))
        replaced["optimizer_states"] = [saved_states[name] for name in names]
        replaced[config_key] = {**saved, OPTIMIZERS_KEY: {name: saved_sections[name] for name in names}}
    schedulers = checkpoint.get("lr_schedulers")
    if schedulers is not None and len(schedulers) == len(saved_scheduled):
        by_name = dict(zip(saved_scheduled, schedulers, strict=True))
        replaced["lr_schedulers"] = _scheduler_states_by_name(by_name, scheduled)
    return replaced


def _scheduler_states_by_name(saved: dict[str, Any], scheduled: list[str]) -> list[Any]:
    """The states for ``scheduled``'s schedulers in their order: the saved ones, then none for the new ones, which
    must come last (Lightning gives the states to the schedulers by position, the missing last ones start fresh)."""
    restored = list(itertools.takewhile(saved.__contains__, scheduled))
    later = [name for name in scheduled[len(restored) :] if name in saved]
    if later:
        fitting = ", ".join([*restored, *later, *(name for name in scheduled if name not in saved)])
        raise OptimConfigError(
            f"optim_config.{OPTIMIZERS_KEY}.{scheduled[len(restored)]}.scheduler: new since the checkpoint, it comes "
            f"before {', '.join(later)}, whose saved scheduler state Lightning would give to it (it restores scheduler "
            "states by position). List the optimizers with a new scheduler after those that had one (those with a "
            f"scheduler in the order {fitting}), or start a new run (load the weights with load_from_checkpoint)."
        )
    return [saved[name] for name in restored]
