"""Instruction-embedding consistency: pooled instruction states + supervised contrastive loss.

Paraphrases of one task's instruction should land close together and away from other tasks'
instructions. Pulling paraphrases together with a plain cosine term alone collapses every
embedding onto one point; SupCon (Khosla et al., 2020, the ``L_out`` form) pulls positives in
*relative to* all other samples in the batch, so negatives keep the space spread out.

The loss is only informative when every task in the batch has at least two *different*
phrasings (two copies of one phrasing give a trivial positive), which
:func:`compose_consistency_batch` guarantees.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence

import torch

from mixtune.errors import ConfigError, DataError


def pool_instruction(hidden: torch.Tensor, instr_mask: torch.Tensor) -> torch.Tensor:
    """Masked mean of ``hidden`` [B,T,H] over positions where ``instr_mask`` [B,T] is non-zero → [B,H].

    A row with an empty mask pools to zeros (instead of NaN) so one bad row cannot poison a batch.
    """
    if hidden.dim() != 3 or instr_mask.shape != hidden.shape[:2]:
        raise ValueError(f"expected hidden [B,T,H] and mask [B,T], got {tuple(hidden.shape)} and "
                         f"{tuple(instr_mask.shape)}")
    m = instr_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def supcon_loss(emb: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Supervised contrastive loss over L2-normalised ``emb`` [B,H] with integer class ``labels`` [B].

    For anchor i with positives P(i) (same label, j != i) and all others A(i) (j != i)::

        l_i = -1/|P(i)| * sum_{p in P(i)} log( exp(s_ip / t) / sum_{a in A(i)} exp(s_ia / t) )

    averaged over anchors that have at least one positive. With no positive pair in the batch the
    result is a zero that still carries a graph to ``emb`` so callers can add it unconditionally.
    """
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}", "consistency.temperature")
    if emb.dim() != 2 or labels.shape != emb.shape[:1]:
        raise ValueError(f"expected emb [B,H] and labels [B], got {tuple(emb.shape)} and {tuple(labels.shape)}")
    b = emb.shape[0]
    # Work in fp32: bf16 similarities divided by a small temperature lose most of their precision.
    z = torch.nn.functional.normalize(emb.float(), dim=-1)
    logits = z @ z.T / temperature
    self_mask = torch.eye(b, dtype=torch.bool, device=emb.device)
    logits = logits.masked_fill(self_mask, float("-inf"))  # exclude the anchor from its own denominator
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (labels.view(-1, 1) == labels.view(1, -1)) & ~self_mask
    n_pos = pos.sum(dim=1)
    has_pos = n_pos > 0
    if not bool(has_pos.any()):
        return emb.sum() * 0.0
    # masked_fill before the sum: -inf on the diagonal times 0 would give NaN.
    pos_log_prob = log_prob.masked_fill(~pos, 0.0).sum(dim=1)
    per_anchor = -pos_log_prob[has_pos] / n_pos[has_pos]
    return per_anchor.mean()


def cosine_gap(emb: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean intra-task cosine minus mean inter-task cosine over distinct pairs (NaN if either is empty)."""
    with torch.no_grad():
        z = torch.nn.functional.normalize(emb.detach().float(), dim=-1)
        sim = z @ z.T
        b = z.shape[0]
        off_diag = ~torch.eye(b, dtype=torch.bool, device=z.device)
        same = labels.view(-1, 1) == labels.view(1, -1)
        intra, inter = sim[same & off_diag], sim[~same]
        if intra.numel() == 0 or inter.numel() == 0:
            return math.nan
        return float(intra.mean() - inter.mean())


def compose_consistency_batch(
    samples_meta: Sequence[tuple[int, int, int]], batch_size: int, rng: random.Random
) -> list[int]:
    """Draw one batch of sample indices in which every task present has >= 2 different phrasings.

    ``samples_meta`` holds ``(index, task_id, phrasing_id)`` per candidate sample (a perturbed
    twin can be passed with its own phrasing id so it joins its task's views). Tasks with only one
    phrasing cannot contribute a positive pair and are never drawn. As many tasks as possible are
    included (``batch_size // 2``, so SupCon also has negatives), each seeded with two samples of
    two different phrasings; remaining slots are filled round-robin over the chosen tasks,
    preferring their least-represented phrasing. The batch is shorter than ``batch_size`` only when
    the chosen tasks run out of samples. Sampling is without replacement and driven by ``rng``.
    """
    if batch_size < 2:
        raise ConfigError(f"a consistency batch needs batch_size >= 2, got {batch_size}", "batch_size")
    by_task: dict[int, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for index, task_id, phrasing_id in samples_meta:
        by_task[task_id][phrasing_id].append(index)
    eligible = sorted(t for t, ph in by_task.items() if len(ph) >= 2)  # sorted: dict order ≠ seed order
    if not eligible:
        raise DataError("no task has two different instruction phrasings; the consistency term needs "
                        "paraphrases (ontology 'instruction phrasings')", "consistency batch")
    rng.shuffle(eligible)
    chosen = eligible[: max(1, batch_size // 2)]

    # Private, shuffled pools per (task, phrasing) so we can pop without replacement.
    pools: dict[int, dict[int, list[int]]] = {}
    for t in chosen:
        pools[t] = {}
        for p in sorted(by_task[t]):
            items = list(by_task[t][p])
            rng.shuffle(items)
            pools[t][p] = items
    used: dict[int, dict[int, int]] = {t: defaultdict(int) for t in chosen}
    batch: list[int] = []

    def take(t: int, p: int) -> None:
        batch.append(pools[t][p].pop())
        used[t][p] += 1

    for t in chosen:
        first, second = rng.sample(sorted(pools[t]), 2)
        take(t, first)
        take(t, second)

    while len(batch) < batch_size:
        progressed = False
        for t in chosen:
            if len(batch) >= batch_size:
                break
            open_phr = [p for p, items in pools[t].items() if items]
            if not open_phr:
                continue
            least = min(used[t][p] for p in open_phr)
            take(t, rng.choice([p for p in open_phr if used[t][p] == least]))
            progressed = True
        if not progressed:
            break
    rng.shuffle(batch)  # no task-ordered layout: position must not leak the label
    return batch
