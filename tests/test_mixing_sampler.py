"""MixtureSampler: task/level selection, without-replacement pools, exact resume, rank disjointness."""

import json
from collections import Counter

import pytest

from mixtune.errors import CheckpointError, DataError
from mixtune.mixing import Curriculum, MixtureSampler, make_policy

TASKS = ["calc", "concept", "style"]
EARLY = [0.5, 0.4, 0.1, 0.0, 0.0]
MIDDLE = [0.1, 0.3, 0.3, 0.3, 0.0]
LATE = [0.0, 0.1, 0.3, 0.3, 0.3]


def meta():
    out, i = [], 0
    for t, levels in (("calc", [1, 2, 3, 4, 5]), ("concept", [1, 2, 3]), ("style", [4, 5])):
        for lv in levels:
            for _ in range(12):
                out.append((i, t, lv))
                i += 1
    return out


def build(seed=3, rank=0, world_size=1, batch_size=4, policy=None, curriculum=True):
    policy = policy or make_policy("static", TASKS, {"calc": 2.0, "concept": 1.0, "style": 1.0},
                                   uniform_mix=0.0, floor=0.0, cap=1.0, seed=0)
    cur = Curriculum(TASKS, EARLY, MIDDLE, LATE) if curriculum else None
    return MixtureSampler(meta(), policy, cur, batch_size=batch_size, seed=seed, rank=rank,
                          world_size=world_size)


def draw(s, n, progress=0.5):
    return [s.next_batch(progress) for _ in range(n)]


def test_batches_are_task_homogeneous_and_follow_weights():
    m = {i: (t, lv) for i, t, lv in meta()}
    s = build()
    batches = draw(s, 400)
    for task, idx in batches:
        assert len(idx) == 4 and all(m[i][0] == task for i in idx)
        assert len({m[i][1] for i in idx}) == 1  # one level per micro-batch
    counts = Counter(t for t, _ in batches)
    assert counts["calc"] / 400 == pytest.approx(0.5, abs=0.07)


def test_curriculum_pacing_and_nearest_level_fallback():
    m = {i: (t, lv) for i, t, lv in meta()}
    s = build(policy=make_policy("uniform", TASKS, None, seed=0))
    early = [m[i][1] for t, idx in draw(s, 300, progress=0.0) if t == "calc" for i in idx]
    late = [m[i][1] for t, idx in draw(s, 300, progress=0.95) if t == "calc" for i in idx]
    assert max(early) <= 3 and sum(early) / len(early) < sum(late) / len(late)
    # style only has levels 4-5: early pacing (levels 1-3) falls back to the nearest, level 4
    style_early = {m[i][1] for t, idx in draw(s, 200, progress=0.0) if t == "style" for i in idx}
    assert style_early == {4}


def test_pool_is_sampled_without_replacement_per_epoch():
    s = MixtureSampler([(i, "calc", 1) for i in range(12)], make_policy("uniform", ["calc"], None, cap=1.0),
                       None, batch_size=4, seed=1)
    epoch1 = [i for _, idx in draw(s, 3) for i in idx]
    epoch2 = [i for _, idx in draw(s, 3) for i in idx]
    assert sorted(epoch1) == sorted(epoch2) == list(range(12))
    assert epoch1 != epoch2  # reshuffled per epoch


def test_resume_continues_exactly():
    full = draw(build(), 50, progress=0.3)
    a = build()
    first = draw(a, 20, progress=0.3)
    state = json.loads(json.dumps(a.state_dict()))
    b = build()
    b.load_state_dict(state)
    assert first + draw(b, 30, progress=0.3) == full


def test_resume_with_changing_policy_weights_matches():
    def go(n, sampler, policy, start=0):
        out = []
        for k in range(start, start + n):
            if k % 10 == 0:
                policy.update(k // 10, k, {"calc": 0.2 + 0.01 * k, "concept": 0.9, "style": 0.7}, {}, {}, {})
            out.append(sampler.next_batch(k / 50))
        return out

    pol = make_policy("heat", TASKS, None, seed=0)
    full = go(50, build(policy=pol), pol)
    pol1 = make_policy("heat", TASKS, None, seed=0)
    s1 = build(policy=pol1)
    head = go(20, s1, pol1)
    pol2 = make_policy("heat", TASKS, None, seed=0)
    pol2.load_state_dict(json.loads(json.dumps(pol1.state_dict())))
    s2 = build(policy=pol2)
    s2.load_state_dict(json.loads(json.dumps(s1.state_dict())))
    assert head + go(30, s2, pol2, start=20) == full


def test_ranks_get_disjoint_slices_of_same_task():
    ranks = [build(rank=r, world_size=3, batch_size=2) for r in range(3)]
    for _ in range(100):
        out = [s.next_batch(0.5) for s in ranks]
        assert len({t for t, _ in out}) == 1  # all ranks agree on the task
        idx = [i for _, ix in out for i in ix]
        assert len(idx) == 6 and len(set(idx)) == 6


def test_state_mismatch_and_bad_meta_are_user_errors():
    state = build().state_dict()
    with pytest.raises(CheckpointError, match="seed"):
        build(seed=4).load_state_dict(state)
    other = MixtureSampler(meta()[:-1], make_policy("uniform", TASKS, None), None, batch_size=4, seed=3)
    with pytest.raises(CheckpointError, match="dataset"):
        other.load_state_dict(state)
    with pytest.raises(DataError, match="level 7"):
        MixtureSampler([(0, "calc", 7)], make_policy("uniform", ["calc"], None, cap=1.0), None, 1, 0)
    with pytest.raises(DataError, match="no samples"):
        MixtureSampler([(0, "x", 1)], make_policy("uniform", ["calc"], None, cap=1.0), None, 1, 0)


def test_remainder_is_dropped_so_ranks_stay_disjoint_across_epochs():
    # pool of 12, global batch 10: the 2 left over would otherwise share a batch with the next epoch
    def mk(r):
        return MixtureSampler([(i, "calc", 1) for i in range(12)], make_policy("uniform", ["calc"], None, cap=1.0),
                              None, batch_size=5, seed=0, rank=r, world_size=2)

    ranks = [mk(0), mk(1)]
    for _ in range(20):
        idx = [i for s in ranks for i in s.next_batch(0.0)[1]]
        assert len(set(idx)) == 10
