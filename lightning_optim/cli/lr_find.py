"""``lightning-optim-lr-find``: Lightning's lr range test on the configured model, optimizer and data.

Takes the same config and overrides as ``lightning-optim-train``, plus the finder's options under ``lr_find.`` and
``out=`` (the PNG's path). Lightning's finder (``Tuner.lr_find``) trains from ``lr_find.min_lr`` to
``lr_find.max_lr`` over ``lr_find.num_training`` optimizer steps with the configured optimizer, then restores the
model. The suggestion is where the smoothed loss falls fastest against log(lr)
(:func:`lightning_optim.stats.lr_suggestion.suggest_lr`); Lightning's own ``suggestion()`` takes the slope against
the lr itself and lands about ten times lower (Lightning #21141), so it is printed beside it, not used. The app draws
the smoothed loss against the lr with both marked, and prints the override to use as its last line.

Examples (shell)::

    lightning-optim-lr-find optimizer=adamw                   # digits CNN, AdamW: prints e.g. optimizer.lr=0.00275
    lightning-optim-lr-find optimizer=sgd lr_find.max_lr=10 out=/tmp/sgd_range.png
    lightning-optim-lr-find experiment=transformer lr_find.num_training=200
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.tuner.tuning import Tuner
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from lightning_optim.cli.common import (
    CONFIG_PATH,
    apply_app_settings,
    compose_optim_config,
    instantiate_model,
    whole_number,
)
from lightning_optim.config.validation import OptimSpec, resolve_optim_config
from lightning_optim.errors import OptimConfigError, did_you_mean
from lightning_optim.fit.driver import unscaled_lr
from lightning_optim.fit.lr_finder import config_with_lr
from lightning_optim.fit.mixin import OptimMixin
from lightning_optim.optim.registry import MAX_LR
from lightning_optim.stats.lr_suggestion import RULE, suggest_lr

__all__ = ["LrRangeTest", "check_options", "find_lr", "lr_override", "main", "plot"]

SKIP_BEGIN, SKIP_END = 10, 1
"""The points ``suggestion()`` leaves out at each end of the curve (Lightning's defaults)."""

MIN_NUM_TRAINING = SKIP_BEGIN + SKIP_END + 2
"""The fewest steps that can give a suggestion: it takes the loss's gradient, which needs two points left."""

MAX_NUM_TRAINING = 10_000
"""The longest search taken: a range test needs a hundred to a few thousand steps; each step is a training step."""

MODES = ("exponential", "linear")


@dataclass(frozen=True)
class LrRangeTest:
    """What a search found: each step's lr and smoothed loss, the suggestion (:func:`suggest_lr`), and Lightning's
    own ``suggestion()`` (``None``: too few finite losses)."""

    lrs: list[float]
    losses: list[float]
    suggestion: float | None
    mode: str
    lightning_suggestion: float | None = None
    configured: tuple[float, str] | None = None
    """With ``lr_scaling``: the suggestion as ``optimizer.lr`` (at ``base_batch_size``) and the line saying why."""

    @property
    def override(self) -> str | None:
        """The ``optimizer.lr=...`` override giving the suggestion (None without one)."""
        if self.suggestion is None:
            return None
        return lr_override(self.configured[0] if self.configured is not None else self.suggestion)


def check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The ``lr_find`` section as ``Tuner.lr_find``'s keyword arguments, checked.

    Raises:
        ValueError: naming the key, its bad value and what would work.

    Examples:
        >>> check_options({"min_lr": 1e-8, "max_lr": 1, "num_training": 1e2, "mode": "exponential",
        ...                "early_stop_threshold": None})["num_training"]
        100
        >>> check_options({"min_lr": 0, "max_lr": 1, "num_training": 100, "mode": "exponential"})
        Traceback (most recent call last):
        ...
        ValueError: lr_find.min_lr = 0 is not valid. Expected a finite learning rate > 0, e.g. 1e-8.
    """
    checked = dict(options)
    min_lr, max_lr = checked.get("min_lr"), checked.get("max_lr")
    if not _is_number(min_lr) or not 0 < min_lr < MAX_LR:
        raise _option_error("min_lr", min_lr, "a finite learning rate > 0, e.g. 1e-8")
    if not _is_number(max_lr) or not min_lr < max_lr <= MAX_LR:
        raise _option_error(
            "max_lr",
            max_lr,
            f"a finite learning rate above lr_find.min_lr = {min_lr!r} and at most {MAX_LR:.4g}, e.g. 1.0",
        )
    num_training = checked.get("num_training")
    if (
        not _is_number(num_training)
        or not MIN_NUM_TRAINING <= num_training <= MAX_NUM_TRAINING
        or not float(num_training).is_integer()
    ):
        expected = (
            f"a whole number of steps in [{MIN_NUM_TRAINING}, {MAX_NUM_TRAINING}] (the suggestion leaves out the "
            f"first {SKIP_BEGIN} and the last {SKIP_END} points and needs two more; each step trains), e.g. 100"
        )
        raise _option_error("num_training", num_training, expected)
    checked["num_training"] = whole_number("lr_find.num_training", num_training)
    if checked.get("mode") not in MODES:
        raise _option_error("mode", checked.get("mode"), "'exponential' or 'linear'", MODES)
    threshold = checked.get("early_stop_threshold")
    if threshold is not None and (not _is_number(threshold) or not 1 < threshold < math.inf):
        raise _option_error(
            "early_stop_threshold", threshold, "a finite factor > 1 (e.g. 4.0), or null to never stop early"
        )
    return checked


def refuse_untunable(model: OptimMixin, optim_config: Mapping[str, Any]) -> None:
    """Refuse, before any training, a config whose ``optimizer.lr`` the printed override could not set.

    Raises:
        OptimConfigError: several optimizers (reading ``model.lr`` raises: there is no single lr), or a ``cyclic``
            or ``onecycle`` schedule, which sets every group's lr from its own arguments.
    """
    lr = model.lr
    spec = resolve_optim_config(optim_config)
    try:
        # model.lr has refused several optimizers already: spec is the one optimizer's.
        config_with_lr(optim_config, lr, spec if isinstance(spec, OptimSpec) else None)
    except OptimConfigError:
        scheduler = optim_config["scheduler"]
        name = scheduler.get("name") or scheduler.get("_target_")
        own = " and ".join(f"scheduler.{key}" for key in ("base_lr", "max_lr") if key in scheduler)
        raise OptimConfigError(
            f"lightning-optim-lr-find finds optimizer.lr, and scheduler {name!r} does not use it: it sets every "
            f"group's lr from {own or 'its own arguments'}. Run the range test with scheduler=none (during the "
            f"search Lightning's finder replaces any schedule with its own), then choose {own or 'those'} from the "
            "curve."
        ) from None


def find_lr(cfg: DictConfig) -> LrRangeTest:
    """Run Lightning's lr finder on the model, optimizer and data ``cfg`` describes (the model is restored after).

    Args:
        cfg: The composed ``lr_find`` config.

    Raises:
        ValueError: a bad ``lr_find`` option. OptimConfigError: a bad ``optim_config``, or one the override could
            not set (:func:`refuse_untunable`). All before any training.
    """
    apply_app_settings(cfg)
    options = check_options(OmegaConf.to_container(cfg.lr_find, resolve=True))  # type: ignore[arg-type]
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    optim_config = compose_optim_config(cfg)
    model = instantiate_model(cfg.model, optim_config)
    if not isinstance(model, OptimMixin):
        raise TypeError(f"model {cfg.model._target_} does not use OptimMixin, so it has no optim_config to tune.")
    refuse_untunable(model, optim_config)
    # The finder swaps in its own callbacks and a dummy logger during the search and stops the fit after it.
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False)
    finder = Tuner(trainer).lr_find(model, datamodule=datamodule, update_attr=False, **options)
    if finder is None:
        raise RuntimeError("Lightning's lr finder did not run: it skips the search when trainer.fast_dev_run is set.")
    lrs, losses = list(finder.results["lr"]), list(finder.results["loss"])
    found = suggest_lr(lrs, losses, SKIP_BEGIN, SKIP_END)
    suggestion = found.lr if found is not None else None
    spec = resolve_optim_config(optim_config)
    scaling = spec.optimizer.lr_scaling if isinstance(spec, OptimSpec) else None
    configured = None
    if suggestion is not None and scaling is not None:
        lr, line = unscaled_lr(scaling, trainer, suggestion)
        configured = (lr, str(line))
    return LrRangeTest(lrs, losses, suggestion, options["mode"], finder.suggestion(SKIP_BEGIN, SKIP_END), configured)


def lr_override(lr: float) -> str:
    """The command-line override that sets ``lr``, to three significant digits.

    Examples:
        >>> lr_override(0.0027542287033381664), lr_override(2.5e-05)
        ('optimizer.lr=0.00275', 'optimizer.lr=2.5e-05')
    """
    return f"optimizer.lr={lr:.3g}"


def plot(search: LrRangeTest, title: str) -> Figure:
    """The smoothed loss against the lr (a log axis for an exponential search), the suggestion and Lightning's own
    marked."""
    # A bare Figure renders with Agg and needs no pyplot state or display.
    figure = Figure(figsize=(8, 4.5))
    axes = figure.add_subplot()
    axes.plot(search.lrs, search.losses, color="C0", label="training loss (smoothed)")
    if search.mode == "exponential":
        axes.set_xscale("log")
    if search.suggestion is not None:
        loss = search.losses[search.lrs.index(search.suggestion)]
        axes.axvline(search.suggestion, color="C3", linestyle=":", linewidth=1)
        axes.plot([search.suggestion], [loss], "o", color="C3", markersize=8, label=search.override)
    if search.lightning_suggestion is not None:
        loss = search.losses[search.lrs.index(search.lightning_suggestion)]
        label = f"Lightning's suggestion() {search.lightning_suggestion:.3g} (slope against lr)"
        axes.plot([search.lightning_suggestion], [loss], "x", color="C7", markersize=8, label=label)
    axes.set(xlabel="learning rate", ylabel="training loss (smoothed)", title=title)
    axes.grid(alpha=0.3)
    axes.legend(title=f"suggestion: {RULE}" if search.suggestion is not None else None)
    figure.tight_layout()
    return figure


def describe(search: LrRangeTest) -> str:
    """One line on the search: how many lrs over which range, the suggestion at full precision and the rule that
    picked it, and Lightning's own suggestion."""
    line = f"searched {len(search.lrs)} learning rates from {search.lrs[0]:.3g} to {search.lrs[-1]:.3g} ({search.mode})"
    if search.suggestion is None:
        return line
    return (
        f"{line}; suggestion {search.suggestion!r} ({RULE}); Lightning's suggestion() "
        f"{search.lightning_suggestion!r} (steepest descent against lr itself, Lightning #21141)"
    )


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="lr_find")
def main(cfg: DictConfig) -> None:
    """Console script ``lightning-optim-lr-find``."""
    search = find_lr(cfg)
    out = Path(cfg.out)
    if not out.is_absolute():
        out = Path(HydraConfig.get().runtime.output_dir) / out
    model = str(cfg.model._target_).rsplit(".", 1)[-1]
    title = f"lr range test: {cfg.optimizer.name} on {model}, {len(search.lrs)} steps"
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(search, title).savefig(out, dpi=100)
    console = Console()
    say = functools.partial(console.print, markup=False, highlight=False, soft_wrap=True)
    say(describe(search))
    say(f"lr range test drawn to {out.resolve()}")
    if search.suggestion is None:
        raise RuntimeError(
            f"No suggestion: after leaving out the first {SKIP_BEGIN} and last {SKIP_END} points, fewer than two of "
            f"the {len(search.losses)} losses are finite (the search stopped early, its loss diverging, or the "
            "trainer's max_epochs and limit_train_batches ended it). See the curve; lower lr_find.max_lr, raise "
            "lr_find.early_stop_threshold or lr_find.num_training."
        )
    if search.configured is not None:
        say(search.configured[1])
    say(search.override)


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _option_error(key: str, value: Any, expected: str, choices: Sequence[str] = ()) -> ValueError:
    return ValueError(f"lr_find.{key} = {value!r} is not valid.{did_you_mean(value, choices)} Expected {expected}.")


if __name__ == "__main__":
    main()
