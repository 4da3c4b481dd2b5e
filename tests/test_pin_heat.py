"""Pinning tests for mixing/heat.py (issue 17): exact component values, validation bounds, laws.

Every policy here is built with explicit arguments: the defaults belong to the config and may move.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixtune.errors import CheckpointError, ConfigError, DataError
from mixtune.mixing.heat import COMPONENTS, HeatController, HeatTracker, coefficient_of_variation

ALL_ONE = {c: 1.0 for c in COMPONENTS}
KW = dict(eta=1.0, uniform_mix=0.0, floor=0.0, cap=1.0, ema=0.0, heat_weights=ALL_ONE, seed=3)


def _raises(exc_type, where: str, starts: str, fn, *args, **kwargs):
    """The error names the right place and starts with the right words (not just "some error")."""
    with pytest.raises(exc_type) as info:
        fn(*args, **kwargs)
    assert info.value.where == where
    assert info.value.message.startswith(starts), info.value.message
    return info.value


# ------------------------------------------------------------------ coefficient of variation
def test_cv_on_realistic_scores_is_small_not_saturated():
    # std 0.05 / mean 0.55: a slightly noisy task is not "maximally unstable".
    assert coefficient_of_variation([0.5, 0.6]) == pytest.approx(1 / 11, rel=1e-12)
    assert coefficient_of_variation([2.0, 2.0, 2.0]) == 0.0
    assert coefficient_of_variation([-1.0, -3.0]) == pytest.approx(0.5)  # |mean| in the denominator


def test_cv_near_zero_mean_is_one_when_scores_vary_else_zero():
    assert coefficient_of_variation([-0.5, 0.5]) == 1.0  # std 0.5 < 1 but still varies
    assert coefficient_of_variation([-2.0, 2.0]) == 1.0
    assert coefficient_of_variation([0.0, 0.0]) == 0.0
    # Just above the near-zero threshold the ratio is used as is.
    assert coefficient_of_variation([0.0, 4e-9]) == pytest.approx(1.0)
    assert coefficient_of_variation([-2e-9, 6e-9]) == pytest.approx(2.0)
    assert coefficient_of_variation([-2e-9, 4e-9]) == pytest.approx(3.0)  # mean exactly 1e-9


# ------------------------------------------------------------------ tracker components
def test_tracker_components_and_heat_are_exact():
    tr = HeatTracker(["a", "b"], dict(ALL_ONE), norm_floor=0.1)
    out = tr.observe({"a": 0.5, "b": 0.9}, {"a": [0.5, 0.6]}, {"b": 0.2})
    a, b = out["a"], out["b"]
    assert (a["decay"], a["gap"], a["rejection"]) == (0.0, 0.5, 0.0)
    assert a["cv"] == pytest.approx(1 / 11)
    # cv squashed as cv/(1+cv) = 1/12, then the mean of the four components
    assert a["raw"] == pytest.approx((1 / 12 + 0.5) / 4, rel=1e-12)
    assert b["raw"] == pytest.approx((0.1 + 0.2) / 4, rel=1e-12)
    # spread 0.0708 is under the floor 0.1, so heat is divided by the floor
    assert a["heat"] == pytest.approx((a["raw"] - b["raw"]) / 0.1, rel=1e-12)
    assert b["heat"] == 0.0


def test_cv_squash_keeps_instability_below_one():
    tr = HeatTracker(["a", "b"], {"cv": 1.0}, norm_floor=0.1)
    out = tr.observe({}, {"a": [0.0, 1.0, 0.0, 1.0], "b": [1.0, 3.0]}, {})
    assert out["a"]["raw"] == pytest.approx(0.5)  # cv 1 -> 1/2
    assert out["b"]["raw"] == pytest.approx(0.5 / 1.5)  # cv 0.5 -> 1/3


def test_tracker_decay_clamps_and_memory():
    tr = HeatTracker(["a", "b"], {"decay": 1.0, "gap": 1.0, "rejection": 1.0}, norm_floor=0.1)
    first = tr.observe({"a": 0.9}, {}, {})
    assert first["b"] == {"heat": 0.0, "raw": 0.0, "decay": 0.0, "cv": 0.0, "rejection": 0.0, "gap": 0.0}
    out = tr.observe({"a": 0.6, "b": -0.5}, {}, {"a": 1.5, "b": -0.2})
    assert out["a"]["decay"] == pytest.approx(0.3)  # best 0.9 - 0.6
    assert out["b"]["gap"] == 1.0 and out["a"]["rejection"] == 1.0 and out["b"]["rejection"] == 0.0
    assert tr.best == {"a": 0.9, "b": -0.5}
    again = tr.observe({}, {}, {})  # no new evidence: last components are kept
    assert again["a"]["decay"] == pytest.approx(0.3) and again["a"]["rejection"] == 1.0
    assert again["b"]["gap"] == 1.0


def test_tracker_weight_sum_edge_cases():
    zero = HeatTracker(["a", "b"], {c: 0.0 for c in COMPONENTS})
    out = zero.observe({"a": 0.1, "b": 0.9}, {}, {})
    assert out["a"]["raw"] == 0.0 and out["b"]["raw"] == 0.0 and out["a"]["heat"] == 0.0
    one = HeatTracker(["a", "b"], {"gap": 1.0})  # total weight exactly 1; the rest count 0
    out = one.observe({"a": 0.25, "b": 0.75}, {"a": [0.0, 1.0]}, {"a": 1.0})
    assert out["a"]["raw"] == 0.75 and out["b"]["raw"] == 0.25
    assert one.hw == {"decay": 0.0, "cv": 0.0, "rejection": 0.0, "gap": 1.0}
    default = HeatTracker(["a", "b"], None)  # no weights given: every component counts once
    assert default.hw == ALL_ONE
    assert default.observe({"a": 0.0, "b": 1.0}, {}, {})["a"]["raw"] == 0.25


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_heat_weights_reject_negative_and_non_finite(bad):
    _raises(ConfigError, "mixing.heat_weights", "heat weights must be finite and >= 0", HeatTracker,
            ["a"], {"cv": bad})


def test_heat_weights_reject_unknown_component():
    _raises(ConfigError, "mixing.heat_weights", "unknown heat components ['loss']", HeatTracker,
            ["a"], {"loss": 1.0})


def test_tracker_state_round_trip():
    tr = HeatTracker(["a"], dict(ALL_ONE))
    tr.observe({"a": 0.7}, {"a": [0.5, 0.6]}, {})
    other = HeatTracker(["a"], dict(ALL_ONE))
    other.load_state_dict(tr.state_dict())
    assert other.best == tr.best and other.last == tr.last


# ------------------------------------------------------------------ policy validation
@pytest.mark.parametrize("kw,where,starts", [
    (dict(eta=-0.1), "mixing.eta", "eta must be finite and >= 0"),
    (dict(eta=float("inf")), "mixing.eta", "eta must be finite and >= 0"),
    (dict(eta=float("nan")), "mixing.eta", "eta must be finite and >= 0"),
    (dict(ema=1.0), "mixing.ema", "ema must be in [0, 1)"),
    (dict(ema=1.5), "mixing.ema", "ema must be in [0, 1)"),
    (dict(ema=-0.1), "mixing.ema", "ema must be in [0, 1)"),
    (dict(uniform_mix=1.5), "mixing.uniform_mix", "uniform_mix must be in [0, 1]"),
    (dict(uniform_mix=-0.1), "mixing.uniform_mix", "uniform_mix must be in [0, 1]"),
])
def test_policy_rejects_out_of_range(kw, where, starts):
    _raises(ConfigError, where, starts, HeatController, ["a", "b"], None, **{**KW, **kw})


@pytest.mark.parametrize("kw", [dict(eta=0.0), dict(eta=0.5), dict(ema=0.99), dict(uniform_mix=1.0),
                                dict(uniform_mix=0.0), dict(ema=0.0)])
def test_policy_accepts_edges(kw):
    p = HeatController(["a", "b"], None, **{**KW, **kw})
    assert p.weights() == pytest.approx({"a": 0.5, "b": 0.5})
    assert p.cycles == 0 and p.seed == 3


# ------------------------------------------------------------------ controller
def test_controller_weights_follow_exp_eta_heat_exactly():
    p = HeatController(["a", "b"], {"a": 1.0, "b": 3.0}, **{**KW, "eta": 2.0})
    assert p.weights() == pytest.approx({"a": 0.25, "b": 0.75})
    rec = p.update(4, 40, {"a": 0.5, "b": 0.9}, {"a": [0.5, 0.6]}, {"a": 1.25}, {"b": 0.2})
    h = {t: rec["heat"][t]["heat"] for t in "ab"}
    assert h["b"] == 0.0 and h["a"] == pytest.approx(((1 / 12 + 0.5) / 4 - 0.3 / 4) / 0.1)
    raw = {"a": 0.25 * math.exp(2.0 * h["a"]), "b": 0.75}
    expect = {t: v / sum(raw.values()) for t, v in raw.items()}
    assert rec["weights"] == pytest.approx(expect, rel=1e-9)
    assert rec["target"] == pytest.approx(expect, rel=1e-9)
    assert rec["heat"]["a"]["cv"] == pytest.approx(1 / 11) and rec["heat"]["b"]["rejection"] == 0.2
    assert {k: rec[k] for k in ("method", "cycle", "step", "scores", "losses")} == {
        "method": "heat", "cycle": 4, "step": 40, "scores": {"a": 0.5, "b": 0.9}, "losses": {"a": 1.25}}
    assert p.cycles == 1
    p.update(5, 50, None, None, None, None)
    assert p.cycles == 2


def test_controller_uniform_mix_and_ema_are_applied():
    p = HeatController(["a", "b"], None, **{**KW, "uniform_mix": 0.5, "ema": 0.5})
    rec = p.update(0, 0, {"a": 0.0, "b": 1.0}, {}, {}, {})
    # heat a = 1 (gap 1 vs 0 over a 0.25 spread), b = 0: target (1-c)·softmax + c/2
    e = math.exp(1.0)
    target_a = 0.5 * e / (e + 1) + 0.25
    assert rec["target"]["a"] == pytest.approx(target_a)
    assert rec["weights"]["a"] == pytest.approx(0.5 * 0.5 + 0.5 * target_a)


def test_update_rejects_unknown_and_non_finite_metrics():
    p = HeatController(["a", "b"], None, **KW)
    _raises(DataError, "mixing.update", "scores names unknown tasks ['z']", p.update, 0, 0,
            {"z": 1.0}, {}, {}, {})
    _raises(DataError, "mixing.update", "losses names unknown tasks ['z']", p.update, 0, 0,
            {}, {}, {"z": 1.0}, {})
    _raises(DataError, "mixing.update", "per_sample names unknown tasks ['z']", p.update, 0, 0,
            {}, {"z": [1.0]}, {}, {})
    _raises(DataError, "mixing.update", "rejection names unknown tasks ['z']", p.update, 0, 0,
            {}, {}, {}, {"z": 1.0})
    _raises(DataError, "mixing.update", "scores are not finite", p.update, 0, 0,
            {"a": float("nan")}, {}, {}, {})
    _raises(DataError, "mixing.update", "losses are not finite", p.update, 0, 0,
            {}, {}, {"a": float("inf")}, {})
    _raises(DataError, "mixing.update", "rejection are not finite", p.update, 0, 0,
            {}, {}, {}, {"b": float("nan")})
    assert p.cycles == 0  # a refused update does not count as a cycle


def test_state_round_trip_and_refusal():
    p = HeatController(["a", "b"], None, **KW)
    p.update(0, 0, {"a": 0.2, "b": 0.8}, {}, {}, {})
    q = HeatController(["a", "b"], None, **KW)
    q.load_state_dict(p.state_dict())
    assert q.weights() == p.weights() and q.cycles == 1 and q.tracker.best == p.tracker.best
    e = _raises(CheckpointError, "mixing.state", "mixing state is for method='uniform' tasks=['a', 'b']",
                q.load_state_dict, {**p.state_dict(), "method": "uniform"})
    assert "not method='heat'" in e.message
    _raises(CheckpointError, "mixing.state", "mixing state is for method='heat' tasks=['a']",
            q.load_state_dict, {**p.state_dict(), "tasks": ["a"]})


@settings(max_examples=60, deadline=None)
@given(
    scores=st.lists(st.floats(-1.0, 2.0), min_size=3, max_size=3),
    eta=st.floats(0.0, 5.0),
    c=st.floats(0.0, 1.0),
    floor=st.floats(0.0, 0.3),
    cap=st.floats(0.34, 1.0),
    ema=st.floats(0.0, 0.95),
)
def test_law_weights_sum_to_one_within_floor_and_cap(scores, eta, c, floor, cap, ema):
    tasks = ["x", "y", "z"]
    p = HeatController(tasks, None, eta=eta, uniform_mix=c, floor=floor, cap=cap, ema=ema,
                       heat_weights=ALL_ONE, seed=0)
    for _ in range(2):
        w = p.update(0, 0, dict(zip(tasks, scores)), {}, {}, {})["weights"]
        assert sum(w.values()) == pytest.approx(1.0, abs=1e-9)
        assert all(floor - 1e-9 <= v <= cap + 1e-9 for v in w.values())
