"""The spike guard: skip the optimizer step whose gradient norm or loss is a spike, decided on the device.

``optim_config.spike_guard`` (or ``optim_config.optimizers.<name>.spike_guard``) is ``{on: grad_norm | loss,
z_threshold: 6.0, alpha: 0.99, warmup_steps: 25}``. A :class:`SpikeGuard` keeps an EMA of the metric's mean and
variance (ZClip's :class:`~lightning_optim.clipping.adaptive.EmaStatistics`): the first ``warmup_steps`` values start
them and are never skipped; then a value whose z-score ``(x - mean) / (std + 1e-6)`` exceeds ``z_threshold`` is a
spike, its step is skipped and the value stays out of the statistics (so a run of spikes cannot raise the bar for the
next ones). NaN values never enter the statistics and are no spike (that is the non-finite policy's business); +Inf
is a spike.

:func:`~lightning_optim.clipping.skip.skip_step` carries the decision out: a fused optimizer skips itself through
``found_inf``
(:func:`~lightning_optim.clipping.fused_step.skip_in_step`) and the BatchNorm running statistics are put back with
``torch.where``, all on the device; any other optimizer needs the decision on the host (one read per step): its
gradients are dropped and the running statistics put back.

Examples:
    >>> import torch
    >>> guard = resolve_spike_guard({"z_threshold": 3, "warmup_steps": 3}).build()
    >>> [bool(guard(torch.tensor(x))[0]) for x in (1.0, 1.2, 0.8, 1.1, 50.0, 0.9)]
    [False, False, False, False, True, False]
    >>> int(guard.skipped)
    1
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from lightning_optim.clipping.adaptive import EmaStatistics, restored_records
from lightning_optim.errors import checkpoint_error, config_error
from lightning_optim.value_types import conform_section, dataclass_types

__all__ = [
    "SPIKE_GUARD_KEY",
    "SpikeGuard",
    "SpikeGuardSpec",
    "SpikeGuards",
    "guarded_sections",
    "resolve_spike_guard",
]

SPIKE_GUARD_KEY = "spike_guard"
"""The ``optim_config`` section (also of each named optimizer) that turns the spike guard on."""

METRICS = ("grad_norm", "loss")
"""What the guard can watch: the total gradient norm before clipping, or the loss of the step."""


@dataclass(eq=False)
class SpikeGuard:
    """Decide, per optimizer step, whether ``on``'s value is a spike; count the spikes.

    Calling it with the step's value (a 0-d device tensor) returns ``(spike, z)``: a 0-d bool and the z-score (NaN
    during the warm-up), both on the value's device; the statistics move with the value unless it is a spike or NaN.

    Examples:
        >>> guard = SpikeGuard(z_threshold=2.0, alpha=0.5, warmup_steps=2)
        >>> [(bool(spike), round(float(z), 3)) for spike, z in map(guard, torch.tensor([1.0, 3.0, 2.5, 9.0]))]
        [(False, nan), (False, nan), (False, 0.5), (True, 9.261)]
        >>> int(guard.skipped), float(guard.state_dict()["statistics"]["mean"])
        (1, 2.25)
    """

    on: str = "grad_norm"
    z_threshold: float = 6.0
    alpha: float = 0.99
    warmup_steps: int = 25

    def __post_init__(self) -> None:
        self._statistics = EmaStatistics(self.alpha, self.warmup_steps)
        self._skipped: torch.Tensor | None = None

    @property
    def skipped(self) -> torch.Tensor:
        """How many steps it called spikes (a device tensor once it has seen a value)."""
        return self._skipped if self._skipped is not None else torch.tensor(0)

    def __call__(self, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        value = self._statistics.cast(value)
        if self._statistics.warming:
            self._statistics.warm(value)
            z = torch.full_like(value, math.nan)
            spike = torch.zeros_like(value, dtype=torch.bool)
        else:
            z = self._statistics.z(value)
            spike = z > self.z_threshold
            self._statistics.update(value, torch.isfinite(value) & ~spike)
        self._skipped = spike.long() if self._skipped is None else self._skipped.to(spike.device) + spike
        return spike, z

    def state_dict(self) -> dict[str, Any]:
        """The statistics (:meth:`EmaStatistics.state_dict`) and the count of skipped steps."""
        return {"statistics": self._statistics.state_dict(), "skipped": self._skipped}

    def load_state_dict(self, state: Mapping[str, Any], where: str = "state") -> None:
        """Continue from :meth:`state_dict`.

        Raises:
            CheckpointError: a record no run could have written (statistics as :class:`EmaStatistics` refuses them,
                a skip count that is no 0-d integer tensor >= 0), naming its key path ``where.<key>``.
        """
        if not isinstance(state, Mapping) or "statistics" not in state:
            raise checkpoint_error(where, state, "a mapping with the guard's statistics and skip count")
        what = "norm" if self.on == "grad_norm" else self.on
        self._statistics.load_state_dict(state["statistics"], f"{where}.statistics", what)
        skipped = state.get("skipped")
        if skipped is not None and not (
            isinstance(skipped, torch.Tensor)
            and skipped.dim() == 0
            and not skipped.is_floating_point()
            and int(skipped) >= 0
        ):
            expected = "a 0-d integer tensor >= 0 (the steps skipped), or None"
            raise checkpoint_error(f"{where}.skipped", skipped, expected)
        self._skipped = skipped.clone() if skipped is not None else None


@dataclass(frozen=True)
class SpikeGuardSpec:
    """A checked ``spike_guard`` section: the plain section (what ``hparams`` and checkpoints store) and its guard.

    Examples:
        >>> spec = resolve_spike_guard({"on": "loss", "warmup_steps": 1e1})
        >>> spec.config, spec.build()
        ({'on': 'loss', 'warmup_steps': 10}, SpikeGuard(on='loss', z_threshold=6.0, alpha=0.99, warmup_steps=10))
    """

    config: dict[str, Any]

    @property
    def on(self) -> str:
        """What the guard watches: ``grad_norm`` or ``loss``."""
        return self.config.get("on", "grad_norm")

    def build(self) -> SpikeGuard:
        """A fresh guard with empty statistics."""
        return SpikeGuard(**self.config)


_RANGES = {
    "on": (lambda v: v in METRICS, "one of: grad_norm, loss (what the guard watches)"),
    "z_threshold": (lambda v: v > 0, "a number > 0, e.g. 6.0 (the z-score above which a step is skipped)"),
    "alpha": (lambda v: 0 < v < 1, "a number in (0, 1), e.g. 0.99 (the EMA's weight of the past)"),
    "warmup_steps": (lambda v: v >= 1, "an integer >= 1, e.g. 25 (the steps that start the statistics, never skipped)"),
}


def resolve_spike_guard(section: Any, where: str = SPIKE_GUARD_KEY) -> SpikeGuardSpec:
    """Check a ``spike_guard`` section: its keys, their types and ranges (every key has a default).

    Raises:
        OptimConfigError: naming the key, the bad value and what would work.

    Examples:
        >>> resolve_spike_guard({"on": "grad"})
        Traceback (most recent call last):
        ...
        lightning_optim.errors.OptimConfigError: optim_config.spike_guard.on = 'grad' is not valid. Did you mean \
