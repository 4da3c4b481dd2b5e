"""Mixing policies on scripted metric sequences: heat controller and the four baselines."""

import json
import random

import pytest

from mixtune.errors import CheckpointError, ConfigError, DataError
from mixtune.mixing import make_policy, project_bounded
from mixtune.mixing.heat import HeatTracker

TASKS = ["calc", "concept", "compliance", "style"]
BASE = {"calc": 3.0, "concept": 1.0, "compliance": 2.0, "style": 1.0}
KW = dict(eta=2.0, uniform_mix=0.1, floor=0.05, cap=0.5, ema=0.5,
          heat_weights={"decay": 1.0, "cv": 0.5, "rejection": 0.5, "gap": 1.0}, seed=7)


def run(policy, cycles, scores_fn, losses_fn=lambda c: {}, per_sample_fn=lambda c: {}, rej=None):
    recs = []
    for c in range(cycles):
        recs.append(policy.update(c, 100 * c, scores_fn(c), per_sample_fn(c), losses_fn(c), rej or {}))
    return recs


def check_simplex(w, floor, cap):
    assert abs(sum(w.values()) - 1.0) < 1e-12
    assert min(w.values()) >= floor - 1e-12
    assert max(w.values()) <= cap + 1e-12


def test_lagging_task_weight_rises_and_others_fall():
    p = make_policy("heat", TASKS, BASE, **KW)
    w0 = p.weights()
    # calc decays from its best (0.9 -> 0.5) while the rest hold 0.85.
    recs = run(p, 6, lambda c: {"calc": 0.9 if c == 0 else 0.5, "concept": 0.85,
                                "compliance": 0.85, "style": 0.85})
    w = p.weights()
    assert w["calc"] > w0["calc"]
    assert w["concept"] < w0["concept"]
    last = recs[-1]["heat"]["calc"]
    assert last["decay"] == pytest.approx(0.4) and last["heat"] == pytest.approx(1.0)
    check_simplex(w, 0.05, 0.5)


def test_gap_gives_heat_to_weak_task_that_never_decayed():
    kw = dict(KW, heat_weights={"decay": 1.0, "gap": 0.0, "cv": 0.0, "rejection": 0.0})
    no_gap = make_policy("heat", TASKS, None, **kw)
    with_gap = make_policy("heat", TASKS, None, **dict(kw, heat_weights={"decay": 1.0, "gap": 1.0}))
    scores = lambda c: {"calc": 0.3, "concept": 0.9, "compliance": 0.9, "style": 0.9}  # noqa: E731
    run(no_gap, 3, scores)
    run(with_gap, 3, scores)
    assert no_gap.weights()["calc"] == pytest.approx(0.25)  # decay alone sees nothing
    assert with_gap.weights()["calc"] > 0.3


def test_cv_and_rejection_components_feed_heat():
    tr = HeatTracker(TASKS, {"cv": 1.0, "rejection": 1.0})
    h = tr.observe({t: 0.8 for t in TASKS}, {"calc": [0.0, 1.0, 0.0, 1.0], "concept": [0.8] * 4},
                   {"style": 0.6})
    assert h["calc"]["cv"] == pytest.approx(1.0) and h["concept"]["cv"] == 0.0
    assert h["style"]["rejection"] == 0.6
    assert h["calc"]["heat"] > h["concept"]["heat"] and h["style"]["heat"] > h["concept"]["heat"]


def test_heat_normalisation_does_not_amplify_noise():
    p = make_policy("heat", TASKS, None, **dict(KW, ema=0.0, uniform_mix=0.0))
    p.update(0, 0, {"calc": 0.80, "concept": 0.81, "compliance": 0.80, "style": 0.80}, {}, {}, {})
    w = p.weights()
    assert max(w.values()) / min(w.values()) < 1.1


def test_floor_and_cap_hold_exactly_for_extreme_inputs():
    rng = random.Random(0)
    for _ in range(300):
        k = rng.randint(2, 9)
        floor = rng.uniform(0, 1 / k)
        cap = rng.uniform(1 / k, 1)
        w = {str(i): rng.choice([0.0, rng.random(), rng.random() * 1e6]) for i in range(k)}
        out = project_bounded(w, floor, cap)
        check_simplex(out, floor, cap)
        # order is preserved: a larger raw weight never ends smaller
        ks = sorted(w, key=w.get)
        assert all(out[a] <= out[b] + 1e-12 for a, b in zip(ks, ks[1:], strict=False))
    # a naive clip-then-renormalise would push the capped task back over 0.4
    out = project_bounded({"a": 100.0, "b": 1.0, "c": 1.0, "d": 1.0}, 0.05, 0.4)
    assert out["a"] == pytest.approx(0.4, abs=1e-12) and sum(out.values()) == pytest.approx(1.0, abs=1e-12)


