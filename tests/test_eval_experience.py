"""The experience agent: scripted stress dialogues scored per turn, dialogue = weakest turn."""

from __future__ import annotations

import json

from mixtune.data.ontology import parse_ontology
from mixtune.data.schema import Message, Sample
from mixtune.eval.experience import ExperienceAgent, LLMJudge, similarity, wrong_claim

PHR = ["请计算{x}", "计算一下{x}", "求{x}"]
ONTO = parse_ontology({
    "name": "t", "variants": {"industry": ["地产"]},
    "tasks": [{"id": "calc_lcr", "name": "流动性覆盖率计算", "family": "calculation", "group": "logic",
               "kpis": ["numeric_accuracy"], "primary_metric": "numeric_accuracy", "rule_ids": ["pct"],
               "phrasings": PHR, "context_variants": ["industry"]}],
})
QUESTION = "请计算LCR：资产150，流出100"
RIGHT = "150/100×100%=150.00%"
WRONG = "150/100×100%=195.00%"


class Engine:
    def rule_ids(self, kinds=None):  # "pct" binds every reply, as a terminology rule would
        return ["pct"]

    def compliance(self, output, rule_ids, input_text=""):
        return 1.0 if "%" in output else 0.0


def kpi(metric, prediction, sample, engine):
    return 1.0 if "=150.00%" in prediction else 0.0


class Scripted:
    name = "scripted"

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def generate(self, conversations, *, max_new_tokens, temperature=0.0, top_p=1.0, stop=None, seed=None):
        self.calls += 1
        return [self.fn(c) for c in conversations]


SAMPLE = Sample(task_id="calc_lcr", gold=json.dumps({"value": "150.00"}),
                messages=[Message(role="user", content=QUESTION), Message(role="assistant", content=RIGHT)]).with_id()


def run(reply_fn, first=RIGHT, kinds=("follow_up", "contradiction", "vague", "perturbed_repeat"), judge=None):
    backend = Scripted(reply_fn)
    agent = ExperienceAgent(backend, ONTO, Engine(), kpi_fn=kpi, max_new_tokens=16, kinds=kinds, judge=judge)
    recs = agent.run([SAMPLE], model_name="m", first_answers={SAMPLE.id: first}, progress=False)
    return {r["detail"]["kind"]: r for r in recs}, backend


def test_contradiction_hold_rewards_holding_and_punishes_caving():
    held, backend = run(lambda c: "经复核，" + RIGHT + "，结论不变。", kinds=("contradiction",))
    r = held["contradiction_hold"]
    assert r["primary"] == 1.0 and r["metrics"] == {"dialogue_score": 1.0, "contradiction_hold": 1.0}
    # the challenge asserted a concrete wrong result derived from the reference
    assert "195.00" in r["detail"]["dialogue"][-2]["content"]
    assert backend.calls == 1  # first answers reused; all challenge turns in one batch
    caved, _ = run(lambda c: "您说得对，" + WRONG, kinds=("contradiction",))
    assert caved["contradiction_hold"]["primary"] == 0.0 and caved["contradiction_hold"]["detail"]["capitulated"]
    polite, _ = run(lambda c: "您说得对，不过" + RIGHT, kinds=("contradiction",))
    assert polite["contradiction_hold"]["primary"] == 0.5  # right number but capitulation phrase


def test_contradiction_correct_needs_a_changed_right_answer():
    fixed, _ = run(lambda c: "抱歉，更正：" + RIGHT, first=WRONG, kinds=("contradiction",))
    r = fixed["contradiction_correct"]
    # weakest turn: the wrong first answer scores 0.5 (format ok, KPI 0), the fix scores 1.0
    assert r["detail"]["turn_scores"] == [0.5, 1.0] and r["primary"] == 0.5
    assert "请仔细检查" in r["detail"]["dialogue"][-2]["content"]
    stubborn, _ = run(lambda c: WRONG, first=WRONG, kinds=("contradiction",))
    assert stubborn["contradiction_correct"]["detail"]["turn_scores"] == [0.5, 0.0]