'grad_norm'? Expected one of: grad_norm, loss (what the guard watches).
    """
    if not isinstance(section, Mapping):
        raise config_error(where, section, "a mapping, e.g. {on: grad_norm, z_threshold: 6.0}, or null for no guard")
    types = dataclass_types(SpikeGuard)
    for key, value in section.items():
        if key not in types:
            raise config_error(f"{where}.{key}", value, f"a key of spike_guard: {', '.join(types)}", types, True)
    config = conform_section(section, types, where)
    for key, value in config.items():
        accepts, expected = _RANGES[key]
        if not accepts(value):
            raise config_error(f"{where}.{key}", value, expected, METRICS if key == "on" else ())
    return SpikeGuardSpec(config)


def guarded_sections(specs: Mapping[str | None, Any]) -> list[str]:
    """The key paths of the ``spike_guard`` sections in use, for messages.

    Examples:
        >>> guarded_sections({None: SpikeGuardSpec({}), "critic": SpikeGuardSpec({})})
        ['optim_config.spike_guard', 'optim_config.optimizers.critic.spike_guard']
    """
    return [f"optim_config.{f'optimizers.{name}.' if name else ''}{SPIKE_GUARD_KEY}" for name in specs]


class SpikeGuards:
    """The spike guards of a model's optimizers, by optimizer name (None in the single form), saved in and restored
    from checkpoints as :class:`~lightning_optim.clipping.adaptive.AdaptiveThresholds` are.

    Examples:
        >>> p = torch.nn.Parameter(torch.zeros(1))
        >>> sgd = torch.optim.SGD([p], lr=0.1)
        >>> guards = SpikeGuards()
        >>> guards.configure({None: resolve_spike_guard({"on": "loss"})}, [(None, sgd)])
        >>> guards.of(sgd), guards.watch_loss
        (SpikeGuard(on='loss', z_threshold=6.0, alpha=0.99, warmup_steps=25), True)
    """

    def __init__(self) -> None:
        self.built: dict[str | None, tuple[SpikeGuardSpec, SpikeGuard]] = {}
        self._by_optimizer: dict[int, tuple[str | None, SpikeGuard]] = {}
        self._pending: dict[str | None, tuple[str, Mapping[str, Any]]] = {}

    def configure(
        self, specs: Mapping[str | None, SpikeGuardSpec], optimizers: list[tuple[str | None, torch.optim.Optimizer]]
    ) -> None:
        """Give each optimizer (by name) with a section a fresh guard, continued from a history loaded before."""
        self.built = {name: (spec, spec.build()) for name, spec in specs.items()}
        self._restore()
        self._pending = {}
        self._by_optimizer = {
            id(optimizer): (name, self.built[name][1]) for name, optimizer in optimizers if name in self.built
        }

    @property
    def watch_loss(self) -> bool:
        """Whether a guard watches the loss."""
        return any(guard.on == "loss" for _, guard in self.built.values())

    def of(self, optimizer: torch.optim.Optimizer) -> SpikeGuard | None:
        """The guard of this (torch) optimizer, or None."""
        found = self._by_optimizer.get(id(optimizer))
        return found[1] if found is not None else None

    def name_of(self, optimizer: torch.optim.Optimizer) -> str | None:
        """The name of this (torch) optimizer under ``optimizers`` (None in the single form)."""
        found = self._by_optimizer.get(id(optimizer))
        return found[0] if found is not None else None

    def state_dict(self) -> list[dict[str, Any]]:
        """Per optimizer: its name (None: the single form), its section and its guard's state."""
        return [
            {"optimizer": name, "config": spec.config, "state": guard.state_dict()}
            for name, (spec, guard) in self.built.items()
        ]

    def load_state_dict(self, records: Any, key: str = "optim_spike_guard") -> None:
        """Restore each record whose optimizer has the same section now (at once, or at the next :meth:`configure`);
        a changed section starts afresh.

        Raises:
            CheckpointError: a record of another shape or with values no run could have written, naming its key
                path, e.g. ``optim_spike_guard[0].state.statistics.var``.
        """
        self._pending = restored_records(records, key)
        self._restore()

    def _restore(self) -> None:
        for name, (spec, guard) in self.built.items():
            where, record = self._pending.get(name, ("", None))
            if record is not None and record["config"] == spec.config:
                guard.load_state_dict(record["state"], where)
