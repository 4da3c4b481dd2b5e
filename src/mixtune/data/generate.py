"""Assemble finance example samples (stage-1 tasks, stage-2 tasks, chains) and inject defects.

Content comes from :mod:`mixtune.data.finance_tasks`; this module turns it into :class:`Sample`
records with the conventions the trainer relies on: the user turn of a single-task sample is
exactly ``instruction + "\\n" + input`` (so instruction tokens are its prefix), chains are
multi-turn conversations whose step k output is quoted in step k+1's user turn, and ``gold``
holds a machine-checkable reference plus the rule ids that judge format compliance.

A configurable share of samples is made deliberately defective (``defect`` names the kind);
validation must catch every one of them, which the tests assert.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable
from datetime import datetime, timezone

from mixtune.data import finance_tasks as ft
from mixtune.data.ontology import Ontology, TaskSpec
from mixtune.data.schema import Message, Sample

DEFECT_KINDS = ("wrong_arithmetic", "off_whitelist_citation", "forbidden_term", "unmasked_pii", "broken_format")
_STEP_ORDINALS = ["第一步", "第二步", "第三步", "第四步", "第五步"]


class PooledRandom(random.Random):
    """``randint`` draws one of ``pool`` evenly spaced values of [a, b].

    With a small pool the same figures recur across samples, so a tiny demo model can memorise
    the input → result mapping instead of having to learn long division; every other draw
    (choices, phrasings, variants) is unchanged.
    """

    def __init__(self, seed: int, pool: int):
        super().__init__(seed)
        self.pool = pool

    def randint(self, a: int, b: int) -> int:
        if b - a + 1 <= self.pool:
            return super().randint(a, b)
        return a + round(self.randrange(self.pool) * (b - a) / (self.pool - 1))


def task_rng(seed: int, *key: str, value_pool: int = 0) -> random.Random:
    """An RNG per (seed, key): adding a task never changes another task's samples.

    ``value_pool`` > 1 restricts integer draws to that many values per range (see PooledRandom).
    """
    h = hashlib.sha256(json.dumps([seed, *key]).encode()).digest()
    n = int.from_bytes(h[:8], "big")
    return PooledRandom(n, value_pool) if value_pool > 1 else random.Random(n)


def _variant(rng: random.Random, onto: Ontology, task: TaskSpec) -> dict[str, str]:
    return {k: rng.choice(onto.variants[k]) for k in task.context_variants}


def _chain_lcr(rng: random.Random, ctx: dict[str, str]) -> list[ft.Item]:
    values = ft.lcr_values(rng)
    s1 = ft.calc_lcr(rng, ctx, values)
    s2 = ft.grade_solvency(rng, ctx, values[2])
    s3 = ft.recommend_actions(rng, ctx, "liquidity", s2[2]["grade"])
    return [s1, s2, s3]


def _chain_car(rng: random.Random, ctx: dict[str, str]) -> list[ft.Item]:
    values = ft.car_values(rng)
    s1 = ft.calc_car(rng, ctx, values)
    s2 = ft.grade_capital(rng, ctx, values[2])
    s3 = ft.recommend_actions(rng, ctx, "capital", s2[2]["grade"])
    return [s1, s2, s3]


CHAIN_BUILDERS: dict[str, Callable[[random.Random, dict[str, str]], list[ft.Item]]] = {
    "chain_lcr_solvency": _chain_lcr, "chain_car_adequacy": _chain_car,
}


def _base(task: TaskSpec, onto: Ontology, ctx: dict[str, str], phrasing_id: int) -> dict:
    return dict(
        task_id=task.id, family=task.family, group=task.group, stage=task.stage, phrasing_id=phrasing_id,
        source_uri=f"generator://{onto.name}", source_type="generated", annotator_id="generator",
        annotator_qualification="synthetic", ontology_version=onto.version, business_impact=task.business_impact,
        context_variant=json.dumps(ctx, ensure_ascii=False), language=onto.language,
        ingest_time=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def make_single(onto: Ontology, task: TaskSpec, rng: random.Random) -> Sample:
    """One single-turn sample of ``task`` (stage 1 or a stage-2 style/safety/step task)."""
    ctx = _variant(rng, onto, task)
    pid = rng.randrange(len(task.phrasings))
    instruction = task.phrasings[pid]
    inp, out, gold = ft.GENERATORS[task.id](rng, ctx)
    gold = {**gold, "rule_ids": task.rule_ids}
    msgs = [Message(role="user", content=f"{instruction}\n{inp}"), Message(role="assistant", content=out)]
    return Sample(
        **_base(task, onto, ctx, pid), messages=msgs, instruction=instruction, input=inp, output=out,
        gold=json.dumps(gold, ensure_ascii=False), pii_flag=task.id == "pii_masking",
    ).with_id()


def make_chain(onto: Ontology, task: TaskSpec, rng: random.Random) -> Sample:
    """One multi-turn chain sample; each step's output is quoted in the next user turn."""
    steps = [onto.tasks[s] for s in task.steps]
    ctx = _variant(rng, onto, steps[0])
    pid = rng.randrange(len(task.phrasings))
    items = CHAIN_BUILDERS[task.id](rng, ctx)
    step_pids = [rng.randrange(len(s.phrasings)) for s in steps]
    instruction = task.phrasings[pid]
    inp = f"{items[0][0]}\n{_STEP_ORDINALS[0]}：{steps[0].phrasings[step_pids[0]]}"
    msgs = [Message(role="user", content=f"{instruction}\n{inp}"), Message(role="assistant", content=items[0][1])]
    for k in range(1, len(steps)):
        quoted = f"上一步结果：{items[k - 1][1]}\n{_STEP_ORDINALS[k]}：{steps[k].phrasings[step_pids[k]]}"
        msgs += [Message(role="user", content=quoted), Message(role="assistant", content=items[k][1])]
    gold: dict = {"steps": [it[2] for it in items], "rule_ids": task.rule_ids,
                  "step_rule_ids": [s.rule_ids for s in steps]}
    for it in items:  # flatten: result from the calculation, grade/label from grading, citations last
        gold.update({k: v for k, v in it[2].items() if k not in ("keywords",)})
    return Sample(
        **_base(task, onto, ctx, pid), messages=msgs, instruction=instruction, input=inp, output=items[-1][1],
        chain_steps=list(task.steps), gold=json.dumps(gold, ensure_ascii=False),
    ).with_id()


