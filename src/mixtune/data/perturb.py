"""Seeded adversarial perturbations: twins of a sample that must get the same answer.

Four kinds (DESIGN.md §3), each available in Chinese and English:

- ``irrelevant_modifier``: a grammatical but irrelevant clause added to the instruction;
- ``probabilistic_wording``: certain wording turned probabilistic (请 → 或许可以请你, must → might);
- ``distractor_fact``: a plausible fact that does not bear on the answer appended to the input;
- ``weakened_format``: the format requirement silently dropped from the instruction (the answer
  keeps the strict format: the model must keep the task's format without being told).

A twin keeps its parent's output (and gold) verbatim, so the gold answer's meaning never
changes; only the first user turn is rewritten. ``parent_id`` and ``perturbation_type`` link
the twin back. Everything is a pure function of ``(seed, parent id, kind)``.
"""

from __future__ import annotations

import hashlib
import random
import re

from mixtune.data.schema import Message, Sample

KINDS = ("irrelevant_modifier", "probabilistic_wording", "distractor_fact", "weakened_format")

_MODIFIERS = {
    "zh": ["在今天的例行工作中，", "作为一名细心的分析师，", "结合你的专业经验，", "在不赶时间的情况下，", "在阅读完以下材料后，"],
    "en": ["As a careful analyst, ", "Taking your time, ", "In today's routine review, ", "Drawing on your experience, "],
}
_HEDGE = {
    "zh": [("请", "或许可以请你"), ("是否", "是否可能"), ("判断", "大致判断"), ("计算", "大概算一下"),
           ("分析", "试着分析"), ("回答", "尝试回答")],
    "en": [("Please ", "Perhaps you could "), ("must", "might"), ("Calculate", "Maybe calculate"),
           ("Explain", "Perhaps explain"), ("Determine", "Try to determine")],
}
_HEDGE_PREFIX = {"zh": "也许需要：", "en": "Possibly: "}
_DISTRACTORS = {
    "zh": ["补充信息：该机构上季度营业收入为{n}.00亿元", "补充信息：该机构员工人数为{n}人",
           "补充信息：同业平均网点数量为{n}个", "补充信息：该地区上年GDP增速为{d}.{e}%"],
    "en": ["Additional note: the institution had {n} branches last year",
           "Additional note: peer staff headcount averages {n}", "Additional note: regional GDP grew {d}.{e}%"],
}
# Format demands that can be dropped from an instruction without changing what is asked.
_FORMAT_CLAUSES = {
    "zh": [r"（保留两位小数）", r"并保留两位小数", r"，?结果保留两位小数", r"（单位bp）", r"，?并以基点表示",
           r"，?并说明法规依据", r"，?并引用相关规定", r"？?请引用依据", r"，?并引用监管依据", r"，?注明法规依据",
           r"，?并引用相关监管文件", r"请用一句话解释", r"（低/中/高）", r"（充足/临界/不足）", r"按公文格式"],
    "en": [r",? rounded to two decimals", r",? in basis points", r",? citing the regulation", r" in one sentence"],
}


def _rng(seed: int, parent_id: str, kind: str) -> random.Random:
    h = hashlib.sha256(f"{seed}|{parent_id}|{kind}".encode()).digest()
    return random.Random(int.from_bytes(h[:8], "big"))


def _lang(sample: Sample) -> str:
    return "en" if sample.language.startswith("en") else "zh"


def perturb_text(kind: str, instruction: str, input_text: str, lang: str,
                 rng: random.Random) -> tuple[str, str] | None:
    """Return the perturbed ``(instruction, input)``, or None when ``kind`` cannot apply."""
    if kind == "irrelevant_modifier":
        mod = rng.choice(_MODIFIERS[lang])
        first = instruction[:1].lower() if lang == "en" else instruction[:1]
        return mod + first + instruction[1:], input_text
    if kind == "probabilistic_wording":
        options = [(a, b) for a, b in _HEDGE[lang] if a in instruction]
        if options:
            a, b = rng.choice(options)
            return instruction.replace(a, b, 1), input_text
        return _HEDGE_PREFIX[lang] + instruction, input_text
    if kind == "distractor_fact":
        line = rng.choice(_DISTRACTORS[lang]).format(n=rng.randint(100, 999), d=rng.randint(1, 8), e=rng.randint(0, 9))
        return instruction, f"{input_text}\n{line}" if input_text else line
    if kind == "weakened_format":
        for pat in _FORMAT_CLAUSES[lang]:
            new = re.sub(pat, "", instruction, count=1)
            if new != instruction and new.strip():
                return new, input_text
        return None
    raise ValueError(f"unknown perturbation kind {kind!r}; allowed: {list(KINDS)}")


def make_twin(sample: Sample, kind: str, seed: int) -> Sample | None:
    """A perturbed twin of ``sample`` with the same output, or None if ``kind`` does not apply."""
    if not sample.messages or sample.messages[0].role != "user":
        return None
    instruction, inp = sample.instruction, sample.input
    if not instruction:  # ingested conversations without a split: perturb the whole first turn
        instruction, inp = sample.messages[0].content, ""
    res = perturb_text(kind, instruction, inp, _lang(sample), _rng(seed, sample.id, kind))
    if res is None:
        return None
    new_instr, new_inp = res
    user = f"{new_instr}\n{new_inp}" if new_inp else new_instr
    msgs = [Message(role="user", content=user), *[m.model_copy() for m in sample.messages[1:]]]
    twin = sample.model_copy(update={
        "id": "", "messages": msgs, "instruction": new_instr if sample.instruction else "",
        "input": new_inp if sample.instruction else "", "perturbation_type": kind, "parent_id": sample.id,
        "split": "train", "trained_in_runs": [],
    })
    return twin.with_id()


def perturb_samples(samples: list[Sample], fraction: float, seed: int,
                    kinds: tuple[str, ...] = KINDS) -> list[Sample]:
    """Twins for a ``fraction`` of ``samples`` (chosen by seed), kinds cycled so all four occur."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError("perturb fraction must be in [0, 1]")
    order = sorted(samples, key=lambda s: hashlib.sha256(f"{seed}|{s.id}".encode()).hexdigest())
    chosen = order[: round(len(samples) * fraction)]
    twins: list[Sample] = []
    for i, parent in enumerate(chosen):
        for j in range(len(kinds)):  # fall through to the next kind when one cannot apply
            twin = make_twin(parent, kinds[(i + j) % len(kinds)], seed)
            if twin is not None:
                twins.append(twin)
                break
    return twins
