"""Adaptive norm clipping: the threshold of each step set from the run's own gradient-norm history, on the device.

``optim_config.clipping`` (or ``optim_config.optimizers.<name>.clipping``) names the algorithm:

* ``{name: autoclip, percentile: 10, history: 1000}``: AutoClip (Seetharaman et al. 2020) clips to the
  ``percentile``-th percentile (linear interpolation, numpy's default) of the total norms seen so far, this step's
  included, over the last ``history`` steps (a ring buffer on the device; the paper keeps every norm).
* ``{name: zclip, z_threshold: 2.5, alpha: 0.97, warmup_steps: 25, max_grad_norm: null}``: ZClip (Kumar et al.
  2025, arXiv 2504.02507) keeps an EMA of the norm's mean and variance. The first ``warmup_steps`` norms are collected
  without clipping and give the initial mean and (population) variance. Then a norm whose z-score
  ``(g - mean) / (std + 1e-6)`` exceeds ``z_threshold`` is clipped to ``mean + z_threshold**2 / z * std`` (the
  paper's reciprocal rule, the reference implementation's default ``adaptive_scaling``), and the EMA is updated with
  the norm after clipping: ``mean = alpha * mean + (1 - alpha) * g``, ``var = alpha * var + (1 - alpha) *
  (g - mean)**2`` (the new mean). On steps without a spike the threshold reported is the detection boundary
  ``mean + z_threshold * (std + 1e-6)``. ``max_grad_norm`` caps the threshold of every step, the warm-up's included
  (the authors' code: ``min(adaptive, max_grad_norm)``; it defaults to 1.0 there, to no cap here); the statistics go
  on from the adaptive value, as there. The statistics are kept in float64 (float32 on MPS, which has no float64),
  as the authors' Python floats are; the threshold is returned in float32.

Each threshold is a 0-d tensor on the gradients' device: nothing is synced to the host. A NaN/Inf norm leaves the
history and the statistics as they were. ``history`` and ``warmup_steps`` are at most :data:`MAX_WINDOW`: each step
of the window is kept on the device and in every checkpoint. The gradients are scaled with ``clip_grad_norm_``'s
coefficient ``min(1, threshold / (total + 1e-6))`` (:mod:`lightning_optim.clipping.arithmetic`).

Examples:
    >>> import torch
    >>> spec = resolve_clipping({"name": "autoclip", "percentile": 50, "history": 3})
    >>> autoclip = spec.build()
    >>> [round(float(autoclip(torch.tensor(norm))), 4) for norm in (1.0, 3.0, 2.0, 8.0)]
    [1.0, 2.0, 2.0, 3.0]
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from typing_extensions import override

from lightning_optim.errors import OptimConfigError, checkpoint_error, config_error
from lightning_optim.value_types import conform_section, dataclass_types

__all__ = [
    "CLIPPING_KEY",
    "MAX_WINDOW",
    "AdaptiveThresholds",
    "AutoClip",
    "ClippingSpec",
    "EmaStatistics",
    "ZClip",
    "clipped_sections",
    "refuse_explicit_threshold",
    "refuse_trainer_threshold",
    "resolve_clipping",
    "restored_records",
]

CLIPPING_KEY = "clipping"
"""The ``optim_config`` section (also of each named optimizer) that picks an adaptive clipping algorithm."""

_EPS = 1e-6
"""The epsilon of ZClip's z-score denominator (the reference implementation's ``eps``)."""

MAX_WINDOW = 100_000
"""The largest ``history`` (AutoClip) and ``warmup_steps`` (ZClip): the norms of the window live on the device and in
every checkpoint, and AutoClip sorts them at every step."""


@dataclass(eq=False)
class AutoClip:
    """AutoClip: clip to the ``percentile``-th percentile of the last ``history`` total norms, this step's included.

    Calling it with this step's total norm records the norm and returns the threshold (a device tensor).

    Examples:
        >>> autoclip = AutoClip(percentile=10, history=1000)
        >>> [round(float(autoclip(torch.tensor(norm))), 4) for norm in (4.0, 2.0, 6.0)]
        [4.0, 2.2, 2.4]
    """

    percentile: float = 10.0
    history: int = 1000

    def __post_init__(self) -> None:
        self._norms: torch.Tensor | None = None
        self._count = 0

    @property
    def steps(self) -> int:
        """How many norms it was given."""
        return self._count

    def __call__(self, total: torch.Tensor) -> torch.Tensor:
        norm = total.detach().float()
        if self._norms is None:
            self._norms = torch.full((self.history,), math.nan, device=norm.device)
        elif self._norms.device != norm.device:
            self._norms = self._norms.to(norm.device)
        # A NaN/Inf norm is kept as NaN, which nanquantile leaves out.
        self._norms[self._count % self.history] = torch.where(torch.isfinite(norm), norm, math.nan)
        self._count += 1
        return torch.nanquantile(self._norms[: min(self._count, self.history)], self.percentile / 100)

    def state_dict(self) -> dict[str, Any]:
        """The norms recorded (a tensor, NaN where unfilled) and how many steps were seen."""
        return {"norms": self._norms, "count": self._count}

    def load_state_dict(self, state: Mapping[str, Any], where: str = "state") -> None:
        """Continue from :meth:`state_dict`'s history; the tensor moves to the norms' device at the next call.

        Raises:
            CheckpointError: a record no run could have written (a negative or infinite norm, a tensor of another
                shape, a count that is no whole number), naming its key path ``where.<key>``.
        """
        count = _restored_count(state, "count", where)
        norms = _restored_norms(state, "norms", where, (self.history,), count, f"the last history={self.history} norms")
        self._norms, self._count = _copy(norms), count


class EmaStatistics:
    """An EMA of a scalar's mean and (population) variance on the device, in float64 (float32 on MPS), started from
    its first ``warmup_steps`` values: ZClip's statistics, also those of the spike guard
    (:mod:`lightning_optim.clipping.spike_guard`).

    :meth:`warm` takes the warm-up's values (NaN/Inf left out of the start); then :meth:`z` gives a value's z-score
    ``(x - mean) / (std + 1e-6)`` and :meth:`update` moves the EMA where asked: ``mean = alpha * mean + (1 - alpha) *
    x``, ``var = alpha * var + (1 - alpha) * (x - mean)**2`` (the new mean). Nothing is synced to the host.

    Examples:
        >>> statistics = EmaStatistics(alpha=0.5, warmup_steps=2)
        >>> statistics.warm(torch.tensor(1.0)); statistics.warm(torch.tensor(3.0))
        >>> round(float(statistics.z(torch.tensor(4.0))), 4)
        2.0
        >>> statistics.update(torch.tensor(4.0), torch.tensor(True))
        >>> float(statistics.state_dict()["mean"]), float(statistics.state_dict()["var"]), statistics.count
        (3.0, 1.0, 3)
    """

    def __init__(self, alpha: float, warmup_steps: int) -> None:
        self.alpha = alpha
        self.warmup_steps = warmup_steps
        self.warmup: torch.Tensor | None = None
        self.mean: torch.Tensor | None = None
        self.var: torch.Tensor | None = None
        self.count = 0

    @property
    def warming(self) -> bool:
        """Whether the next value still belongs to the warm-up."""
        return self.count < self.warmup_steps

    def cast(self, value: torch.Tensor) -> torch.Tensor:
        """``value``, detached, in the statistics' dtype."""
        return value.detach().to(_statistics_dtype(value.device))

    def warm(self, value: torch.Tensor) -> None:
        """Record a warm-up value; the last one sets the mean and variance of the finite ones."""
        value = self.cast(value)
        if self.warmup is None:
            self.warmup = torch.full((self.warmup_steps,), math.nan, dtype=value.dtype, device=value.device)
        self.warmup = self.warmup.to(value.device, value.dtype)
        self.warmup[self.count] = torch.where(torch.isfinite(value), value, math.nan)
        self.count += 1
        if self.count == self.warmup_steps:
            self.mean = torch.nanmean(self.warmup)
            self.var = torch.nanmean((self.warmup - self.mean) ** 2)

    def moments(self, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean and variance after the warm-up, on ``value``'s device and in its dtype."""
        assert self.mean is not None and self.var is not None  # set when the warm-up ended
        return self.mean.to(value.device, value.dtype), self.var.to(value.device, value.dtype)

    def z(self, value: torch.Tensor) -> torch.Tensor:
        """The z-score of ``value`` (after the warm-up), in the statistics' dtype."""
        value = self.cast(value)
        mean, var = self.moments(value)
        return (value - mean) / (var.sqrt() + _EPS)

    def update(self, value: torch.Tensor, accept: torch.Tensor) -> None:
        """Move the EMA with ``value`` where the 0-d bool ``accept`` holds; count the step either way."""
        value = self.cast(value)
        mean, var = self.moments(value)
        new_mean = self.alpha * mean + (1 - self.alpha) * value
        new_var = self.alpha * var + (1 - self.alpha) * (value - new_mean) ** 2
        # A warm-up of NaN/Inf values only leaves NaN statistics: the first finite value starts them.
        new_mean = torch.where(torch.isnan(mean), value, new_mean)
        new_var = torch.where(torch.isnan(var), 0.0, new_var)
        self.mean = torch.where(accept, new_mean, mean)
        self.var = torch.where(accept, new_var, var)
        self.count += 1

    def state_dict(self) -> dict[str, Any]:
        """The warm-up values, the EMA mean and variance (tensors, None before they exist) and the steps seen."""
        return {"warmup": self.warmup, "mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: Mapping[str, Any], where: str = "state", what: str = "norm") -> None:
        """Continue from :meth:`state_dict`; the tensors move at the next call.

        Args:
            state: What :meth:`state_dict` returned, as a checkpoint gives it back.
            where: Its key path in the checkpoint, named in errors.
            what: The scalar the statistics follow, in errors: a ``"norm"`` is >= 0; any other value (a loss) may
                have either sign, its variance not.

        Raises:
            CheckpointError: a record no run could have written (a negative variance, or a negative norm, an
                infinite value, a tensor of another shape, statistics missing after the warm-up), naming its key path
                ``where.<key>``.
        """
        count = _restored_count(state, "count", where)
        signed = what != "norm"
        shape = (self.warmup_steps,)
        values = "norms" if what == "norm" else f"{what} values"
        warmup = _restored_norms(
            state, "warmup", where, shape, count, f"the warm-up's warmup_steps={self.warmup_steps} {values}", signed
        )
        started = int(count >= self.warmup_steps)
        mean = _restored_norms(state, "mean", where, (), started, f"the EMA of the {what} (0-d)", signed)
        var = _restored_norms(state, "var", where, (), started, f"the EMA of the {what}'s variance (0-d)")
        self.warmup, self.mean, self.var, self.count = _copy(warmup), _copy(mean), _copy(var), count


@dataclass(eq=False)
class ZClip:
    """ZClip: clip norms whose z-score on an EMA of the norm's mean and variance exceeds ``z_threshold``.

    Calling it with this step's total norm returns the threshold (a float32 device tensor; during the warm-up, when
    nothing is clipped adaptively, ``max_grad_norm`` or +inf) and updates the statistics with the norm after
    adaptive clipping.

    Examples:
        >>> zclip = ZClip(z_threshold=2.5, alpha=0.97, warmup_steps=2)
        >>> [round(float(zclip(torch.tensor(norm))), 4) for norm in (1.0, 3.0, 2.5, 9.0)]
        [inf, inf, 4.5, 2.8892]
        >>> capped = ZClip(z_threshold=2.5, alpha=0.97, warmup_steps=2, max_grad_norm=3.0)
        >>> [round(float(capped(torch.tensor(norm))), 4) for norm in (1.0, 3.0, 2.5, 9.0)]
        [3.0, 3.0, 3.0, 2.8892]
    """

    z_threshold: float = 2.5
    alpha: float = 0.97
    warmup_steps: int = 25
    max_grad_norm: float | None = None

    def __post_init__(self) -> None:
        self._statistics = EmaStatistics(self.alpha, self.warmup_steps)

    @property
    def steps(self) -> int:
        """How many norms it was given."""
        return self._statistics.count

    def __call__(self, total: torch.Tensor) -> torch.Tensor:
        statistics = self._statistics
        norm = statistics.cast(total)
        cap = math.inf if self.max_grad_norm is None else self.max_grad_norm
        if statistics.warming:
            statistics.warm(norm)
            return torch.full_like(norm, cap, dtype=torch.float32)
        mean, var = statistics.moments(norm)
        std = var.sqrt()
        z = statistics.z(norm)
        spike = z > self.z_threshold
        threshold = torch.where(spike, mean + self.z_threshold**2 / z * std, mean + self.z_threshold * (std + _EPS))
        statistics.update(torch.where(spike, threshold, norm), torch.isfinite(norm))
        return torch.where(torch.isnan(threshold), math.inf, threshold).clamp(max=cap).float()

    def state_dict(self) -> dict[str, Any]:
        """The warm-up norms, the EMA mean and variance (tensors, None before they exist) and the steps seen."""
        return self._statistics.state_dict()

    def load_state_dict(self, state: Mapping[str, Any], where: str = "state") -> None:
        """Continue from :meth:`state_dict`; the tensors move to the norms' device at the next call.

        Raises:
            CheckpointError: a record no run could have written (a negative mean or variance, an infinite value, a
                tensor of another shape, statistics missing after the warm-up), naming its key path ``where.<key>``.
        """
        self._statistics.load_state_dict(state, where)


class _Missing:
    @override
    def __repr__(self) -> str:
        return "<missing>"


def _restored_count(state: Any, key: str, where: str) -> int:
    """A restored step count: a whole number >= 0 (a float or a bool is no count)."""
    if not isinstance(state, Mapping):
        raise checkpoint_error(where, state, "a mapping of the threshold's history, as its state_dict() writes")
    count = state.get(key, _Missing())
    if type(count) is not int or count < 0:
        raise checkpoint_error(f"{where}.{key}", count, "an int >= 0 (the steps whose norms were seen)")
    return count


def _restored_norms(
    state: Mapping[str, Any],
    key: str,
    where: str,
    shape: tuple[int, ...],
    count: int,
    what: str,
    signed: bool = False,
) -> torch.Tensor | None:
    """A restored tensor of norms (or of their mean or variance) of ``shape``: None only before any of them was
    recorded (``count`` 0), and each of the first ``count`` values NaN (a non-finite step, which the rules leave out)
    or finite and, unless ``signed`` (a loss), >= 0."""
    value = state.get(key, _Missing())
    expected = (
        f"a floating-point tensor of shape {tuple(shape)} ({what}), each value NaN or finite"
        f"{'' if signed else ' and >= 0'}{', or None before the first step' if count == 0 else ''}"
    )
    if value is None and count == 0:
        return None
    if not (isinstance(value, torch.Tensor) and value.is_floating_point() and tuple(value.shape) == tuple(shape)):
        raise checkpoint_error(f"{where}.{key}", value, expected)
    recorded = value.reshape(-1)[:count].detach()
    allowed = torch.isfinite(recorded) if signed else torch.isfinite(recorded) & (recorded >= 0)
    if not bool((torch.isnan(recorded) | allowed).all()):
        raise checkpoint_error(f"{where}.{key}", value, expected)
    return value


def restored_records(records: Any, key: str) -> dict[str | None, tuple[str, Mapping[str, Any]]]:
    """A checkpoint's per-optimizer records (``[{optimizer, config, state}, ...]``) by optimizer name, each with the
    key path of its ``state``.

    Raises:
        CheckpointError: not a list of such records, naming the key path.

    Examples:
        >>> restored_records([{"optimizer": None, "config": {}, "state": {}}], "optim_clipping")
        {None: ('optim_clipping[0].state', {'optimizer': None, 'config': {}, 'state': {}})}
    """
    if not isinstance(records, list):
        raise checkpoint_error(key, records, "a list of {optimizer, config, state} records")
    pending: dict[str | None, tuple[str, Mapping[str, Any]]] = {}
    for index, record in enumerate(records):
        where = f"{key}[{index}]"
        if not isinstance(record, Mapping) or not {"optimizer", "config", "state"} <= set(record):
            raise checkpoint_error(where, record, "a mapping with the keys optimizer, config and state")
        if record["optimizer"] is not None and not isinstance(record["optimizer"], str):
            raise checkpoint_error(f"{where}.optimizer", record["optimizer"], "an optimizer's name, or None")
        pending[record["optimizer"]] = (f"{where}.state", record)
    return pending


def _statistics_dtype(device: torch.device) -> torch.dtype:
    # MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


def _copy(tensor: torch.Tensor | None) -> torch.Tensor | None:
    # The history is written in place: a checkpoint's tensors stay as they were loaded.
    return tensor.clone() if tensor is not None else None


ALGORITHMS: dict[str, type[AutoClip] | type[ZClip]] = {"autoclip": AutoClip, "zclip": ZClip}


@dataclass(frozen=True)
class ClippingSpec:
    """A checked ``clipping`` section: the plain section (what ``hparams`` and checkpoints store) and how to build it.

    Examples:
        >>> spec = resolve_clipping({"name": "zclip", "warmup_steps": 1e1})
        >>> spec.config, spec.build()
        ({'name': 'zclip', 'warmup_steps': 10}, ZClip(z_threshold=2.5, alpha=0.97, warmup_steps=10, max_grad_norm=None))
    """

    config: dict[str, Any]

    def build(self) -> AutoClip | ZClip:
        """A fresh threshold with an empty history."""
        options = {key: value for key, value in self.config.items() if key != "name"}
        return ALGORITHMS[self.config["name"]](**options)


def resolve_clipping(section: Any, where: str = CLIPPING_KEY) -> ClippingSpec:
    """Check a ``clipping`` section: the name, the keys of that algorithm, their types and ranges.

    Raises:
        OptimConfigError: naming the key, the bad value and what would work.

    Examples:
        >>> resolve_clipping({"name": "autoclip", "percentile": 0})
        Traceback (most recent call last):
        ...
        lightning_optim.errors.OptimConfigError: optim_config.clipping.percentile = 0 is not valid. Expected a \
number in (0, 100], e.g. 10 (clip to the 10th percentile of past norms).
    """
    names = list(ALGORITHMS)
    if not isinstance(section, Mapping) or "name" not in section:
        raise config_error(where, section, "a mapping with a name: autoclip or zclip, e.g. {name: autoclip}", names)
    name = section["name"]
    if name not in ALGORITHMS:
        raise config_error(f"{where}.name", name, "one of: autoclip, zclip", names)
    types = dataclass_types(ALGORITHMS[name])
    for key, value in section.items():
        if key != "name" and key not in types:
            raise config_error(f"{where}.{key}", value, f"a key of {name}: {', '.join(types)}", types, True)
    config = conform_section(section, types, where)
    _check_ranges(config, where)
    return ClippingSpec(config)


_RANGES = {
    "percentile": (lambda v: 0 < v <= 100, "a number in (0, 100], e.g. 10 (clip to the 10th percentile of past norms)"),
    "history": (
        lambda v: 1 <= v <= MAX_WINDOW,
        f"an integer in [1, {MAX_WINDOW}], e.g. 1000 (the number of past norms kept, on the device and in every "
        "checkpoint)",
    ),
    "z_threshold": (lambda v: v > 0, "a number > 0, e.g. 2.5 (the z-score above which a norm is clipped)"),
    "alpha": (lambda v: 0 < v < 1, "a number in (0, 1), e.g. 0.97 (the EMA's weight of the past)"),
    "warmup_steps": (
        lambda v: 1 <= v <= MAX_WINDOW,
        f"an integer in [1, {MAX_WINDOW}], e.g. 25 (the steps whose norms start the statistics, kept on the device "
        "and in every checkpoint until then)",
    ),
    "max_grad_norm": (
        lambda v: v is None or (math.isfinite(v) and v > 0),
        "a finite norm > 0, e.g. 1.0 (the authors' default: no step's threshold exceeds it), or null for no cap",
    ),
}


def _check_ranges(config: Mapping[str, Any], where: str) -> None:
    for key, value in config.items():
        if key in _RANGES and not _RANGES[key][0](value):
            raise config_error(f"{where}.{key}", value, _RANGES[key][1])


def refuse_trainer_threshold(trainer: Any, clipped: list[str]) -> None:
    """Refuse ``Trainer(gradient_clip_val=...)`` or ``Trainer(gradient_clip_algorithm="value")`` beside a ``clipping``
    section.

    ``clipped`` names the ``clipping`` sections in use (``optim_config.clipping``). A value as well would set the
    threshold twice; an adaptive threshold clips by norm only.

    Examples:
        >>> from types import SimpleNamespace
        >>> refuse_trainer_threshold(SimpleNamespace(gradient_clip_val=1.0), ["optim_config.clipping"])
        Traceback (most recent call last):
        ...
        lightning_optim.errors.OptimConfigError: Trainer(gradient_clip_val=1.0) and optim_config.clipping both set \
the clipping threshold. Keep one: unset gradient_clip_val (trainer.gradient_clip_val=null) for the adaptive \
threshold, or remove optim_config.clipping for a fixed one.
        >>> refuse_trainer_threshold(SimpleNamespace(gradient_clip_algorithm="value"), ["optim_config.clipping"])
        Traceback (most recent call last):
        ...
        lightning_optim.errors.OptimConfigError: Trainer(gradient_clip_algorithm='value') with \
optim_config.clipping: an adaptive threshold clips by norm. Unset gradient_clip_algorithm \
(trainer.gradient_clip_algorithm=null) or set it to 'norm', or remove optim_config.clipping and clip by value at a \
fixed gradient_clip_val.
    """
    if not clipped:
        return
    threshold = getattr(trainer, "gradient_clip_val", None)
    if threshold is not None:
        raise OptimConfigError(
            f"Trainer(gradient_clip_val={threshold!r}) and {', '.join(clipped)} both set the clipping threshold. Keep "
            "one: unset gradient_clip_val (trainer.gradient_clip_val=null) for the adaptive threshold, or remove "
            f"{clipped[0]} for a fixed one."
        )
    algorithm = getattr(trainer, "gradient_clip_algorithm", None)
    # Lightning's Trainer keeps a GradClipAlgorithmType enum, whose value is the string.
    if getattr(algorithm, "value", algorithm) == "value":
        raise OptimConfigError(
            f"Trainer(gradient_clip_algorithm='value') with {', '.join(clipped)}: an adaptive threshold clips by "
            "norm. Unset gradient_clip_algorithm (trainer.gradient_clip_algorithm=null) or set it to 'norm', or "
            f"remove {clipped[0]} and clip by value at a fixed gradient_clip_val."
        )


def refuse_explicit_threshold(gradient_clip_val: float | None, scaler: Any) -> None:
    """Refuse, under manual optimization, what an optimizer with a ``clipping`` section cannot clip with.

    ``self.clip_gradients(opt)`` without a value clips at the adaptive threshold. A value as well would be a second
    threshold; under a ``GradScaler`` (``16-mixed``) the gradients are still scaled when ``training_step`` clips.

    Examples:
        >>> refuse_explicit_threshold(0.5, None)
        Traceback (most recent call last):
        ...
        lightning_optim.errors.OptimConfigError: clip_gradients(gradient_clip_val=0.5) for an optimizer whose \
optim_config has a clipping section: its adaptive threshold clips it. Call self.clip_gradients(opt) without a value, \
or remove the clipping section.
    """
    if gradient_clip_val is not None:
        raise OptimConfigError(
            f"clip_gradients(gradient_clip_val={gradient_clip_val!r}) for an optimizer whose optim_config has a "
            "clipping section: its adaptive threshold clips it. Call self.clip_gradients(opt) without a value, or "
            "remove the clipping section."
        )
    if scaler is not None and scaler.is_enabled():
        raise OptimConfigError(
            "optim_config clipping under manual optimization with a GradScaler (16-mixed) is not supported: the "
            "gradients are still scaled when training_step clips. Use bf16-mixed or 32-bit, or automatic optimization."
        )


class AdaptiveThresholds:
    """The adaptive thresholds of a model's optimizers, by optimizer name (None in the single form), saved in and
    restored from checkpoints.

    Each ``configure_optimizers`` (each fit) starts them afresh, as the optimizers are; a checkpoint's history is
    restored into them whether it is loaded before (a fit resuming on a single device or DDP) or after (FSDP,
    DeepSpeed, a tuner restoring its own checkpoint) they are built.

    Examples:
        >>> p = torch.nn.Parameter(torch.zeros(1))
        >>> sgd = torch.optim.SGD([p], lr=0.1)
        >>> thresholds = AdaptiveThresholds()
        >>> thresholds.configure({None: resolve_clipping({"name": "autoclip"})}, [(None, sgd)])
        >>> thresholds.of(sgd)
        AutoClip(percentile=10.0, history=1000)
    """

    def __init__(self) -> None:
        self._built: dict[str | None, tuple[ClippingSpec, AutoClip | ZClip]] = {}
        self._by_optimizer: dict[int, AutoClip | ZClip] = {}
        self._pending: dict[str | None, tuple[str, Mapping[str, Any]]] = {}
        self._use_check: tuple[int, dict[str | None, int]] | None = None

    def configure(
        self,
        specs: Mapping[str | None, ClippingSpec],
        optimizers: list[tuple[str | None, torch.optim.Optimizer]],
        resuming: bool = False,
    ) -> None:
        """Give each optimizer (by name) a fresh threshold; ``resuming`` (the fit has a ``ckpt_path``) continues it
        from the history loaded before."""
        self._built = {name: (spec, spec.build()) for name, spec in specs.items()}
        if resuming:
            self._restore()
        self._pending = {}
        self._by_optimizer = {id(optimizer): self._built[name][1] for name, optimizer in optimizers if name in specs}

    def start_use_check(self, optimizer_steps: int) -> None:
        """Under manual optimization, at the start of training: :meth:`check_used` warns after the first epoch."""
        self._use_check = (optimizer_steps, {name: threshold.steps for name, (_, threshold) in self._built.items()})

    def check_used(self, optimizer_steps: int) -> None:
        """Warn once for thresholds never asked (no ``self.clip_gradients(opt)``) while optimizers stepped."""
        if self._use_check is None or optimizer_steps == self._use_check[0]:
            return
        started = self._use_check[1]
        self._use_check = None
        unused = [name for name, (_, threshold) in self._built.items() if threshold.steps == started.get(name)]
        if unused:
            warnings.warn(
                f"Manual optimization: {', '.join(clipped_sections(dict.fromkeys(unused)))} clipped nothing during "
                "the first epoch: Lightning does not clip under manual optimization. Call self.clip_gradients(opt) "
                "(no value) after manual_backward and before opt.step() for that optimizer.",
                UserWarning,
                stacklevel=3,
            )

    def of(self, optimizer: torch.optim.Optimizer) -> AutoClip | ZClip | None:
        """The threshold of this (torch) optimizer, or None when its config has no ``clipping``."""
        return self._by_optimizer.get(id(optimizer))

    def __bool__(self) -> bool:
        return bool(self._by_optimizer)

    def state_dict(self) -> list[dict[str, Any]]:
        """Per optimizer: its name (None: the single form), its section, and the threshold's history."""
        return [
            {"optimizer": name, "config": spec.config, "state": threshold.state_dict()}
            for name, (spec, threshold) in self._built.items()
        ]

    def load_state_dict(self, records: Any, key: str = "optim_clipping") -> None:
        """Restore each record whose optimizer has the same section now (at once, or at the next :meth:`configure`
        when none is built yet); a changed section starts with an empty history.

        Args:
            records: What :meth:`state_dict` returned, as a checkpoint gives it back.
            key: The checkpoint entry holding ``records``, named in errors.

        Raises:
            CheckpointError: a record of another shape or with values no run could have written (see the rules'
                ``load_state_dict``), naming its key path, e.g. ``optim_clipping[0].state.norms``.
        """
        self._pending = restored_records(records, key)
        self._restore()

    def _restore(self) -> None:
        for name, (spec, threshold) in self._built.items():
            where, record = self._pending.get(name, ("", None))
            if record is not None and record["config"] == spec.config:
                threshold.load_state_dict(record["state"], where)


def clipped_sections(specs: Mapping[str | None, Any]) -> list[str]:
    """The key paths of the ``clipping`` sections in use, for messages.

    Examples:
        >>> clipped_sections({None: ClippingSpec({"name": "zclip"})})
        ['optim_config.clipping']
    """
    return [f"optim_config.{f'optimizers.{name}.' if name else ''}{CLIPPING_KEY}" for name in specs]