def make_sample(onto: Ontology, task: TaskSpec, rng: random.Random) -> Sample:
    return make_chain(onto, task, rng) if task.steps else make_single(onto, task, rng)


def supports(task_id: str) -> bool:
    """Whether the built-in finance generator can produce this task."""
    return task_id in ft.GENERATORS or task_id in CHAIN_BUILDERS


# ---------------------------------------------------------------- defects
_RESULT = re.compile(r"=(\d+(?:\.\d+)?)(%|bp)|合计(\d+)起")


def _wrong_arithmetic(text: str, rng: random.Random) -> str | None:
    hits = list(_RESULT.finditer(text))
    if not hits:
        return None
    m = hits[-1]
    g = 1 if m.group(1) else 3
    old = m.group(g)
    delta = rng.choice([3, 7, 11]) * (10 ** -len(old.split(".")[1]) if "." in old else 1)
    new = f"{float(old) + delta:.{len(old.split('.')[1])}f}" if "." in old else str(int(old) + int(delta))
    return text[: m.start(g)] + new + text[m.end(g):]


def _off_whitelist(text: str, rng: random.Random) -> str | None:
    for cit in (ft.CIT_LIQUIDITY, ft.CIT_CAPITAL, ft.CIT_EXPOSURE, ft.CIT_ASSET_MGMT):
        if cit in text:
            return text.replace(cit, ft.CIT_FAKE)
    return None


def _forbidden_term(text: str, rng: random.Random) -> str | None:
    if not text.endswith("。"):
        return None
    return text[:-1] + rng.choice(["，本产品保本保收益。", "，可以保证稳赚不赔。", "，属于零风险投资。"])


