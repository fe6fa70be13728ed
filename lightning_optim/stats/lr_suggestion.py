"""Where to set the lr after an lr range test: the steepest descent of the smoothed loss on the log-lr axis.

An lr range test raises the lr exponentially and records the smoothed training loss at each step. Lightning's
``_LRFinder.suggestion`` takes the slope of that loss against the lr itself (``torch.gradient(losses,
spacing=[lrs])``), which is the slope against log lr divided by the lr: the smallest lrs of the search win, and its
suggestion sits about ten times below where the loss falls fastest (Lightning #21141). :func:`suggest_lr` takes the
slope against ``log(lr)``, the axis the search is evenly spaced on and the one the curve is drawn on, and picks its
most negative point, leaving out the first ``skip_begin`` and last ``skip_end`` points as Lightning does.

Examples:
    >>> import math
    >>> lrs = [10 ** (k / 4) for k in range(-32, 1)]  # 1e-8 to 1, four points per decade
    >>> losses = [2.0 - math.tanh(math.log10(lr) + 3) for lr in lrs]  # falls fastest at lr 1e-3
    >>> suggestion = suggest_lr(lrs, losses)
    >>> round(suggestion.lr, 6), suggestion.rule
    (0.001, 'steepest descent of the smoothed loss against log(lr)')
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["RULE", "LrSuggestion", "suggest_lr"]

RULE = "steepest descent of the smoothed loss against log(lr)"
"""The rule :func:`suggest_lr` applies, in words, for what the apps print beside the suggestion."""


@dataclass(frozen=True)
class LrSuggestion:
    """A suggested lr, where it is in the search (``index`` into the lrs given) and the rule that picked it."""

    lr: float
    index: int
    rule: str = RULE


def suggest_lr(
    lrs: Sequence[float], losses: Sequence[float], skip_begin: int = 10, skip_end: int = 1
) -> LrSuggestion | None:
    """The lr where the smoothed loss falls fastest against ``log(lr)``.

    Points whose loss is NaN/Inf (a diverged end of the search) are left out, each lr staying with its own loss.

    Args:
        lrs: the lr of each step of the search (> 0, increasing).
        losses: the smoothed loss at each of them.
        skip_begin: points left out at the start (the loss has not started to move there).
        skip_end: points left out at the end (the loss is diverging there).

    Returns:
        The suggestion, or None when fewer than two finite points remain.

    Examples:
        >>> suggest_lr([1e-3, 1e-2, 1e-1, 1.0], [1.0, 0.9, 0.5, 0.4], skip_begin=0, skip_end=0).lr
        0.1
        >>> suggest_lr([1e-3, 1e-2], [1.0, float("nan")], skip_begin=0, skip_end=0) is None
        True
    """
    if len(lrs) != len(losses):
        raise ValueError(f"lrs and losses differ in length: {len(lrs)} and {len(losses)}.")
    window = range(skip_begin, len(lrs) - skip_end)
    kept = [i for i in window if math.isfinite(losses[i]) and lrs[i] > 0]
    if len(kept) < 2:
        return None
    slopes = _gradient([math.log(lrs[i]) for i in kept], [losses[i] for i in kept])
    index = kept[min(range(len(slopes)), key=slopes.__getitem__)]
    return LrSuggestion(float(lrs[index]), index)


def _gradient(x: list[float], y: list[float]) -> list[float]:
    # torch.gradient's (and numpy's) formula for uneven spacing: second-order inside, one-sided at the ends.
    slopes = [(y[1] - y[0]) / (x[1] - x[0])]
    for i in range(1, len(x) - 1):
        left, right = x[i] - x[i - 1], x[i + 1] - x[i]
        slopes.append(
            (left**2 * y[i + 1] - right**2 * y[i - 1] + (right**2 - left**2) * y[i]) / (left * right * (left + right))
        )
    slopes.append((y[-1] - y[-2]) / (x[-1] - x[-2]))
    return slopes
