"""Pinning tests for mixing/sampler.py (issue 17, extended scope): exact draws, fallbacks, epochs."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from mixtune.errors import CheckpointError, ConfigError, DataError
from mixtune.mixing.curriculum import Curriculum
from mixtune.mixing.sampler import MixtureSampler


class FixedPolicy:
    """A policy stub with fixed weights (the sampler only reads ``tasks`` and ``weights()``)."""

    def __init__(self, weights: dict[str, float]):
        self.tasks = list(weights)
        self._w = dict(weights)

    def weights(self) -> dict[str, float]:
        return dict(self._w)


def _raises(exc_type, where, starts, fn, *args, **kwargs):
    with pytest.raises(exc_type) as info:
        fn(*args, **kwargs)
    assert info.value.where == where, info.value.where
    assert info.value.message.startswith(starts), info.value.message


def _meta(spec: dict[str, dict[int, int]]) -> list[tuple[int, str, int]]:
    out, i = [], 0
    for task, levels in spec.items():
        for lv, n in levels.items():
            for _ in range(n):
                out.append((i, task, lv))
                i += 1
    return out


def test_constructor_validation_and_edges():
    pol = FixedPolicy({"a": 1.0})
    meta = _meta({"a": {1: 4}})
    for kw in (dict(batch_size=0), dict(world_size=0), dict(rank=-1), dict(rank=2, world_size=2)):
        args = {"batch_size": 1, "rank": 0, "world_size": 1, **kw}
        _raises(ConfigError, "sampler", "need batch_size >= 1 and 0 <= rank < world_size", MixtureSampler,
                meta, pol, None, seed=0, **args)
    s = MixtureSampler(meta, pol, None, batch_size=1, seed=0, rank=1, world_size=2)
    assert (s.batch_size, s.rank, s.world_size, s.batches, s.last) == (1, 1, 2, 0, {})
    for bad in (0, 6):
        _raises(DataError, "sampler.samples_meta", f"sample 0 of task 'a' has level {bad}, expected 1..5",
                MixtureSampler, [(0, "a", bad)], pol, None, batch_size=1, seed=0)
    for ok in (1, 5):
        assert MixtureSampler([(0, "a", ok)], pol, None, batch_size=1, seed=0).pools == {"a": {ok: [0]}}
    _raises(DataError, "sampler", "no samples for any of the policy's tasks ['a']", MixtureSampler,
            [(0, "z", 1)], pol, None, batch_size=1, seed=0)
    two = MixtureSampler(meta, FixedPolicy({"a": 1.0, "b": 1.0}), None, batch_size=1, seed=0)
    assert two.tasks == ["a"] and two.missing_tasks == ["b"]


def test_task_frequency_follows_weights_and_clamps_negatives():
    meta = _meta({"a": {1: 50}, "b": {1: 50}, "c": {1: 50}})
    s = MixtureSampler(meta, FixedPolicy({"a": 0.75, "b": 0.25, "c": 0.0}), None, batch_size=1, seed=1)
    counts = Counter(s.next_batch(0.0)[0] for _ in range(2000))
    assert counts["c"] == 0 and abs(counts["a"] / 2000 - 0.75) < 0.03
    neg = MixtureSampler(meta, FixedPolicy({"a": -1.0, "b": 1.0, "c": 0.0}), None, batch_size=1, seed=1)
    assert {neg.next_batch(0.0)[0] for _ in range(200)} == {"b"}
    zero = MixtureSampler(meta, FixedPolicy({"a": 0.0, "b": 0.0, "c": 0.0}), None, batch_size=1, seed=1)
    counts = Counter(zero.next_batch(0.0)[0] for _ in range(1500))  # all zero: stratified fallback
    assert all(abs(counts[t] / 1500 - 1 / 3) < 0.04 for t in "abc")
    last = MixtureSampler(meta, FixedPolicy({"a": 0.0, "b": 0.0, "c": 1.0}), None, batch_size=1, seed=1)
    assert {last.next_batch(0.0)[0] for _ in range(100)} == {"c"}
    partial = FixedPolicy({"a": 1.0, "b": 1.0})
    partial.tasks = ["a", "b", "c"]  # a policy that reports no weight for c: c is never drawn
    s = MixtureSampler(meta, partial, None, batch_size=1, seed=1)
    assert {s.next_batch(0.0)[0] for _ in range(200)} == {"a", "b"}


def test_level_uniform_without_curriculum_and_nearest_harder_fallback():
    meta = _meta({"a": {1: 30, 3: 30, 5: 30}})
    s = MixtureSampler(meta, FixedPolicy({"a": 1.0}), None, batch_size=1, seed=2)
    levels = Counter()
    for _ in range(1500):
        s.next_batch(0.0)
        levels[s.last["level"]] += 1
    assert set(levels) == {1, 3, 5} and all(abs(levels[lv] / 1500 - 1 / 3) < 0.04 for lv in (1, 3, 5))
    two = [0.0, 1.0, 0.0, 0.0, 0.0]  # curriculum wants level 2; 1 and 3 are equally near: harder wins
    cur = Curriculum(["a"], two, two, two, pacing="thirds", c0=0.1)
    s = MixtureSampler(meta, FixedPolicy({"a": 1.0}), cur, batch_size=1, seed=2)
    for _ in range(20):
        s.next_batch(0.5)
        assert s.last == {"task": "a", "level": 3}
    top = [0.0, 0.0, 0.0, 0.0, 1.0]
    only_low = MixtureSampler(_meta({"a": {1: 5, 2: 5}}), FixedPolicy({"a": 1.0}),
                              Curriculum(["a"], top, top, top, pacing="thirds", c0=0.1), batch_size=1, seed=2)
    only_low.next_batch(0.5)
    assert only_low.last["level"] == 2
    high = MixtureSampler(_meta({"a": {4: 5, 5: 5}}), FixedPolicy({"a": 1.0}),
                          Curriculum(["a"], top, top, top, pacing="thirds", c0=0.1), batch_size=1, seed=2)
    for _ in range(10):
        high.next_batch(0.5)
        assert high.last["level"] == 5  # the top level itself is drawable, not only reached by fallback
    exact = MixtureSampler(_meta({"a": {1: 5, 5: 5}}), FixedPolicy({"a": 1.0}),
                           Curriculum(["a"], top, top, top, pacing="thirds", c0=0.1), batch_size=1, seed=2)
    for _ in range(10):
        exact.next_batch(0.5)
        assert exact.last["level"] == 5


def test_disabled_curriculum_is_uniform_over_the_task_s_present_levels():
    off = Curriculum(["a"], [1, 0, 0, 0, 0], [1, 0, 0, 0, 0], [1, 0, 0, 0, 0], enabled=False, pacing="thirds", c0=0.1)
    s = MixtureSampler(_meta({"a": {1: 50, 5: 50}}), FixedPolicy({"a": 1.0}), off, batch_size=1, seed=8)
    levels = Counter()
    for _ in range(2000):
        s.next_batch(0.3)
        levels[s.last["level"]] += 1
    assert abs(levels[1] / 2000 - 0.5) < 0.03  # not 2/5 (uniform over all five, then nearest-harder)


def test_epochs_without_replacement_and_dropped_remainder():
    s = MixtureSampler(_meta({"a": {1: 10}}), FixedPolicy({"a": 1.0}), None, batch_size=4, seed=5)
    b = [s.next_batch(0.0)[1] for _ in range(6)]
    assert len(set(b[0] + b[1])) == 8  # one epoch: no repeats
    assert s.pos["a"][1] == [2, 8]  # two epochs fully used minus their 2-sample remainders, third at 8
    assert len(set(b[2] + b[3])) == 8 and len(set(b[4] + b[5])) == 8
    assert all(len(x) == 4 for x in b) and s.batches == 6
    assert set(b[0] + b[1]) != set(b[2] + b[3])  # the remainder is dropped, the next epoch reshuffles
    exact = MixtureSampler(_meta({"a": {1: 8}}), FixedPolicy({"a": 1.0}), None, batch_size=4, seed=5)
    e = [exact.next_batch(0.0)[1] for _ in range(3)]
    assert sorted(e[0] + e[1]) == list(range(8)) and exact.pos["a"][1] == [1, 4]


def test_small_pool_wraps_through_epochs():
    s = MixtureSampler(_meta({"a": {1: 3}}), FixedPolicy({"a": 1.0}), None, batch_size=4, seed=5)
    task, idx = s.next_batch(0.0)
    assert task == "a" and len(idx) == 4 and sorted(set(idx)) == [0, 1, 2]
    assert s.pos["a"][1] == [1, 1]
    more = [s.next_batch(0.0)[1] for _ in range(2)]  # continues mid-epoch across the wrap
    assert all(len(x) == 4 and set(x) <= {0, 1, 2} for x in more) and s.pos["a"][1] == [3, 3]


def test_ranks_share_task_and_level_and_get_disjoint_slices():
    meta = _meta({"a": {1: 20, 2: 20}, "b": {3: 20}})
    pol = FixedPolicy({"a": 0.5, "b": 0.5})
    ranks = [MixtureSampler(meta, pol, None, batch_size=3, seed=9, rank=r, world_size=3) for r in range(3)]
    single = MixtureSampler(meta, pol, None, batch_size=9, seed=9)
    for _ in range(8):
        got = [r.next_batch(0.2) for r in ranks]
        whole = single.next_batch(0.2)
        assert {t for t, _ in got} == {whole[0]}
        assert [i for _, part in got for i in part] == whole[1]
        assert all(len(part) == 3 for _, part in got)


def test_state_round_trip_and_refusals():
    meta = _meta({"a": {1: 7, 2: 5}, "b": {4: 9}})
    pol = FixedPolicy({"a": 0.6, "b": 0.4})
    s = MixtureSampler(meta, pol, None, batch_size=2, seed=4)
    for _ in range(5):
        s.next_batch(0.0)
    state = json.loads(json.dumps(s.state_dict()))
    assert state["sizes"] == {"a": {"1": 7, "2": 5}, "b": {"4": 9}} and state["batches"] == 5
    assert (state["seed"], state["batch_size"], state["world_size"]) == (4, 2, 1)
    r = MixtureSampler(meta, pol, None, batch_size=2, seed=4)
    r.load_state_dict(state)
    assert r.batches == 5 and r.pos == s.pos
    assert [r.next_batch(0.0) for _ in range(12)] == [s.next_batch(0.0) for _ in range(12)]
    with pytest.raises(CheckpointError) as info:
        MixtureSampler(meta, pol, None, batch_size=2, seed=5).load_state_dict(state)
    assert info.value.where == "sampler.state"
    assert info.value.message == ("sampler state has (seed, batch_size, world_size)=(4, 2, 1), this run "
                                  "(5, 2, 1); exact resume needs the same values")
    other = MixtureSampler(_meta({"a": {1: 7, 2: 6}, "b": {4: 9}}), pol, None, batch_size=2, seed=4)
    with pytest.raises(CheckpointError) as info:
        other.load_state_dict(state)
    assert info.value.where == "sampler.state" and info.value.message == (
        "sampler state was saved for a different dataset (task/level pool sizes differ); rebuild the data "
        "version the run used")
