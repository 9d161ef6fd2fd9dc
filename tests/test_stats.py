"""Paired statistics of the steps-saved benchmark, against hand-computed values."""

from __future__ import annotations

import math

import pytest

from nextrap.errors import ConfigError
from nextrap.reference.stats import (
    accuracy_at,
    accuracy_standard_error,
    paired_difference,
    steps_saved,
    steps_to_reach,
)


def test_paired_difference_matches_a_hand_computed_t_interval():
    # differences 0.1, 0.2, 0.3: mean 0.2, sd 0.1, t(0.975, 2) = 4.302652729911275
    d = paired_difference([0.6, 0.7, 0.9], [0.5, 0.5, 0.6])
    half = 4.302652729911275 * 0.1 / math.sqrt(3)
    assert d.n == 3 and d.mean == pytest.approx(0.2)
    assert d.low == pytest.approx(0.2 - half) and d.high == pytest.approx(0.2 + half)
    assert d.excludes_zero is False  # 0.2 - 0.248 < 0
    tight = paired_difference([0.7, 0.71, 0.72], [0.5, 0.5, 0.5])
    assert tight.excludes_zero and tight.low > 0.15
    same = paired_difference([0.75, 0.75, 0.75], [0.5, 0.5, 0.5])  # no spread: a point, not NaN
    assert same.low == same.high == pytest.approx(0.25) and same.excludes_zero


def test_one_seed_has_no_interval_and_bad_pairs_fail():
    one = paired_difference([0.5], [0.4])
    assert one.mean == pytest.approx(0.1) and math.isinf(one.low) and not one.excludes_zero
    assert "no interval" in one.text()
    with pytest.raises(ConfigError, match="one per seed"):
        paired_difference([0.1, 0.2], [0.3])


def test_accuracy_at_holds_the_last_evaluation_and_steps_to_reach():
    curve = {0: 0.1, 10: 0.4, 20: 0.6}
    assert accuracy_at(curve, 15) == 0.4 and accuracy_at(curve, 20) == 0.6 and accuracy_at(curve, 99) == 0.6
    with pytest.raises(ConfigError, match="no evaluation"):
        accuracy_at({5: 0.2}, 4)
    assert steps_to_reach(curve, 0.5) == 20 and steps_to_reach(curve, 0.7) is None


def test_accuracy_standard_error():
    assert accuracy_standard_error(0.5, 400) == pytest.approx(0.025)
    assert accuracy_standard_error(1.0, 10) == 0.0


def test_steps_saved_needs_both_runs_at_the_target():
    assert steps_saved(200, 150) == pytest.approx(0.25)  # 1 - 150 / 200
    assert steps_saved(100, 120) == pytest.approx(-0.2)  # slower than the baseline
    assert steps_saved(None, 50) is None and steps_saved(200, None) is None
    assert steps_saved(0, 0) is None  # a baseline already there at step 0 has nothing to save
