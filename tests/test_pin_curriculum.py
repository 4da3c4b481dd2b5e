"""Pinning tests for mixing/curriculum.py (issue 17): pacing at interior points, promotion to the top.

Curricula are built with explicit pacing / c0 / thresholds: the defaults belong to the config.
"""

from __future__ import annotations

import math

import pytest

from mixtune.errors import CheckpointError, ConfigError
from mixtune.mixing.curriculum import Curriculum, shift_up

E = [1.0, 0.0, 0.0, 0.0, 0.0]
M = [0.0, 0.0, 1.0, 0.0, 0.0]
L = [0.0, 0.0, 0.0, 0.0, 1.0]


def _cur(pacing="linear", **kw):
    args = dict(mastery_threshold=0.8, mastery_cycles=2, enabled=True, pacing=pacing, c0=0.1)
    return Curriculum(["a", "b"], E, M, L, **{**args, **kw})


def _raises(exc_type, where, starts, fn, *args, **kwargs):
    with pytest.raises(exc_type) as info:
        fn(*args, **kwargs)
    assert info.value.where == where
    assert info.value.message.startswith(starts), info.value.message


@pytest.mark.parametrize("p,expect", [
    (0.0, E), (0.3333, E), (1 / 3, M), (0.26, E), (0.5, M), (0.6666, M), (2 / 3, L), (0.9, L),
    (-3.0, E), (7.0, L)])
def test_thirds_switch_points(p, expect):
    assert _cur("thirds").base_distribution(p) == expect


@pytest.mark.parametrize("p,expect", [
    (0.25, [0.5, 0, 0.5, 0, 0]), (0.1, [0.8, 0, 0.2, 0, 0]), (0.5, M), (0.75, [0, 0, 0.5, 0, 0.5]),
    (0.9, [0, 0, 0.2, 0, 0.8]), (1.0, L), (1.5, L), (0.0, E)])
def test_linear_pacing_interior_points(p, expect):
    assert _cur("linear").base_distribution(p) == pytest.approx(expect)


def test_competence_pacing_interior_points():
    cur = _cur("competence", c0=0.1)
    for p in (0.05, 0.2, 0.4, 0.7):
        c = (math.sqrt(p * (1 - 0.01) + 0.01) - 0.1) / 0.9
        u = c / 0.5 if c <= 0.5 else (c - 0.5) / 0.5
        a, b = (E, M) if c <= 0.5 else (M, L)
        expect = [(1 - u) * x + u * y for x, y in zip(a, b)]
        assert cur.base_distribution(p) == pytest.approx(expect, abs=1e-12)
    assert cur.base_distribution(0.0) == pytest.approx(E, abs=1e-12)
    assert cur.base_distribution(1.0) == pytest.approx(L, abs=1e-12)
    # competence runs ahead of linear pacing: at 20% progress it is already past the midpoint mix
    assert cur.base_distribution(0.2)[2] > _cur("linear").base_distribution(0.2)[2]


def test_anchors_are_normalised_and_validated():
    cur = Curriculum(["a"], [2.0, 2.0, 0, 0, 0], M, L, pacing="thirds", c0=0.1)
    assert cur.base_distribution(0.0) == [0.5, 0.5, 0.0, 0.0, 0.0]
    _raises(ConfigError, "stage2.curriculum.early", "needs 5 probabilities (levels 1..5), got 4",
            Curriculum, ["a"], [1, 0, 0, 0], M, L)
    for bad in ([1, -0.5, 0, 0, 0], [1, float("nan"), 0, 0, 0], [0, 0, 0, 0, 0], [-1, 0, 0, 0, 0]):
        _raises(ConfigError, "stage2.curriculum.middle", "probabilities must be finite, >= 0 and not all zero",
                Curriculum, ["a"], E, bad, L)
    _raises(ConfigError, "stage2.curriculum.late", "probabilities must be finite", Curriculum, ["a"], E, M,
            [0, 0, 0, 0, float("inf")])


def test_constructor_validation():
    _raises(ConfigError, "stage2.curriculum.pacing", "unknown pacing 'steps'", _cur, "steps")
    _raises(ConfigError, "stage2.curriculum.mastery_cycles", "must be >= 1, got 0", _cur, mastery_cycles=0)
    assert _cur(mastery_cycles=1).mastery_cycles == 1


def test_shift_up_piles_mass_on_the_top_level():
    d = [0.1, 0.2, 0.3, 0.25, 0.15]
    assert shift_up(d, 0) == d
    assert shift_up(d, 1) == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert shift_up(d, 4) == pytest.approx([0, 0, 0, 0, 1.0])
    assert shift_up(d, 9) == pytest.approx([0, 0, 0, 0, 1.0])


def test_promotion_needs_strictly_above_threshold_streaks_and_reaches_level_five():
    cur = _cur("thirds", mastery_cycles=2, thresholds={"b": 0.5})
    assert cur.update(0, {"a": 0.8, "b": 0.8}) == []  # a: at the threshold is not above it
    assert cur.streak == {"a": 0, "b": 1}
    assert cur.update(1, {"b": 0.6}) == ["b"]  # a missing: its streak is kept (no evidence)
    assert cur.streak == {"a": 0, "b": 0} and cur.levels() == {"a": 1, "b": 2}
    assert cur.history == [{"cycle": 1, "task": "b", "level": 2, "score": 0.6, "threshold": 0.5}]
    cycle = 2
    while cur.levels()["b"] < 5:
        cur.update(cycle, {"b": 0.9})
        cycle += 1
        assert cycle < 20
    assert cycle == 8  # three more promotions, two cycles each
    assert cur.level_distribution("b", 0.0) == [0, 0, 0, 0, 1.0]
    assert cur.promotions["b"] == 4
    for c in range(8, 14):  # already at the top: no further promotion, no history entries
        assert cur.update(c, {"b": 0.95}) == []
    assert cur.levels()["b"] == 5 and len(cur.history) == 4


def test_promotion_shifts_the_level_distribution():
    cur = _cur("linear", mastery_cycles=1)
    cur.update(0, {"a": 0.9})
    assert cur.level_distribution("a", 0.25) == pytest.approx([0, 0.5, 0, 0.5, 0])
    assert cur.level_distribution("b", 0.25) == pytest.approx([0.5, 0, 0.5, 0, 0])
    _raises(ConfigError, "curriculum.level_distribution", "unknown task 'z'", cur.level_distribution, "z", 0.5)


def test_disabled_curriculum_is_uniform_over_present_levels_and_never_promotes():
    cur = _cur("thirds", enabled=False, mastery_cycles=1)
    assert cur.level_distribution("a", 0.0) == [0.2] * 5
    assert cur.level_distribution("a", 0.0, present=[2, 4, 4]) == [0.0, 0.5, 0.0, 0.5, 0.0]
    assert cur.update(0, {"a": 1.0}) == [] and cur.streak["a"] == 0


def test_state_round_trip_and_refusal():
    cur = _cur("thirds", mastery_cycles=1)
    cur.update(0, {"a": 0.9})
    cur.update(1, {"b": 0.9, "a": 0.9})
    other = _cur("thirds", mastery_cycles=1)
    other.load_state_dict(cur.state_dict())
    assert other.levels() == {"a": 3, "b": 2} and other.history == cur.history and other.streak == cur.streak
    bad = Curriculum(["a"], E, M, L, pacing="thirds", c0=0.1)
    _raises(CheckpointError, "curriculum.state", "curriculum state is for tasks ['a', 'b'], not ['a']",
            bad.load_state_dict, cur.state_dict())