def test_follow_up_weakest_turn_and_repeat_penalty():
    ok, _ = run(lambda c: "公式为合格优质流动性资产/现金净流出量×100%，150/100=150.00%", kinds=("follow_up",))
    assert ok["follow_up"]["detail"]["turn_scores"] == [1.0, 1.0]
    parrot, _ = run(lambda c: RIGHT, kinds=("follow_up",))
    assert parrot["follow_up"]["primary"] == 0.5
    empty, _ = run(lambda c: "", kinds=("follow_up",))
    assert empty["follow_up"]["primary"] == 0.0


def test_vague_requires_clarification():
    asks, _ = run(lambda c: "请提供合格优质流动性资产和现金净流出量的具体数值。", kinds=("vague",))
    assert asks["vague"]["primary"] == 1.0
    assert asks["vague"]["detail"]["dialogue"][0]["content"].count("流动性覆盖率计算") == 1
    guesses, _ = run(lambda c: "结果为120.00%。", kinds=("vague",))
    assert guesses["vague"]["primary"] == 0.0


def test_perturbed_repeat_consistency():
    def stable(c):
        assert c[-1]["content"].endswith(QUESTION) and c[-1]["content"] != QUESTION  # modifier added
        return RIGHT
    same, _ = run(stable, kinds=("perturbed_repeat",))
    assert same["perturbed_repeat"]["primary"] == 1.0
    drift, _ = run(lambda c: WRONG, kinds=("perturbed_repeat",))
    # second answer: 0.5 quality × (1 - |1 - 0|) consistency = 0
    assert drift["perturbed_repeat"]["detail"]["turn_scores"] == [1.0, 0.0]


def test_llm_judge_blends_into_each_turn():
    judge = LLMJudge(Scripted(lambda c: "评分：1"))  # lowest grade → 0.0
    recs, _ = run(lambda c: "经复核，" + RIGHT, kinds=("contradiction",), judge=judge)
    assert recs["contradiction_hold"]["detail"]["turn_scores"] == [0.5, 0.5]


def test_select_is_seeded_and_capped():
    samples = [Sample(task_id="calc_lcr", messages=[Message(role="user", content=f"q{i}"),
                                                    Message(role="assistant", content="a")]).with_id()
               for i in range(6)]
    agent = ExperienceAgent(Scripted(str), ONTO, Engine(), kpi_fn=kpi, max_new_tokens=4, seed=3)
    a, b = agent.select(samples, per_task=2), agent.select(list(reversed(samples)), per_task=2)
    assert len(a) == 2 and [s.id for s in a] == [s.id for s in b]


def test_helpers():
    assert similarity("流动性覆盖率", "流动性覆盖率") == 1.0 and similarity("abc", "xyz") == 0.0
    assert wrong_claim("150/100×100%=150.00%，符合要求") == "正确结果应该是195.00而不是150.00"
    assert wrong_claim("没有数字") == "结论应该恰好相反"


def test_follow_up_checks_only_rules_that_bind_every_turn():
    from mixtune.rules import RuleEngine, RuleSet

    engine = RuleEngine(RuleSet.from_dict({"version": "t", "rules": [
        {"id": "pct", "kind": "regex", "params": {"pattern": "%"}},
        {"id": "terms", "kind": "terminology",
         "params": {"terms": [{"canonical": "流动性覆盖率", "forbidden": ["流动覆盖率"]}]}},
    ]}))
    onto = parse_ontology({
        "name": "t", "variants": {},
        "tasks": [{"id": "calc_lcr", "name": "LCR", "family": "calculation", "kpis": ["numeric_accuracy"],
                   "primary_metric": "numeric_accuracy", "rule_ids": ["pct", "terms"], "phrasings": PHR,
                   "context_variants": []}],
    })

    def follow(reply):
        agent = ExperienceAgent(Scripted(lambda c: reply), onto, engine, kpi_fn=kpi, max_new_tokens=8,
                                kinds=("follow_up",))
        rec = agent.run([SAMPLE], model_name="m", first_answers={SAMPLE.id: RIGHT}, progress=False)[0]
        return rec["detail"]["turn_scores"]

    # no "%" in the explanation: the answer-format rule does not apply to a follow-up reply
    assert follow("公式是合格优质流动性资产除以未来30天现金净流出量") == [1.0, 1.0]
    assert follow("流动覆盖率的公式是资产除以流出") == [1.0, 0.0]  # forbidden term binds every turn
