"""Paired statistics for the steps-saved benchmark: one number per seed and arm, compared by seed.

Every arm of a seed starts from the same plain run (same problems, samples and LoRA init up to the
jump), so the honest comparison is per seed: the difference between an arm and the plain run, then
the mean of those differences over seeds with a Student-t confidence interval. An arm "saves steps"
or "gains accuracy" only where that interval excludes zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from nextrap.errors import ConfigError

__all__ = [
    "PairedDifference",
    "accuracy_at",
    "accuracy_standard_error",
    "paired_difference",
    "steps_saved",
    "steps_to_reach",
]


def steps_to_reach(curve: Mapping[int, float], target: float) -> int | None:
    """The first step (of a sorted curve) whose accuracy is at least ``target``; None if never."""
    return next((s for s, acc in sorted(curve.items()) if acc >= target - 1e-12), None)


def steps_saved(baseline_steps: int | None, arm_steps: int | None) -> float | None:
    """``1 - arm / baseline`` steps to a target: the fraction of the baseline's steps saved.

    None unless both reached the target (and the baseline needed at least one step).
    """
    if not baseline_steps or arm_steps is None:
        return None
    return 1 - arm_steps / baseline_steps


def accuracy_at(curve: Mapping[int, float], budget: int) -> float:
    """Accuracy of the model an arm holds after ``budget`` trained steps: its last evaluation at or before.

    Evaluations happen at checkpoints only, so between two of them the arm holds the earlier model.
    """
    steps = [s for s in curve if s <= budget]
    if not steps:
        raise ConfigError(f"no evaluation at or before step {budget} (first is at {min(curve)})")
    return curve[max(steps)]


def accuracy_standard_error(accuracy: float, problems: int) -> float:
    """Binomial standard error of an accuracy measured on ``problems`` independent problems."""
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / problems)


@dataclass(frozen=True)
class PairedDifference:
    """Mean over seeds of ``arm - baseline`` with its two-sided confidence interval (Student t)."""

    n: int
    mean: float
    low: float
    high: float
    confidence: float
    differences: tuple[float, ...]

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def text(self, spec: str = "+.3f") -> str:
        if self.n < 2:
            return f"{format(self.mean, spec)} (n={self.n}, no interval)"
        return (
            f"{format(self.mean, spec)} [{format(self.low, spec)}, {format(self.high, spec)}] "
            f"(n={self.n}{', excludes 0' if self.excludes_zero else ''})"
        )


def paired_difference(
    arm: Sequence[float], baseline: Sequence[float], confidence: float = 0.95
) -> PairedDifference:
    """Per-seed differences ``arm[i] - baseline[i]``: their mean and a t interval (infinite for one seed)."""
    from scipy import stats

    if len(arm) != len(baseline):
        raise ConfigError(f"paired values need one per seed on both sides, got {len(arm)} and {len(baseline)}")
    if not arm:
        raise ConfigError("paired values: no seeds")
    diffs = tuple(float(a) - float(b) for a, b in zip(arm, baseline, strict=True))
    n = len(diffs)
    mean = sum(diffs) / n
    if n < 2:
        return PairedDifference(n, mean, -math.inf, math.inf, confidence, diffs)
    if len(set(diffs)) == 1:  # no spread: scipy warns about precision and returns the point anyway
        return PairedDifference(n, mean, mean, mean, confidence, diffs)
    interval = stats.ttest_1samp(diffs, 0.0).confidence_interval(confidence)
    return PairedDifference(n, mean, float(interval.low), float(interval.high), confidence, diffs)
