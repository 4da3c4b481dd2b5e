"""Paired bootstrap and the anytime-valid sequential test."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mixtune.errors import DataError
from mixtune.release.stats import SequentialTest, paired_bootstrap


def _stream(seed: int, p: list[float], n: int) -> np.ndarray:
    """Paired differences of two binary scores: -1 / 0 / +1 with probabilities p."""
    return np.random.default_rng(seed).choice([-1.0, 0.0, 1.0], p=p, size=n)


def test_bootstrap_delta_interval_and_determinism():
    rng = np.random.default_rng(0)
    champ = rng.random(300)
    cand = champ + 0.05 + rng.normal(0, 0.05, 300)
    r1 = paired_bootstrap(cand, champ, n_boot=500, seed=7)
    r2 = paired_bootstrap(cand, champ, n_boot=500, seed=7)
    assert r1 == r2
    assert r1.delta == pytest.approx(float(np.mean(cand - champ)))
    assert r1.lo < r1.delta < r1.hi
    assert 0.0 < r1.lo and r1.hi < 0.1 and r1.n == 300


def test_bootstrap_pairing_removes_between_sample_variance():
    # Sample difficulty varies a lot; the candidate is uniformly 0.03 better. Only a paired
    # analysis sees that: breaking the pairing (shuffling) must widen the interval to include 0.
    rng = np.random.default_rng(1)
    champ = rng.random(200)
    cand = champ + 0.03
    paired = paired_bootstrap(cand, champ, n_boot=400, seed=0)
    broken = paired_bootstrap(cand, rng.permutation(champ), n_boot=400, seed=0)
    assert paired.lo > 0.02
    assert broken.lo < 0.0 < broken.hi
    assert (broken.hi - broken.lo) > 10 * (paired.hi - paired.lo + 1e-9)


def test_bootstrap_rejects_bad_input():
    with pytest.raises(DataError, match="equal lengths"):
        paired_bootstrap([1.0, 0.0], [1.0])
    with pytest.raises(DataError, match="non-finite"):
        paired_bootstrap([1.0, float("nan")], [1.0, 0.0])
    with pytest.raises(DataError, match="at least one"):
        paired_bootstrap([], [])


def test_sequential_null_false_positive_rate_with_peeking():
    # Under the null, peek after every observation for 300 steps in 200 seeded streams. The betting
    # test must keep its error <= alpha; a naive repeated z-test on the same streams must not (this
    # shows the simulation is sensitive to peeking inflation at all).
    alpha, streams, length = 0.05, 200, 300
    seq_rejects = naive_rejects = 0
    for s in range(streams):
        d = _stream(s, [0.25, 0.5, 0.25], length)
        if SequentialTest(alpha, grid=101).update(d) != "continue":
            seq_rejects += 1
        n = np.arange(1, length + 1)
        mean = np.cumsum(d) / n
        sd = np.sqrt(np.maximum(np.cumsum(d * d) / n - mean**2, 1e-12))
        if np.any(np.abs(mean / (sd / np.sqrt(n)))[19:] > 1.96):
            naive_rejects += 1
    assert seq_rejects / streams <= alpha + 0.02
    assert naive_rejects / streams > 2 * alpha


@pytest.mark.parametrize("p,expected", [([0.1, 0.5, 0.4], "candidate_better"), ([0.4, 0.5, 0.1], "champion_better")])
def test_sequential_clear_effect_stops_early(p, expected):
    stops = []
    for s in range(20):
        t = SequentialTest(0.05, grid=101)
        assert t.update(_stream(100 + s, p, 1000)) == expected
        stops.append(t.stopped_at)
        assert t.n == t.stopped_at  # observations after the stop are not consumed
    assert np.median(stops) < 150


def test_sequential_interval_narrows_and_covers_mean():
    t = SequentialTest(0.05)
    t.update(_stream(5, [0.2, 0.6, 0.2], 50))
    w50 = t.interval()[1] - t.interval()[0]
    t.update(_stream(6, [0.2, 0.6, 0.2], 950))
    lo, hi = t.interval()
    assert lo < 0.0 < hi
    assert hi - lo < w50 / 2
    assert t.summary()["n"] == 1000


def test_sequential_state_dict_resumes_exactly_and_decision_is_sticky():
    d = _stream(9, [0.15, 0.5, 0.35], 400)
    whole = SequentialTest(0.05, grid=51)
    whole.update(d)
    first = SequentialTest(0.05, grid=51)
    first.update(d[:17])
    state = json.loads(json.dumps(first.state_dict()))  # must survive a JSON round trip
    resumed = SequentialTest(0.05, grid=51)
    resumed.load_state_dict(state)
    for x in d[17:]:  # peek after every single observation
        resumed.update(float(x))
    assert resumed.decision == whole.decision == "candidate_better"
    assert resumed.stopped_at == whole.stopped_at
    assert resumed.summary() == pytest.approx(whole.summary())
    n = resumed.n
    assert resumed.update(_stream(10, [0.9, 0.1, 0.0], 200)) == "candidate_better"
    assert resumed.n == n
    with pytest.raises(DataError, match="alpha"):
        SequentialTest(0.1, grid=51).load_state_dict(state)


def test_sequential_rejects_out_of_range_differences():
    with pytest.raises(DataError, match=r"\[-1, 1\]"):
        SequentialTest().update([0.5, 1.5])
