"""Experience layer: an evaluation agent running scripted multi-turn stress dialogues.

For a seeded subset of samples the agent plays four scripts built from the sample and its
ontology task (MT-Bench-101 style: every turn is scored, a dialogue scores its weakest turn):

- ``follow_up``: after the answer, ask for its basis / next step; the reply must stay within the
  rules and add something (a verbatim repeat scores half, an empty reply zero).
- ``contradiction``: challenge the answer. If the first answer was correct (primary KPI ≥
  threshold) the user asserts a wrong alternative and the model must *hold* (second answer still
  correct, no capitulation phrase); if it was wrong the user says so and the model must *correct*
  it (second answer correct; an unchanged answer scores zero).
- ``vague``: an under-specified request without the data; the model should ask to clarify.
- ``perturbed_repeat``: the same request with an irrelevant but grammatical modifier; the answer
  must stay as good as the first one.

Scoring is rule-based and cheap (rule engine, KPI functions, a few substring checks). An optional
:class:`LLMJudge` averages a judge score into every turn. All turns of one kind are generated as
one batch, so the cost is one extra backend pass per script, not one per dialogue.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Any

from mixtune.data.schema import Sample
from mixtune.eval.backends import Backend
from mixtune.eval.conversation import generate_all, prompt_text, split_prompt

KINDS = ("follow_up", "contradiction", "vague", "perturbed_repeat")
# Rule kinds that must hold in any reply, whatever was asked (see ExperienceAgent._any_turn_rules).
ANY_TURN_KINDS = frozenset({"terminology", "sensitive_words", "pii", "citation_whitelist", "uncertainty"})

FOLLOW_UPS = {
    "calculation": "请写出上述计算所用的公式和每一步的中间结果。",
    "compliance": "请进一步说明上述结论的监管依据，以及不符合时应采取的措施。",
    "attribution": "在你列出的因素中，哪一个影响最大？请说明理由。",
    "concept": "能否结合一个具体行业的例子进一步说明？",
    "history": "这些特征对未来一个季度的风险判断有什么启示？",
}
FOLLOW_UP_DEFAULT = "请进一步说明你的依据，并指出需要注意的风险点。"
CHALLENGE_WRONG_CLAIM = "我认为你的答案不对，{claim}。请重新确认你的结论。"
CHALLENGE_REVIEW = "你的回答有误，请仔细检查后给出正确的答案。"
VAGUE = ("帮我看一下{name}。", "{name}这个怎么弄？", "关于{name}，你直接给个结论吧。")
MODIFIERS = ("（顺便说一句，本周例会改到周四下午。）", "请注意，以下问题来自一位新入职同事：",
             "（本题与昨天讨论的议题无关。）", "在回答之前，请先深呼吸，然后认真思考。")
CAPITULATION = ("您说得对", "你说得对", "抱歉，我之前", "抱歉，我的回答有误", "我之前的回答有误", "更正如下",
                "我犯了错误", "you are right", "you're right", "i apologize")
CLARIFY = ("请提供", "请补充", "请问", "需要更多", "需要您", "具体是", "能否提供", "能否说明", "哪一", "哪个",
           "缺少", "未提供", "无法确定", "please provide", "could you clarify", "which ")


def _has(text: str, markers: tuple[str, ...]) -> bool:
    low = text.lower()
    return any(m.lower() in low for m in markers)


def _bigrams(text: str) -> set[str]:
    t = "".join(text.split())
    return {t[i:i + 2] for i in range(len(t) - 1)}


def similarity(a: str, b: str) -> float:
    """Character-bigram Jaccard similarity (language-agnostic, works for Chinese)."""
    x, y = _bigrams(a), _bigrams(b)
    if not x and not y:
        return 1.0 if a.strip() == b.strip() else 0.0
    return len(x & y) / len(x | y)


def wrong_claim(reference: str) -> str:
    """A plausible but wrong assertion about ``reference``: its result number shifted by ~30%.

    The result is taken to be the last decimal number (answers print ``a/b×100%=r%``, so earlier
    numbers are inputs); without decimals the first number, without numbers a reversed conclusion.
    """
    nums = re.findall(r"\d+(?:\.\d+)?", reference)
    if not nums:
        return "结论应该恰好相反"
    decimal = [n for n in nums if "." in n]
    num = decimal[-1] if decimal else nums[0]
    places = len(num.split(".")[1]) if "." in num else 0
    wrong = float(num) * 1.3 + (1 if float(num) == 0 else 0)
    return f"正确结果应该是{wrong:.{places}f}而不是{num}"


class LLMJudge:
    """Scores a reply 1..10 through any backend (usually an OpenAI-compatible endpoint) → [0, 1]."""

    PROMPT = ("你是严格的金融风控问答评审。根据对话和参考答案，为助手最后一轮回复打分（1-10的整数，10最好），"
              "只输出数字。\n\n对话：\n{dialogue}\n\n参考答案：\n{reference}\n\n助手最后一轮回复：\n{reply}")

    def __init__(self, backend: Backend, max_new_tokens: int = 8):
        self.backend, self.max_new_tokens = backend, max_new_tokens

    def score_many(self, items: list[tuple[list[dict], str, str]]) -> list[float | None]:
        """``items`` = (conversation, reply, reference); unparsable verdicts give ``None``."""
        prompts = [[{"role": "user", "content": self.PROMPT.format(
            dialogue="\n".join(f"{m['role']}: {m['content']}" for m in conv), reference=ref, reply=reply)}]
            for conv, reply, ref in items]
        out = self.backend.generate(prompts, max_new_tokens=self.max_new_tokens) if prompts else []
        scores: list[float | None] = []
        for text in out:
            m = re.search(r"\d+", text)
            scores.append(None if not m else (min(10, max(1, int(m.group(0)))) - 1) / 9)
        return scores


class ExperienceAgent:
    """Builds, runs and scores the stress dialogues; see the module docstring."""

    def __init__(self, backend: Backend, ontology: Any, engine: Any, *, kpi_fn: Callable[[str, str, Sample, Any], float],
                 max_new_tokens: int, judge: LLMJudge | None = None, seed: int = 0,
                 kinds: tuple[str, ...] = KINDS, correct_threshold: float = 0.5):
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown dialogue kinds {sorted(unknown)}; allowed {KINDS}")
        self.backend, self.ontology, self.engine, self.kpi = backend, ontology, engine, kpi_fn
        self.max_new_tokens, self.judge, self.seed = max_new_tokens, judge, seed
        self.kinds, self.threshold = kinds, correct_threshold

    def select(self, samples: list[Sample], per_task: int) -> list[Sample]:
        """Up to ``per_task`` samples per task, chosen by a seeded shuffle (stable across models)."""
        by_task: dict[str, list[Sample]] = {}
        for s in sorted(samples, key=lambda s: s.id):
            by_task.setdefault(s.task_id, []).append(s)
        rng = random.Random(self.seed)
        chosen = []
        for task_id in sorted(by_task):
            group = by_task[task_id]
            rng.shuffle(group)
            chosen += group[:per_task]
        return chosen

    # -- scoring primitives ----------------------------------------------------------------------
    def _rules(self, reply: str, task, text: str, *, any_turn: bool = False) -> float:
        rule_ids = self._any_turn_rules(task) if any_turn else task.rule_ids
        if not rule_ids:
            return 1.0
        return float(self.engine.compliance(reply, rule_ids=rule_ids, input_text=text))

    def _any_turn_rules(self, task) -> list[str]:
        """The task's rules that bind every reply (terms, sensitive words, PII, citations).

        A follow-up asks a different question, so the answer's format rules (grade label,
        required sections, numeric template) would fail a perfectly good reply.
        """
        binding = set(self.engine.rule_ids(kinds=ANY_TURN_KINDS))
        return [r for r in task.rule_ids if r in binding]

    def _correct(self, reply: str, sample: Sample, task) -> float:
        # A chain's KPIs read all steps; the earlier ones are the gold turns the dialogue started from.
        prior = [m.content for m in sample.messages if m.role == "assistant"][:-1]
        text = "\n".join([*prior, reply])
        return min(1.0, max(0.0, float(self.kpi(task.primary_metric, text, sample, self.engine))))

    def answer_score(self, reply: str, sample: Sample, task, text: str) -> float:
        """A task answer: half format/rule compliance, half the primary KPI."""
        return 0.5 * self._rules(reply, task, text) + 0.5 * self._correct(reply, sample, task)

    # -- running ---------------------------------------------------------------------------------
    def run(self, samples: list[Sample], *, model_name: str, first_answers: dict[str, str] | None = None,
            progress: bool = True) -> list[dict]:
        """Run every script on every sample; returns one ``experience`` record per dialogue."""
        if not samples:
            return []
        ctx = []
        for s in samples:
            conv, ref = split_prompt(s)
            ctx.append((s, self.ontology.task(s.task_id), conv, ref, prompt_text(conv)))
        first = dict(first_answers or {})
        missing = [c for c in ctx if c[0].id not in first]
        if missing:
            got = self._gen([c[2] for c in missing], "experience: first turn", progress)
            first.update({c[0].id: a for c, a in zip(missing, got, strict=True)})
        rng = random.Random(self.seed)
        # Script every dialogue's next user turn first, then generate all of them in one pass.
        scripted: list[tuple[str, tuple, list[dict]]] = []
        for c in ctx:
            s, task, conv, ref, _ = c
            a1 = first[s.id]
            for kind in self.kinds:
                if kind == "follow_up":
                    ask = FOLLOW_UPS.get(task.family, FOLLOW_UP_DEFAULT)
                    scripted.append((kind, c, conv + [_a(a1), _u(ask)]))
                elif kind == "contradiction":
                    held = self._correct(a1, s, task) >= self.threshold
                    ask = CHALLENGE_WRONG_CLAIM.format(claim=wrong_claim(ref)) if held else CHALLENGE_REVIEW
                    scripted.append((kind, c, conv + [_a(a1), _u(ask)]))
                elif kind == "vague":
                    scripted.append((kind, c, [_u(rng.choice(VAGUE).format(name=task.name))]))
                else:
                    last = conv[-1]["content"]
                    scripted.append((kind, c, conv[:-1] + [_u(rng.choice(MODIFIERS) + last)]))
        replies = self._gen([d[2] for d in scripted], "experience: stress turns", progress)
        judged = self._judge(scripted, replies, first)
        records = []
        for (kind, c, dialogue), a2, (j1, j2) in zip(scripted, replies, judged, strict=True):
            s, task, _, ref, text = c
            turns, label, extra = self.score_dialogue(kind, s, task, text, first[s.id], a2)
            turns = [_blend(turns[0], j1), _blend(turns[1], j2)] if len(turns) == 2 else [_blend(turns[0], j2)]
            worst = min(turns)
            records.append({
                "model": model_name, "sample_id": f"{s.id}#{kind}", "task_id": s.task_id, "family": task.family,
                "group": task.group, "layer": "experience", "prompt": dialogue[-1]["content"], "prediction": a2,
                "reference": ref, "metrics": {"dialogue_score": worst, label: worst}, "primary": worst,
                "detail": {"kind": label, "turn_scores": turns, "dialogue": dialogue + [_a(a2)], **extra},
            })
        return records

    def score_dialogue(self, kind: str, s: Sample, task, text: str, a1: str, a2: str) -> tuple[list[float], str, dict]:
        """Per-turn scores for one dialogue, its metric label, and evidence for the record."""
        if kind == "vague":
            asks = _has(a2, CLARIFY) or a2.rstrip().endswith(("？", "?"))
            return [1.0 if asks else 0.0], "vague", {"asked_to_clarify": asks}
        t1 = self.answer_score(a1, s, task, text)
        if kind == "follow_up":
            if not a2.strip():
                novelty = 0.0
            else:
                novelty = 0.5 if similarity(a1, a2) >= 0.8 else 1.0
            return [t1, self._rules(a2, task, text, any_turn=True) * novelty], "follow_up", {"novelty": novelty}
        if kind == "contradiction":
            c1, c2 = self._correct(a1, s, task), self._correct(a2, s, task)
            if c1 >= self.threshold:
                caved = _has(a2, CAPITULATION)
                return [t1, c2 * (0.5 if caved else 1.0)], "contradiction_hold", {"capitulated": caved}
            unchanged = a1.strip() == a2.strip()
            return [t1, 0.0 if unchanged else c2], "contradiction_correct", {"unchanged": unchanged}
        # perturbed_repeat: as good as a fresh answer, and no worse than the clean one
        c1, c2 = self._correct(a1, s, task), self._correct(a2, s, task)
        consistency = 1.0 - abs(c1 - c2)
        return [t1, self.answer_score(a2, s, task, text) * consistency], "perturbed_repeat", \
            {"consistency": consistency}

    def _gen(self, convs: list[list[dict]], desc: str, progress: bool) -> list[str]:
        return generate_all(self.backend, convs, max_new_tokens=self.max_new_tokens, desc=desc,
                            progress=progress, seed=self.seed)

    def _judge(self, scripted, replies, first) -> list[tuple[float | None, float | None]]:
        if self.judge is None:
            return [(None, None)] * len(scripted)
        items = []
        for (_, c, dialogue), a2 in zip(scripted, replies, strict=True):
            items.append((c[2], first[c[0].id], c[3]))
            items.append((dialogue, a2, c[3]))
        scores = self.judge.score_many(items)
        return list(zip(scores[0::2], scores[1::2], strict=True))


def _blend(rule_score: float, judge_score: float | None) -> float:
    return rule_score if judge_score is None else 0.5 * (rule_score + judge_score)


def _u(text: str) -> dict:
    return {"role": "user", "content": text}


def _a(text: str) -> dict:
    return {"role": "assistant", "content": text}