def _unmasked_pii(text: str, rng: random.Random, gold: dict) -> str | None:
    pairs = list(zip(gold.get("masked_values", []), gold.get("raw_values", [])))
    if not pairs:
        return None
    masked, raw = rng.choice(pairs)
    return text.replace(masked, raw, 1) if masked in text else None


def _broken_format(text: str, rng: random.Random, task: TaskSpec) -> str | None:
    for section in task.output.required_sections:
        if section in text:
            return text.replace(section, "", 1)
    if task.output.numeric_precision == 2:
        m = re.search(r"(\d+\.\d)\d%", text)
        if m:
            return text[: m.end(1)] + text[m.end(1) + 1:]
    return None


def _defect_turn(kind: str, text: str, task: TaskSpec, gold: dict, rng: random.Random) -> str | None:
    rules = set(task.rule_ids)
    if kind == "wrong_arithmetic" and "numeric_consistency" in rules:
        return _wrong_arithmetic(text, rng)
    if kind == "off_whitelist_citation" and "citation_whitelist" in rules:
        return _off_whitelist(text, rng)
    if kind == "forbidden_term" and "sensitive_words" in rules:
        return _forbidden_term(text, rng)
    if kind == "unmasked_pii" and "pii_masked" in rules:
        return _unmasked_pii(text, rng, gold)
    if kind == "broken_format":
        return _broken_format(text, rng, task)
    return None


def inject_defect(onto: Ontology, sample: Sample, kind: str, rng: random.Random) -> Sample | None:
    """A defective copy of ``sample`` (one assistant turn corrupted), or None if ``kind`` cannot apply."""
    task = onto.tasks[sample.task_id]
    gold = sample.gold_dict()
    step_tasks = [onto.tasks[s] for s in sample.chain_steps] if sample.chain_steps else [task]
    turns = [i for i, m in enumerate(sample.messages) if m.role == "assistant"]
    for pos, step in reversed(list(zip(turns, step_tasks))):
        step_gold = gold["steps"][step_tasks.index(step)] if sample.chain_steps else gold
        new = _defect_turn(kind, sample.messages[pos].content, step, step_gold, rng)
        if new is not None and new != sample.messages[pos].content:
            msgs = [m.model_copy() for m in sample.messages]
            msgs[pos] = Message(role="assistant", content=new)
            out = msgs[-1].content
            return sample.model_copy(update={"messages": msgs, "output": out, "defect": kind, "id": ""}).with_id()
    return None


def applicable_defects(onto: Ontology, task: TaskSpec, probe: Sample) -> list[str]:
    return [k for k in DEFECT_KINDS if inject_defect(onto, probe, k, random.Random(0)) is not None]


def generate_samples(onto: Ontology, *, n_per_task: int, seed: int, defect_rate: float = 0.0, value_pool: int = 0,
                     task_ids: list[str] | None = None) -> list[Sample]:
    """Generate ``n_per_task`` unique samples for every generator-supported task and chain.

    A ``defect_rate`` share of each task's samples is replaced by a defective copy, cycling over
    the defect kinds applicable to the task so every kind occurs. Deterministic in ``seed``.
    """
    out: list[Sample] = []
    for tid in task_ids or list(onto.tasks):
        task = onto.tasks[tid]
        if not supports(tid):
            continue
        rng = task_rng(seed, tid, value_pool=value_pool)
        seen: set[str] = set()
        samples: list[Sample] = []
        for _ in range(n_per_task * 20):  # small closed vocabularies: retry on duplicate content
            if len(samples) >= n_per_task:
                break
            s = make_sample(onto, task, rng)
            if s.id not in seen:
                seen.add(s.id)
                samples.append(s)
        kinds = applicable_defects(onto, task, samples[0]) if samples else []
        n_bad = round(len(samples) * defect_rate) if kinds else 0
        for j, i in enumerate(sorted(rng.sample(range(len(samples)), n_bad))):
            bad = inject_defect(onto, samples[i], kinds[j % len(kinds)], rng)
            if bad is not None:
                samples[i] = bad
        out.extend(samples)
    return out
