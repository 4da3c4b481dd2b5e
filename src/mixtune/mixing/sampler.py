"""Stateful, distributed-aware sampler of task-homogeneous micro-batches.

Each call: pick a task from the policy's weights, a level from the curriculum's distribution
(falling back to the nearest level that has samples for that task), then take the next
``batch_size × world_size`` indices from that (task, level) pool's current permutation; rank
``r`` keeps slice ``r``. Every rank runs the same seeded RNG, so all ranks agree on task and level
without communication and their slices are disjoint.

Pools are sampled without replacement; a pool's permutation for epoch ``e`` is derived from
``(seed, task, level, e)``, so the state is just the RNG state plus ``(epoch, position)`` per pool
and resume continues exactly. When a pool's remainder cannot fill a global batch it is dropped
and the pool reshuffles (like ``drop_last``): a batch never mixes two epochs, which keeps the
ranks' slices disjoint. A pool smaller than one global batch wraps through several epochs —
duplicates are then unavoidable.
"""

from __future__ import annotations

import bisect
import random
from itertools import accumulate

from mixtune.errors import CheckpointError, ConfigError, DataError
from mixtune.mixing.base import MixingPolicy, rng_state_from_json, rng_state_to_json
from mixtune.mixing.curriculum import LEVELS, Curriculum


class MixtureSampler:
    """Draws ``(task, indices)`` micro-batches following a policy and a curriculum."""

    def __init__(self, samples_meta: list[tuple[int, str, int]], policy: MixingPolicy,
                 curriculum: Curriculum | None, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1):
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"need batch_size >= 1 and 0 <= rank < world_size, got batch_size={batch_size}, "
                              f"rank={rank}, world_size={world_size}", where="sampler")
        pools: dict[str, dict[int, list[int]]] = {}
        for idx, task, level in samples_meta:
            if not 1 <= int(level) <= LEVELS:
                raise DataError(f"sample {idx} of task {task!r} has level {level}, expected 1..{LEVELS}",
                                where="sampler.samples_meta")
            pools.setdefault(task, {}).setdefault(int(level), []).append(int(idx))
        self.pools = {t: {lv: sorted(ix) for lv, ix in sorted(by.items())} for t, by in sorted(pools.items())}
        self.tasks = [t for t in policy.tasks if t in self.pools]
        # Policy tasks without any sample can never be drawn; exposed so the trainer can log them.
        self.missing_tasks = [t for t in policy.tasks if t not in self.pools]
        if not self.tasks:
            raise DataError(f"no samples for any of the policy's tasks {policy.tasks}", where="sampler")
        self.policy, self.curriculum = policy, curriculum
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.rng = random.Random(seed)
        self.pos = {t: {lv: [0, 0] for lv in by} for t, by in self.pools.items()}  # [epoch, position]
        self._perm_cache: dict[tuple[str, int], tuple[int, list[int]]] = {}
        self.batches = 0
        self.last: dict = {}  # task and level of the latest batch, for the trainer's logs

    def _perm(self, task: str, level: int, epoch: int) -> list[int]:
        cached = self._perm_cache.get((task, level))
        if cached and cached[0] == epoch:
            return cached[1]
        perm = list(self.pools[task][level])
        # String seeds hash with SHA-512 inside random: stable across processes and PYTHONHASHSEED.
        random.Random(f"{self.seed}|{task}|{level}|{epoch}").shuffle(perm)
        self._perm_cache[(task, level)] = (epoch, perm)
        return perm

    def _pick_task(self) -> str:
        w = self.policy.weights()
        ws = [max(w.get(t, 0.0), 0.0) for t in self.tasks]
        if sum(ws) <= 0:  # every task with data has weight 0: fall back to stratified
            ws = [1.0] * len(self.tasks)
        cum = list(accumulate(ws))
        i = bisect.bisect_right(cum, self.rng.random() * cum[-1])
        return self.tasks[min(i, len(self.tasks) - 1)]

    def _pick_level(self, task: str, progress: float) -> int:
        present = list(self.pools[task])
        if self.curriculum is None:
            dist = [1.0 if lv + 1 in present else 0.0 for lv in range(LEVELS)]
        else:
            dist = self.curriculum.level_distribution(task, progress, present=present)
        cum = list(accumulate(dist))
        u = self.rng.random() * cum[-1]
        level = min(bisect.bisect_right(cum, u), LEVELS - 1) + 1
        if level in self.pools[task]:
            return level
        # Nearest level with samples; ties go to the harder level, since a missing level usually
        # means the task's data is harder than the pacing assumed, not easier.
        return min(present, key=lambda lv: (abs(lv - level), -lv))

    def _take(self, task: str, level: int, n: int) -> list[int]:
        st = self.pos[task][level]
        size = len(self.pools[task][level])
        out: list[int] = []
        while len(out) < n:
            remaining = size - st[1]
            if remaining == 0 or (not out and size >= n and remaining < n):
                st[0], st[1] = st[0] + 1, 0  # epoch exhausted (or remainder dropped): reshuffle
            perm = self._perm(task, level, st[0])
            k = min(n - len(out), size - st[1])
            out.extend(perm[st[1]:st[1] + k])
            st[1] += k
        return out

    def next_batch(self, progress: float) -> tuple[str, list[int]]:
        """Return ``(task, indices)`` for this rank; ``progress`` in [0, 1] drives the pacing."""
        task = self._pick_task()
        level = self._pick_level(task, progress)
        glob = self._take(task, level, self.batch_size * self.world_size)
        self.batches += 1
        self.last = {"task": task, "level": level}
        return task, glob[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]

    def state_dict(self) -> dict:
        """RNG state and pool positions (JSON); loading it continues the exact sequence."""
        return {"seed": self.seed, "batch_size": self.batch_size, "world_size": self.world_size,
                "batches": self.batches, "rng": rng_state_to_json(self.rng.getstate()),
                "pools": {t: {str(lv): list(p) for lv, p in by.items()} for t, by in self.pos.items()},
                "sizes": {t: {str(lv): len(ix) for lv, ix in by.items()} for t, by in self.pools.items()}}

    def load_state_dict(self, d: dict) -> None:
        """Restore; refuses a state from a different seed, batch geometry or dataset."""
        mine = (self.seed, self.batch_size, self.world_size)
        theirs = (d.get("seed"), d.get("batch_size"), d.get("world_size"))
        if mine != theirs:
            raise CheckpointError(f"sampler state has (seed, batch_size, world_size)={theirs}, this run {mine}; "
                                  "exact resume needs the same values", where="sampler.state")
        sizes = {t: {str(lv): len(ix) for lv, ix in by.items()} for t, by in self.pools.items()}
        if d.get("sizes") != sizes:
            raise CheckpointError("sampler state was saved for a different dataset (task/level pool sizes "
                                  "differ); rebuild the data version the run used", where="sampler.state")
        self.rng.setstate(rng_state_from_json(d["rng"]))
        self.pos = {t: {int(lv): [int(p[0]), int(p[1])] for lv, p in by.items()} for t, by in d["pools"].items()}
        self.batches = int(d["batches"])
        self._perm_cache.clear()
