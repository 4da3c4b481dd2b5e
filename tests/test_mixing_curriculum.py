"""Difficulty curriculum: pacing and mastery promotion."""

import json

import pytest

from mixtune.errors import CheckpointError, ConfigError
from mixtune.mixing import Curriculum

EARLY = [0.5, 0.4, 0.1, 0.0, 0.0]
MIDDLE = [0.1, 0.3, 0.3, 0.3, 0.0]
LATE = [0.0, 0.1, 0.3, 0.3, 0.3]


def make(**kw):
    return Curriculum(["calc", "concept"], EARLY, MIDDLE, LATE, **kw)


def test_thirds_pacing():
    c = make()
    assert c.level_distribution("calc", 0.0) == pytest.approx(EARLY)
    assert c.level_distribution("calc", 0.5) == pytest.approx(MIDDLE)
    assert c.level_distribution("calc", 0.9) == pytest.approx(LATE)


@pytest.mark.parametrize("pacing", ["linear", "competence"])
def test_smooth_pacing_interpolates_and_moves_mass_up(pacing):
    c = make(pacing=pacing)
    assert c.level_distribution("calc", 0.0) == pytest.approx(EARLY)
    assert c.level_distribution("calc", 1.0) == pytest.approx(LATE)
    means = []
    for p in [i / 10 for i in range(11)]:
        d = c.level_distribution("calc", p)
        assert sum(d) == pytest.approx(1.0) and min(d) >= 0
        means.append(sum((i + 1) * x for i, x in enumerate(d)))
    assert all(a <= b + 1e-12 for a, b in zip(means, means[1:], strict=False))
    if pacing == "competence":  # root pacing is ahead of linear early on
        lin = make(pacing="linear").level_distribution("calc", 0.2)
        assert sum((i + 1) * x for i, x in enumerate(c.level_distribution("calc", 0.2))) > \
            sum((i + 1) * x for i, x in enumerate(lin))


def test_promoted_after_exactly_five_cycles_not_four():
    c = make()
    for cycle in range(4):
        assert c.update(cycle, {"calc": 0.85, "concept": 0.5}) == []
    assert c.levels() == {"calc": 1, "concept": 1}
    assert c.update(4, {"calc": 0.85, "concept": 0.5}) == ["calc"]
    assert c.levels() == {"calc": 2, "concept": 1}
    assert c.history == [{"cycle": 4, "task": "calc", "level": 2, "score": 0.85, "threshold": 0.8}]
    # distribution shifted up one level, mass past level 5 stays on 5
    assert c.level_distribution("calc", 0.0) == pytest.approx([0.0, 0.5, 0.4, 0.1, 0.0])
    assert c.level_distribution("calc", 0.9) == pytest.approx([0.0, 0.0, 0.1, 0.3, 0.6])
    assert c.level_distribution("concept", 0.0) == pytest.approx(EARLY)
    # the streak restarts: the next promotion needs five fresh cycles
    for cycle in range(5, 9):
        assert c.update(cycle, {"calc": 0.9}) == []
    assert c.update(9, {"calc": 0.9}) == ["calc"]


def test_dip_resets_streak_and_threshold_is_strict():
    c = make()
    seq = [0.9, 0.9, 0.9, 0.9, 0.7, 0.9, 0.9, 0.9, 0.9]
    assert all(c.update(i, {"calc": s}) == [] for i, s in enumerate(seq))
    assert c.update(9, {"calc": 0.9}) == ["calc"]
    c2 = make(mastery_cycles=2)
    assert c2.update(0, {"calc": 0.8}) == [] and c2.update(1, {"calc": 0.8}) == []  # equal is not above


def test_disabled_is_uniform_over_present_levels_and_never_promotes():
    c = make(enabled=False)
    assert c.level_distribution("calc", 0.0, present=[2, 4]) == [0.0, 0.5, 0.0, 0.5, 0.0]
    assert c.level_distribution("calc", 0.9) == [0.2] * 5
    assert all(c.update(i, {"calc": 1.0}) == [] for i in range(10))


def test_per_task_thresholds_and_validation():
    c = make(thresholds={"calc": 0.95}, mastery_cycles=1)
    assert c.update(0, {"calc": 0.9, "concept": 0.9}) == ["concept"]
    with pytest.raises(ConfigError, match="early"):
        Curriculum(["a"], [1, 0, 0], MIDDLE, LATE)
    with pytest.raises(ConfigError, match="pacing"):
        make(pacing="sigmoid")


def test_state_round_trip():
    c = make()
    for i in range(7):
        c.update(i, {"calc": 0.9, "concept": 0.9 if i > 3 else 0.1})
    state = json.loads(json.dumps(c.state_dict()))
    d = make()
    d.load_state_dict(state)
    assert d.levels() == c.levels() and d.streak == c.streak and d.history == c.history
    assert d.update(7, {"concept": 0.9}) == c.update(7, {"concept": 0.9}) == []
    assert d.update(8, {"concept": 0.9}) == c.update(8, {"concept": 0.9}) == ["concept"]
    with pytest.raises(CheckpointError):
        Curriculum(["x"], EARLY, MIDDLE, LATE).load_state_dict(state)