def test_controller_respects_floor_and_cap_through_cycles():
    p = make_policy("heat", TASKS, {"calc": 100.0}, **dict(KW, eta=8.0, floor=0.1, cap=0.4))
    for c in range(8):
        p.update(c, c, {"calc": 0.2, "concept": 0.99, "compliance": 0.99, "style": 0.99}, {}, {}, {})
        check_simplex(p.weights(), 0.1, 0.4)
    assert p.weights()["calc"] == pytest.approx(0.4)


def test_infeasible_bounds_and_bad_inputs_are_user_errors():
    with pytest.raises(ConfigError, match="floor"):
        make_policy("heat", TASKS, None, **dict(KW, floor=0.3))
    with pytest.raises(ConfigError, match="cap"):
        make_policy("heat", TASKS, None, **dict(KW, cap=0.2))
    with pytest.raises(ConfigError, match="allowed"):
        make_policy("softmax", TASKS, None, **KW)
    with pytest.raises(ConfigError, match="unknown heat components"):
        make_policy("heat", TASKS, None, **dict(KW, heat_weights={"decai": 1.0}))
    p = make_policy("heat", TASKS, None, **KW)
    with pytest.raises(DataError, match="unknown tasks"):
        p.update(0, 0, {"nope": 0.5}, {}, {}, {})
    with pytest.raises(DataError, match="not finite"):
        p.update(0, 0, {"calc": float("nan")}, {}, {}, {})


def test_uniform_stays_uniform():
    p = make_policy("uniform", TASKS, BASE, **KW)
    run(p, 5, lambda c: {"calc": 0.1 * c, "concept": 0.9}, lambda c: {"calc": 5.0 - c})
    assert p.weights() == {t: 0.25 for t in TASKS}


def test_static_is_proportional_to_business_value_and_fixed():
    p = make_policy("static", TASKS, BASE, **dict(KW, uniform_mix=0.0, floor=0.0, cap=1.0))
    assert p.weights() == pytest.approx({t: v / 7.0 for t, v in BASE.items()})
    before = p.weights()
    run(p, 4, lambda c: {"calc": 0.2, "concept": 0.95})
    assert p.weights() == before


def test_dbl_raises_task_whose_loss_exceeds_reference():
    p = make_policy("dbl", TASKS, None, **dict(KW, uniform_mix=0.0), ref_losses={"calc": 1.0})
    recs = run(p, 4, lambda c: {}, lambda c: {"calc": 1.5, "concept": 1.0 - 0.1 * c,
                                             "compliance": 1.0, "style": 1.0})
    w = p.weights()
    assert w["calc"] > 0.25 and w["calc"] == max(w.values())
    # concept/compliance/style references came from the first cycle; concept below it gets no boost
    assert recs[0]["reference_set"] == ["concept", "compliance", "style"]
    assert recs[-1]["loss_gap"]["calc"] == pytest.approx(0.5) and recs[-1]["loss_gap"]["concept"] == 0.0
    assert w["concept"] == pytest.approx(w["style"])


def test_exp3_shifts_mass_to_rewarded_arm_and_is_seeded():
    def losses(c):  # only calc keeps improving; the others are flat
        return {"calc": 2.0 * 0.85 ** c, "concept": 1.0, "compliance": 1.0, "style": 1.0}

    a = make_policy("exp3", TASKS, None, **dict(KW, cap=1.0, floor=0.0))
    recs = run(a, 40, lambda c: {}, losses)
    w = a.weights()
    assert w["calc"] == max(w.values()) and w["calc"] > 0.5
    assert {r["arm"] for r in recs} >= {"calc"}
    b = make_policy("exp3", TASKS, None, **dict(KW, cap=1.0, floor=0.0))
    assert [r["arm"] for r in run(b, 40, lambda c: {}, losses)] == [r["arm"] for r in recs]
    c = make_policy("exp3", TASKS, None, **dict(KW, cap=1.0, floor=0.0, seed=8))
    assert [r["arm"] for r in run(c, 40, lambda c: {}, losses)] != [r["arm"] for r in recs]


