"""Pinning tests for release/stats.py (issue 17): interval level, chunking, anytime validity.

The sequential test is checked against a plain per-observation reimplementation of the documented
betting rule (``_reference``), so any change to bets, truncation, threshold or bookkeeping shows.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixtune.errors import DataError
from mixtune.release import stats
from mixtune.release.stats import SequentialTest, paired_bootstrap


def _raises(starts, fn, *args, **kwargs):
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    assert info.value.message.startswith(starts), info.value.message


# ------------------------------------------------------------------ paired bootstrap
def test_bootstrap_interval_has_its_nominal_coverage():
    # 2000 simulated evaluations with a known true delta. Binomial SE of the coverage is ~0.005,
    # so 95% is told apart from the ~96.7% (or 90%) a wrong tail split would give.
    rng = np.random.default_rng(123)
    covered = 0
    for r in range(2000):
        x = rng.normal(0.3, 1.0, 60)
        bs = paired_bootstrap(x, np.zeros(60), n_boot=400, confidence=0.95, seed=r)
        covered += bs.lo <= 0.3 <= bs.hi
    assert 0.935 <= covered / 2000 <= 0.958


def test_bootstrap_interval_width_matches_the_normal_quantile():
    # For n=400 the bootstrap distribution of the mean is close to normal with sd = s/sqrt(n)
    # (population s of the sample itself), so the width is 2·z·sd for z = Φ⁻¹(1 - tail).
    rng = np.random.default_rng(7)
    d = rng.normal(0.0, 1.0, 400)
    sd = d.std() / math.sqrt(400)
    for conf, z in ((0.95, 1.959964), (0.8, 1.281552)):
        bs = paired_bootstrap(d, np.zeros(400), n_boot=4000, confidence=conf, seed=1)
        assert (bs.hi - bs.lo) / (2 * z * sd) == pytest.approx(1.0, abs=0.04)
        assert bs.confidence == conf and bs.n_boot == 4000 and bs.n == 400


def test_bootstrap_resamples_every_position():
    # Only sample 0 differs: an index draw that can never pick position 0 would give [0, 0].
    bs = paired_bootstrap([1.0, 0.0, 0.0], [0.0, 0.0, 0.0], n_boot=200, seed=0)
    assert bs.delta == pytest.approx(1 / 3) and bs.lo == 0.0 and bs.hi >= 2 / 3


def test_bootstrap_chunking_path_matches_the_one_shot_result(monkeypatch):
    rng = np.random.default_rng(2)
    cand, champ = rng.random(30), rng.random(30)
    whole = paired_bootstrap(cand, champ, n_boot=50, confidence=0.9, seed=4)
    monkeypatch.setattr(stats, "_MAX_CELLS", 70)  # 2 replicates per chunk, last chunk partial
    assert paired_bootstrap(cand, champ, n_boot=51, confidence=0.9, seed=4).n_boot == 51
    assert paired_bootstrap(cand, champ, n_boot=50, confidence=0.9, seed=4) == whole
    monkeypatch.setattr(stats, "_MAX_CELLS", 10)  # fewer cells than samples: one replicate a chunk
    assert paired_bootstrap(cand, champ, n_boot=50, confidence=0.9, seed=4) == whole


def test_bootstrap_defaults_and_validation():
    a, b = [0.1, 0.5, 0.9, 0.3], [0.2, 0.2, 0.6, 0.1]
    assert paired_bootstrap(a, b) == paired_bootstrap(a, b, n_boot=1000, confidence=0.95, seed=0)
    one = paired_bootstrap([0.25] * 3, [0.0] * 3, n_boot=1)
    assert (one.lo, one.hi, one.n_boot) == (0.25, 0.25, 1)  # the single replicate is really computed
    assert one.to_dict() == {"delta": 0.25, "lo": 0.25, "hi": 0.25, "n": 3, "confidence": 0.95, "n_boot": 1}
    # pass/fail scores may arrive as booleans: they are read as 1/0
    assert paired_bootstrap([True, True, False], [False, True, False], n_boot=10).delta == pytest.approx(1 / 3)
    _raises("n_boot must be >= 1 (got 0)", paired_bootstrap, a, b, n_boot=0)
    for conf in (0.0, 1.0, 1.5, -0.1):
        _raises(f"confidence must be in (0, 1) (got {conf})", paired_bootstrap, a, b, confidence=conf)
    _raises("paired scores need equal lengths (candidate 2, champion 1)", paired_bootstrap, [1, 0], [1])
    _raises("candidate scores has a non-finite value at position 1", paired_bootstrap, [1, np.nan], [1, 0])
    _raises("champion scores has a non-finite value at position 0", paired_bootstrap, [1, 0], [np.inf, 0])
    _raises("candidate scores must be a flat sequence of numbers (got shape (1, 2))",
            paired_bootstrap, [[1, 0]], [[1, 0]])
    _raises("paired bootstrap needs at least one paired sample", paired_bootstrap, [], [])


@settings(max_examples=40, deadline=None)
@given(
    diffs=st.lists(st.floats(-1.0, 1.0), min_size=2, max_size=40),
    conf=st.floats(0.5, 0.9),
    seed=st.integers(0, 1000),
)
def test_law_interval_contains_estimate_and_widens_with_confidence(diffs, conf, seed):
    d = np.asarray(diffs)
    narrow = paired_bootstrap(d, np.zeros_like(d), n_boot=300, confidence=conf, seed=seed)
    wide = paired_bootstrap(d, np.zeros_like(d), n_boot=300, confidence=min(conf + 0.09, 0.99), seed=seed)
    assert wide.lo <= narrow.lo <= narrow.hi <= wide.hi
    # the point estimate is the sample mean; a percentile interval of 300 resamples brackets it
    # unless the data are nearly constant, where both collapse onto it
    assert wide.lo - 1e-9 <= narrow.delta <= wide.hi + 1e-9 or narrow.hi - narrow.lo < 1e-6


# ------------------------------------------------------------------ sequential test
def _stream(seed: int, p: list[float], n: int) -> np.ndarray:
    return np.random.default_rng(seed).choice([-1.0, 0.0, 1.0], p=p, size=n)


def _reference(xs, alpha, grid, max_bet):
    """Per-observation reimplementation of the documented betting confidence sequence."""
    g = np.linspace(-1.0, 1.0, grid)
    zero, thr = grid // 2, math.log(2.0 / alpha)
    kp, km = np.zeros(grid), np.zeros(grid)
    alive = np.ones(grid, dtype=bool)
    total = sq = 0.0
    for i, x in enumerate(xs, 1):
        mu, var = total / i, (1.0 + sq) / i
        lam = math.sqrt(2.0 * thr / (var * i * math.log(1.0 + i)))
        for k, m in enumerate(g):
            lp = lam if m == -1.0 else min(lam, max_bet / (1.0 + m))
            lm = lam if m == 1.0 else min(lam, max_bet / (1.0 - m))
            kp[k] += math.log1p(lp * (x - m))
            km[k] += math.log1p(-lm * (x - m))
        alive &= (kp < thr) & (km < thr)
        total += x
        sq += (x - mu) ** 2
        if kp[zero] >= thr:
            return i, "candidate_better", alive, total / i, kp, km
        if km[zero] >= thr:
            return i, "champion_better", alive, total / i, kp, km
    return len(xs), "continue", alive, total / max(len(xs), 1), kp, km


def _ref_interval(alive, grid):
    g = np.linspace(-1.0, 1.0, grid)
    step = g[1] - g[0]
    return max(-1.0, g[alive].min() - step), min(1.0, g[alive].max() + step)


@pytest.mark.parametrize("p,seed,alpha,grid,max_bet", [
    ([0.1, 0.5, 0.4], 1, 0.05, 21, 0.5),
    ([0.4, 0.5, 0.1], 2, 0.05, 21, 0.5),
    ([0.3, 0.4, 0.3], 3, 0.1, 11, 0.3),
    ([0.2, 0.3, 0.5], 4, 0.2, 31, 0.7),
])
def test_sequential_matches_the_reference_betting_rule(p, seed, alpha, grid, max_bet):
    xs = _stream(seed, p, 250) * 0.9  # values off the grid points exercise the truncation
    n, decision, alive, mean, kp, km = _reference(xs, alpha, grid, max_bet)
    t = SequentialTest(alpha, grid=grid, max_bet=max_bet)
    for start in range(0, len(xs), 7):  # peeking in small batches must not change anything
        t.update(xs[start:start + 7])
    assert (t.n, t.decision) == (n, decision)
    assert t.stopped_at == (n if decision != "continue" else None)
    assert t.summary()["mean"] == pytest.approx(mean, abs=1e-12)
    assert t.interval() == pytest.approx(_ref_interval(alive, grid), abs=1e-12)
    state = t.state_dict()  # the capital processes themselves, not just the decisions read off them
    assert state["log_kp"] == pytest.approx(kp, rel=1e-9, abs=1e-12)
    assert state["log_km"] == pytest.approx(km, rel=1e-9, abs=1e-12)
    one_go = SequentialTest(alpha, grid=grid, max_bet=max_bet)
    one_go.update(xs)
    assert one_go.summary() == pytest.approx(t.summary())


def test_sequential_running_mean_keeps_its_sign():
    t = SequentialTest(0.05, grid=21)
    t.update([0.5, 0.25, -0.1])
    s = t.summary()
    assert s["mean"] == pytest.approx(0.65 / 3) and s["n"] == 3 and s["decision"] == "continue"
    assert s["alpha"] == 0.05 and s["stopped_at"] is None
    assert (s["cs_lo"], s["cs_hi"]) == t.interval()
    neg = SequentialTest(0.05, grid=21)
    neg.update([-0.5, -0.25])
    assert neg.summary()["mean"] == pytest.approx(-0.375)
    assert SequentialTest(0.05).summary()["mean"] == 0.0
    assert SequentialTest(0.05).interval() == (-1.0, 1.0)  # nothing seen: clamped to [-1, 1]


def test_sequential_interval_is_valid_under_peeking():
    # True mean 0.2 (a grid point). Read the interval after every batch of 10: it must hold the
    # true mean at every look in at least 1 - alpha of the streams (running intersection).
    alpha, misses = 0.1, 0
    for s in range(150):
        t = SequentialTest(alpha, grid=51)
        d = _stream(500 + s, [0.2, 0.4, 0.4], 400)
        ok = True
        for start in range(0, 400, 10):
            t.update(d[start:start + 10])
            lo, hi = t.interval()
            ok &= lo <= 0.2 <= hi
        misses += not ok
    assert misses / 150 <= alpha


def test_sequential_coarse_grid_widens_by_one_step():
    # Grid -1, -0.5, 0, 0.5, 1 and true mean 0.5: once the neighbours are rejected the interval is
    # [0, 1] (one grid step either side of the surviving point), never the bare point.
    intervals = []
    for s in range(30):
        t = SequentialTest(0.05, grid=5)
        t.update(_stream(900 + s, [0.05, 0.4, 0.55], 600))
        intervals.append(t.interval())
    assert sum(lo <= 0.5 <= hi for lo, hi in intervals) >= 27  # alpha = 0.05 of 30 streams, plus slack
    assert intervals.count((0.0, 1.0)) >= 25


def test_sequential_interval_holds_a_true_mean_between_grid_points():
    # Grid -1, -0.5, 0, 0.5, 1 and true mean 0.25 (off the grid): long streams reject every grid
    # point; the reported interval must still contain the true mean.
    hits = 0
    for s in range(30):
        t = SequentialTest(0.05, grid=5)
        t._threshold = 1e9  # consume the whole stream, then read the interval at the real level
        t.update(_stream(1300 + s, [0.25, 0.25, 0.5], 4000))
        t._threshold = math.log(2 / 0.05)
        lo, hi = t.interval()
        hits += lo <= 0.25 <= hi
    assert hits >= 27


def test_sequential_all_points_rejected_reports_the_grid_cell_around_the_mean():
    t = SequentialTest(0.05, grid=3)  # grid -1, 0, 1; a constant 0.5 rejects all three
    t.update([0.5] * 40)
    assert t.decision == "candidate_better"
    t2 = SequentialTest(0.05, grid=3)
    t2._threshold = 1e9  # never stop, so the whole stream is consumed (mean 0.5 exactly)
    t2.update([0.5] * 40)
    t2._threshold = math.log(2 / 0.05)
    # Not the point (0.5, 0.5): a true mean between grid points must stay inside the interval.
    assert t2.interval() == (0.0, 1.0)


def test_sequential_consumes_more_than_one_chunk():
    d = _stream(3, [0.3, 0.4, 0.3], 5000)
    t = SequentialTest(0.05, grid=21)
    assert t.update(d) == "continue" and t.n == 5000
    short = SequentialTest(0.05, grid=21)
    short.update(np.ones(100))
    t = SequentialTest(0.05, grid=21)  # stops inside the first chunk: later chunks are not touched
    assert t.update(np.ones(5000)) == "candidate_better"
    assert t.n == t.stopped_at == short.stopped_at < 100
    big = np.concatenate([np.zeros(4200), np.ones(800)])  # decisive evidence only in the 2nd chunk
    t = SequentialTest(0.05, grid=21)
    assert t.update(big) == "candidate_better" and 4200 < t.n == t.stopped_at < 5000


def test_sequential_defaults_and_validation():
    t = SequentialTest()
    assert (t.alpha, t.grid_size, t.max_bet) == (0.05, 401, 0.5)
    assert [SequentialTest(grid=g).grid_size for g in (3, 4, 9, 10)] == [3, 5, 9, 11]
    for a in (0.0, 1.0, 1.5):
        _raises(f"alpha must be in (0, 1) (got {a})", SequentialTest, a)
    _raises("grid must have at least 3 points (got 2)", SequentialTest, 0.05, grid=2)
    for b in (0.0, 1.0, 1.5):
        _raises(f"max_bet must be in (0, 1) (got {b})", SequentialTest, 0.05, max_bet=b)
    _raises("paired differences must lie in [-1, 1]", SequentialTest().update, [-1.5])
    _raises("paired differences has a non-finite value at position 0", SequentialTest().update, [np.nan])
    assert SequentialTest().update([]) == "continue"
    with warnings.catch_warnings():  # the ±1 grid ends divide by zero on purpose, silently
        warnings.simplefilter("error")
        SequentialTest(0.05, grid=5).update([0.5, -0.5])


def test_sequential_reset_and_state_round_trip():
    d = _stream(11, [0.2, 0.5, 0.3], 120)
    t = SequentialTest(0.05, grid=21)
    t.update(d)
    fresh = SequentialTest(0.05, grid=21).state_dict()
    assert fresh["sum"] == 0.0 and fresh["sq_resid"] == 0.0 and fresh["n"] == 0
    state = json.loads(json.dumps(t.state_dict()))
    r = SequentialTest(0.05, grid=21)
    r.load_state_dict(state)
    assert r.state_dict() == t.state_dict()
    assert r.stopped_at == t.stopped_at and r.decision == t.decision
    t.reset()
    assert t.state_dict() == fresh
    stopped = SequentialTest(0.05, grid=21)
    stopped.update(np.ones(60))
    back = SequentialTest(0.05, grid=21)
    back.load_state_dict(json.loads(json.dumps(stopped.state_dict())))
    assert back.stopped_at == stopped.stopped_at is not None
    for key, val in (("grid", 31), ("max_bet", 0.3)):
        with pytest.raises(DataError, match=f"sequential test state has {key}={val!r}"):
            SequentialTest(0.05, grid=21).load_state_dict({**state, key: val})
