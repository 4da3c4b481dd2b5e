"""The IFEval prompt sets shipped with mixtune, and the fixed subset the pipeline evaluates.

Two sets ship in ``data/`` (Apache-2.0, see ``data/LICENSE`` and ``data/NOTICE``): the 541
English IFEval prompts and the 541 Chinese Marco-Bench-MIF prompts (the same instructions,
translated). ``mixtune run`` never reads the test data or anything beside the repository.

Evaluating all 541 prompts on three models is minutes of generation on a CPU, so the pipeline
evaluates N of them. A plain random N would leave the rare instruction types out (IFEval has 25
types; ``detectable_format:constrained_response`` appears in 10 prompts), and a drop in one type
would then go unseen. :func:`stratified_subset` therefore picks prompts so the types are covered
as evenly as possible: it repeatedly takes the least-covered type (ties broken by a seeded
order) and adds that type's next prompt from a seeded queue. A prompt carries one to three
types, so each pick adds to every type it carries. With N at least the number of types every
type is covered; with fewer, N distinct types are. The subset depends only on (seed, N), and a
larger N extends a smaller one (the picks are sequential), so base, stage 1 and stage 2 see the
same prompts and growing N keeps the earlier ones.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from mixtune.errors import DataError
from mixtune.eval.ifeval.scoring import load_prompts

DATA = Path(__file__).resolve().parent / "data"
#: Record family of each shipped set -> (file in ``data/``, counting language of its scorer).
#: The family names are also the gate scopes and the summary.json block names.
PROMPT_SETS: dict[str, tuple[str, str]] = {
    "ifeval": ("input_data.jsonl", "en"),
    "ifeval_zh": ("zh_mt.jsonl", "zh"),
}


def packaged_prompts(family: str) -> list[dict]:
    """All prompts of a shipped set (``ifeval`` English, ``ifeval_zh`` Chinese), validated."""
    if family not in PROMPT_SETS:
        raise DataError(f"no shipped IFEval prompt set {family!r} (sets: {', '.join(PROMPT_SETS)})")
    path = DATA / PROMPT_SETS[family][0]
    if not path.is_file():  # only a damaged install gets here: package data is always installed
        raise DataError("shipped IFEval prompts are missing; reinstall mixtune", where=str(path))
    return load_prompts(path)


def instruction_types(prompts: Sequence[Mapping]) -> list[str]:
    """The distinct instruction ids (``group:name``) carried by ``prompts``, sorted."""
    return sorted({t for p in prompts for t in p["instruction_id_list"]})


def stratified_subset(prompts: Sequence[Mapping], n: int, seed: int) -> list[dict]:
    """``n`` prompts covering the instruction types as evenly as possible, in pick order.

    Deterministic for (``prompts``, ``n``, ``seed``); ``stratified_subset(p, n, s)`` is a prefix
    of ``stratified_subset(p, n + 1, s)``. Fewer than ``n`` come back only when fewer prompts
    carry an instruction at all.
    """
    if n <= 0:
        return []
    # A string seed is hashed with SHA-512 by random.Random: the same subset on every platform.
    rng = random.Random(f"ifeval-subset:{seed}")
    types = instruction_types(prompts)
    rng.shuffle(types)  # the seeded order that breaks ties between equally covered types
    rank = {t: i for i, t in enumerate(types)}
    queues: dict[str, list[int]] = {}
    for t in types:  # shuffled in the seeded type order, so each queue's order is fixed too
        q = [i for i, p in enumerate(prompts) if t in p["instruction_id_list"]]
        rng.shuffle(q)
        queues[t] = q
    taken: set[int] = set()
    covered: Counter[str] = Counter()
    chosen: list[dict] = []
    while len(chosen) < n:
        for q in queues.values():  # drop prompts already picked through another of their types
            while q and q[0] in taken:
                q.pop(0)
        open_types = [t for t in types if queues[t]]
        if not open_types:
            break
        t = min(open_types, key=lambda t: (covered[t], rank[t]))
        i = queues[t].pop(0)
        taken.add(i)
        chosen.append(dict(prompts[i]))
        covered.update(set(prompts[i]["instruction_id_list"]))
    return chosen


def packaged_subset(family: str, n: int, seed: int) -> list[dict]:
    """The stratified subset of ``n`` prompts of a shipped set (see :func:`stratified_subset`)."""
    return stratified_subset(packaged_prompts(family), n, seed) if n > 0 else []