@pytest.mark.parametrize("method", ["heat", "uniform", "static", "dbl", "exp3"])
def test_state_round_trip_continues_identically(method):
    scores = lambda c: {t: 0.5 + 0.1 * ((c * (i + 1)) % 4) for i, t in enumerate(TASKS)}  # noqa: E731
    losses = lambda c: {t: 1.0 + 0.2 * ((c + i) % 3) for i, t in enumerate(TASKS)}  # noqa: E731
    per = lambda c: {"calc": [0.2, 0.9, 0.5 + 0.01 * c]}  # noqa: E731
    full = make_policy(method, TASKS, BASE, **KW)
    ref = run(full, 10, scores, losses, per)
    first = make_policy(method, TASKS, BASE, **KW)
    run(first, 4, scores, losses, per)
    state = json.loads(json.dumps(first.state_dict()))  # must survive JSON
    resumed = make_policy(method, TASKS, BASE, **KW)
    resumed.load_state_dict(state)
    rest = [resumed.update(c, 100 * c, scores(c), per(c), losses(c), {}) for c in range(4, 10)]
    assert rest == ref[4:]
    with pytest.raises(CheckpointError):
        make_policy(method, TASKS[:3], None, **KW).load_state_dict(state)


def test_ema_smooths_weight_moves_over_cycles():
    scores = {"calc": 0.2, "concept": 0.9, "compliance": 0.9, "style": 0.9}
    fast = make_policy("heat", TASKS, None, **dict(KW, ema=0.0))
    slow = make_policy("heat", TASKS, None, **dict(KW, ema=0.5))
    w0 = slow.weights()["calc"]
    rec = slow.update(0, 0, scores, {}, {}, {})
    fast.update(0, 0, scores, {}, {}, {})
    # one cycle moves halfway to the target; the unsmoothed controller jumps straight to it
    assert slow.weights()["calc"] == pytest.approx(0.5 * w0 + 0.5 * rec["target"]["calc"])
    assert fast.weights()["calc"] == pytest.approx(rec["target"]["calc"])
    for c in range(1, 30):
        slow.update(c, c, scores, {}, {}, {})
    assert slow.weights()["calc"] == pytest.approx(rec["target"]["calc"], abs=1e-6)


SIZES = {"calc": 1000, "concept": 125, "compliance": 8, "style": 1}


def test_natural_is_proportional_to_size_and_ignores_bounds_and_metrics():
    p = make_policy("natural", TASKS, BASE, **KW, sizes=SIZES)
    # textbook definition: the floor (0.05) and cap (0.5) of KW do not apply
    assert p.weights() == pytest.approx({t: v / 1134 for t, v in SIZES.items()})
    before = p.weights()
    run(p, 4, lambda c: {"style": 0.0, "calc": 1.0}, lambda c: {"style": 9.0})
    assert p.weights() == before


def test_temperature_flattens_sizes_by_tau():
    p = make_policy("temperature", TASKS, BASE, **KW, sizes=SIZES)  # tau 3: cube roots 10, 5, 2, 1
    assert p.weights() == pytest.approx({"calc": 10 / 18, "concept": 5 / 18, "compliance": 2 / 18, "style": 1 / 18})
    hot = make_policy("temperature", TASKS, None, sizes=SIZES, tau=1e9)
    assert hot.weights() == pytest.approx({t: 0.25 for t in TASKS}, abs=1e-6)
    assert make_policy("temperature", TASKS, None, sizes=SIZES, tau=1.0).weights() == pytest.approx(
        make_policy("natural", TASKS, None, sizes=SIZES).weights())


def test_size_based_methods_need_sizes_for_every_task():
    with pytest.raises(ConfigError, match="training-set sizes"):
        make_policy("natural", TASKS, BASE, **KW)
    with pytest.raises(ConfigError, match="missing \\['style'\\]"):
        make_policy("temperature", TASKS, None, sizes={t: 5 for t in TASKS[:3]})
    with pytest.raises(ConfigError, match="tau"):
        make_policy("temperature", TASKS, None, sizes=SIZES, tau=0.0)


def test_static_without_bounds_reproduces_size_weights_exactly():
    """The mixing study runs natural/temperature as static over their weights (see bench/mixing.py)."""
    for method in ("natural", "temperature"):
        w = make_policy(method, TASKS, None, sizes=SIZES).weights()
        static = make_policy("static", TASKS, w, **dict(KW, uniform_mix=0.0, floor=0.0, cap=1.0))
        assert static.weights() == pytest.approx(w, rel=1e-12, abs=1e-15)
