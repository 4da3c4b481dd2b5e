"""Deterministic stage-1 batch plans and distributed loss normalisation.

A stage-1 batch is a pure function of (seed, micro-batch index): the plain plan walks seeded
per-epoch permutations, the consistency plan composes batches where each task present has at
least two phrasings. Being stateless in everything but the index, the "sampler position" is the
step counter itself, so resume is exact by construction and every rank derives the same global
batch and takes a disjoint slice of it.
"""

from __future__ import annotations

import random

import torch


def epoch_batch(n: int, batch_size: int, index: int, seed: int) -> list[int]:
    """Items ``[index*bs, (index+1)*bs)`` of the infinite stream of seeded per-epoch permutations."""
    out: list[int] = []
    cache: dict[int, list[int]] = {}
    for g in range(index * batch_size, (index + 1) * batch_size):
        epoch, pos = divmod(g, n)
        if epoch not in cache:
            perm = list(range(n))
            random.Random(seed * 1_000_003 + epoch).shuffle(perm)
            cache[epoch] = perm
        out.append(cache[epoch][pos])
    return out


def step_rng(seed: int, index: int, salt: int = 0) -> random.Random:
    return random.Random((seed * 1_000_003 + index) * 31 + salt)


def rank_slice(items: list, rank: int, world: int) -> list:
    """Disjoint, near-equal share of a global batch for one rank."""
    return items[rank::world]


def global_count(local: int, accelerator) -> int:
    """Sum of a per-rank count over all ranks (token counts for exact loss normalisation)."""
    if accelerator.num_processes == 1:
        return int(local)
    t = torch.tensor([local], dtype=torch.long, device=accelerator.device)
    return int(accelerator.reduce(t, reduction="sum").item())


def global_sum(value: float, accelerator) -> float:
    if accelerator.num_processes == 1:
        return float(value)
    t = torch.tensor([value], dtype=torch.float64, device=accelerator.device)
    return float(accelerator.reduce(t, reduction="sum").item())
