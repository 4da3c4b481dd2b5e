"""evaluate_model / score_predictions / write_matrix with a scripted backend and small fakes."""

from __future__ import annotations

import json

import pytest

from mixtune.data.ontology import parse_ontology
from mixtune.data.schema import Message, Sample
from mixtune.errors import DataError
from mixtune.eval.conversation import reference_text, split_prompt, turn_prompts
from mixtune.eval.matrix import family_scores, render_ifeval, render_summary
from mixtune.eval.runner import (
    evaluate_model,
    read_jsonl,
    score_predictions,
    write_matrix,
)

PHR = ["请计算{x}", "计算一下{x}", "求{x}"]
ONTO = parse_ontology({
    "name": "t", "variants": {"industry": ["地产"]},
    "tasks": [
        {"id": "calc_lcr", "name": "流动性覆盖率计算", "family": "calculation", "group": "logic",
         "kpis": ["numeric_accuracy", "format_compliance"], "primary_metric": "numeric_accuracy",
         "rule_ids": ["pct"], "phrasings": PHR, "context_variants": ["industry"]},
        {"id": "concept_term", "name": "概念解释", "family": "concept", "kpis": ["keyword_recall"],
         "primary_metric": "keyword_recall", "rule_ids": [], "phrasings": PHR, "context_variants": ["industry"]},
    ],
    "chains": [{"id": "chain_lcr", "name": "链", "steps": ["calc_lcr", "concept_term"],
                "kpis": ["numeric_accuracy"], "primary_metric": "numeric_accuracy", "phrasings": PHR}],
})


class FakeEngine:
    """Rule "pct": output has a percent sign; glossary rule "term": no forbidden variant."""

    kinds = {"pct": "numeric_precision", "term": "terminology"}

    def rule_ids(self, kinds=None):
        return [r for r, k in self.kinds.items() if kinds is None or k in kinds]

    def compliance(self, output, rule_ids, input_text=""):
        checks = {"pct": "%" in output, "term": "流动覆盖率" not in output}
        return sum(checks[r] for r in rule_ids) / len(rule_ids)

    def check(self, output, rule_ids=None, input_text="", sample_id=""):
        return []  # findings only steer the simulated user; compliance() carries the scores here


def fake_kpi(metric, prediction, sample, engine):
    gold = sample.gold_dict()
    if metric == "numeric_accuracy":
        return float(gold["value"] in prediction)
    if metric == "keyword_recall":
        return sum(k in prediction for k in gold["keywords"]) / len(gold["keywords"])
    return engine.compliance(prediction, rule_ids=["pct"])


def sample(task_id, user, answer, gold, earlier=()):
    msgs = [Message(role=r, content=c) for r, c in earlier]
    msgs += [Message(role="user", content=user), Message(role="assistant", content=answer)]
    return Sample(task_id=task_id, messages=msgs, gold=json.dumps(gold, ensure_ascii=False)).with_id()


class Scripted:
    """Replies by the last user message; records every conversation it saw."""

    name = "scripted"

    def __init__(self, replies):
        self.replies, self.seen = replies, []

    def generate(self, conversations, *, max_new_tokens, temperature=0.0, top_p=1.0, stop=None, seed=None):
        self.seen += conversations
        return [self.replies(c) for c in conversations]


SAMPLES = [
    sample("calc_lcr", "请计算LCR：资产150，流出100", "150/100×100%=150.00%", {"value": "150.00"}),
    sample("calc_lcr", "请计算LCR：资产120，流出100", "120/100×100%=120.00%", {"value": "120.00"}),
    sample("concept_term", "请解释信用利差", "信用利差是…国债…", {"keywords": ["国债", "溢价"]}),
    sample("chain_lcr", "再解释一下", "流动性覆盖率衡量…", {"value": "150.00"},
           earlier=[("user", "请计算LCR：资产150，流出100"), ("assistant", "GOLD-STEP-1 150.00%")]),
]


def good_model(conv):
    last = conv[-1]["content"]
    if "150" in last:
        return "150/100×100%=150.00%"
    if "120" in last:
        return "流动覆盖率=120.00"  # right number, no percent sign, forbidden term variant
    return "信用利差是信用债收益率减国债收益率"


def test_chain_turns_use_gold_context():
    conv, ref = split_prompt(SAMPLES[3])
    assert [m["role"] for m in conv] == ["user", "assistant", "user"]
    assert conv[1]["content"] == "GOLD-STEP-1 150.00%" and ref == "流动性覆盖率衡量…"
    first, last = turn_prompts(SAMPLES[3])
    assert [m["role"] for m in first] == ["user"] and last == conv
    assert reference_text(SAMPLES[3]) == "GOLD-STEP-1 150.00%\n流动性覆盖率衡量…"


def test_score_predictions_layers_and_metrics():
    preds = ["\n".join(good_model(c) for c in turn_prompts(s)) for s in SAMPLES]
    recs = score_predictions(SAMPLES, preds, ONTO, FakeEngine(), model_name="m", kpi_fn=fake_kpi)
    by = {(r["sample_id"], r["layer"]): r for r in recs}
    good, bad = by[(SAMPLES[0].id, "base")], by[(SAMPLES[1].id, "base")]
    assert good["metrics"] == {"format_compliance": 1.0, "terminology_accuracy": 1.0}
    assert bad["metrics"] == {"format_compliance": 0.0, "terminology_accuracy": 0.0}
    assert by[(SAMPLES[1].id, "business")]["metrics"] == {"numeric_accuracy": 1.0, "format_compliance": 0.0}
    assert by[(SAMPLES[1].id, "business")]["primary"] == 1.0
    assert by[(SAMPLES[2].id, "business")]["primary"] == 0.5  # 国债 yes, 溢价 no
    chain = by[(SAMPLES[3].id, "business")]
    # both chain steps are generated; the number comes from the generated first step
    assert chain["prediction"] == "150/100×100%=150.00%\n信用利差是信用债收益率减国债收益率"
    assert chain["family"] == "chain" and chain["primary"] == 1.0
    for r in recs:
        assert set(r) >= {"model", "sample_id", "task_id", "family", "group", "layer", "prompt",
                          "prediction", "reference", "metrics", "primary"}


def test_evaluate_model_writes_jsonl_with_all_layers(tmp_path):
    backend = Scripted(good_model)
    ifeval = [{"key": 1, "prompt": "Reply without any commas.", "instruction_id_list": ["punctuation:no_comma"],
               "kwargs": [{}]}]
    out = tmp_path / "eval" / "m.jsonl"
    recs = evaluate_model(backend, SAMPLES, ONTO, FakeEngine(), model_name="m", max_new_tokens=16,
                          ifeval_prompts=ifeval, out_path=out, progress=False, kpi_fn=fake_kpi,
                          experience_per_task=1)
    assert read_jsonl(out) == json.loads(json.dumps(recs, ensure_ascii=False))
    layers = {r["layer"] for r in recs}
    assert layers == {"base", "business", "experience"}
    ife = [r for r in recs if r["task_id"] == "ifeval"]
    assert len(ife) == 1 and ife[0]["metrics"]["ifeval_prompt_strict"] == 1.0  # reply has no comma
    assert ife[0]["sample_id"] == "ifeval:1" and ife[0]["family"] == "ifeval" and ife[0]["layer"] == "base"
    assert ife[0]["detail"]["strict_follow_list"] == [True]
    # the chain's final step was generated with the gold earlier turn in context
    assert any(any(m["content"] == "GOLD-STEP-1 150.00%" for m in c) for c in backend.seen)
    chain = next(r for r in recs if r["task_id"] == "chain_lcr" and r["layer"] == "business")
    assert chain["prediction"].startswith("150/100×100%=150.00%\n")
    exp = [r for r in recs if r["layer"] == "experience"]
    assert {r["detail"]["kind"].split("_")[0] for r in exp} >= {"follow", "contradiction", "vague", "perturbed"}


def test_unknown_task_fails_before_generation(tmp_path):
    backend = Scripted(good_model)
    bad = sample("nope", "q", "a", {})
    with pytest.raises(DataError, match="nope"):
        evaluate_model(backend, [bad], ONTO, FakeEngine(), model_name="m", max_new_tokens=4,
                       out_path=tmp_path / "x.jsonl", progress=False, kpi_fn=fake_kpi)
    assert backend.seen == [] and not (tmp_path / "x.jsonl").exists()


def test_write_matrix_shape_and_summary(tmp_path):
    by_model = {}
    for name, fn in (("base", lambda c: "不知道"), ("stage1", good_model), ("stage2", good_model)):
        by_model[name] = evaluate_model(Scripted(fn), SAMPLES, ONTO, FakeEngine(), model_name=name,
                                        max_new_tokens=8, out_path=tmp_path / f"{name}.jsonl",
                                        progress=False, kpi_fn=fake_kpi, experience=False)
    matrix = write_matrix(by_model, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "matrix.json").read_text()) == matrix
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(summary) == {"base", "stage1", "stage2"}
    assert set(summary["stage1"]) == {"calculation", "concept", "chain"}
    assert summary["stage1"]["calculation"] == 1.0 and summary["base"]["calculation"] == 0.0
    assert summary["stage1"]["concept"] == 0.5
    assert all(0.0 <= v <= 1.0 for fams in summary.values() for v in fams.values())
    cell = matrix["stage1"]["calc_lcr"]
    assert cell["base"]["format_compliance"] == 0.5  # one of the two LCR answers lacks "%"
    assert cell["business"]["numeric_accuracy"] == 1.0 and cell["business"]["primary"] == 1.0


class Budgeted(Scripted):
    """Also records the max_new_tokens of every generate call, by the first user message."""

    def __init__(self, replies):
        super().__init__(replies)
        self.budget = {}

    def generate(self, conversations, *, max_new_tokens, **kw):
        for c in conversations:
            self.budget[c[0]["content"]] = max_new_tokens
        return super().generate(conversations, max_new_tokens=max_new_tokens, **kw)


IFE = [  # two English prompts (3 instructions) and one Chinese prompt with the same key as the first
    {"key": 7, "prompt": "Reply without any commas.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
    {"key": 8, "prompt": "Answer with a <<title>> and end with 'bye'.",
     "instruction_id_list": ["detectable_format:title", "startend:end_checker"],
     "kwargs": [{}, {"end_phrase": "bye"}]},
]
IFE_ZH = [{"key": 7, "prompt": "回答时不要使用任何逗号。", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}]


def ife_model(good: bool):
    def reply(conv):
        text = conv[-1]["content"]
        if text.startswith("Answer with a"):
            return "<<Note>> fine, bye" if good else "Fine"  # good: 2 of 2 (the comma is allowed here); bad: 0 of 2
        if text.startswith("Reply without") or text.startswith("回答"):
            return "no commas here" if good else "yes, commas"
        return good_model(conv)
    return reply


def test_ifeval_sets_have_their_own_budget_family_and_summary_block(tmp_path):
    by_model = {}
    for name, good in (("base", True), ("stage2", False)):
        backend = Budgeted(ife_model(good))
        by_model[name] = evaluate_model(backend, SAMPLES, ONTO, FakeEngine(), model_name=name, max_new_tokens=8,
                                        ifeval_prompts=IFE, ifeval_zh_prompts=IFE_ZH, ifeval_language="en",
                                        ifeval_max_new_tokens=160, out_path=tmp_path / f"{name}.jsonl",
                                        progress=False, kpi_fn=fake_kpi, experience=False)
        # IFEval answers get their own (longer) budget; the domain samples keep theirs
        assert backend.budget["Reply without any commas."] == 160 and backend.budget["回答时不要使用任何逗号。"] == 160
        assert backend.budget[SAMPLES[0].messages[0].content] == 8
    recs = by_model["stage2"]
    ids = {r["sample_id"]: r for r in recs if r["family"] in ("ifeval", "ifeval_zh")}
    assert set(ids) == {"ifeval:7", "ifeval:8", "ifeval_zh:7"}  # same key, two sets: no clash
    assert ids["ifeval_zh:7"]["detail"]["language"] == "zh" and ids["ifeval:8"]["detail"]["language"] == "en"
    write_matrix(by_model, tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    # the per-family structure is as before: IFEval is no domain family
    assert set(summary) == {"base", "stage2", "ifeval", "ifeval_zh"}
    assert set(family_scores(summary)) == {"base", "stage2"}
    assert set(summary["base"]) == {"calculation", "concept", "chain"} == set(summary["stage2"])
    base, s2 = summary["ifeval"]["base"], summary["ifeval"]["stage2"]
    assert base == {"prompt_strict": 1.0, "prompt_loose": 1.0, "inst_strict": 1.0, "inst_loose": 1.0, "n": 2,
                    "instructions": 3, "instruction_types": ["detectable_format:title", "punctuation:no_comma",
                                                             "startend:end_checker"]}
    # instruction level pools the three instructions (0 of 3), as IFEval does
    assert s2["prompt_strict"] == 0.0 and s2["inst_strict"] == 0.0 and s2["n"] == 2
    assert summary["ifeval_zh"]["base"]["n"] == 1 and summary["ifeval_zh"]["stage2"]["prompt_loose"] == 0.0
    # the CLI tables read the new shape
    assert render_summary(summary).row_count == 3
    assert [tb.row_count for tb in render_ifeval(summary)] == [2, 2]


def test_instruction_level_is_pooled_over_prompts_not_averaged():
    from mixtune.eval.matrix import ifeval_block

    def rec(strict):
        return {"family": "ifeval", "metrics": {"ifeval_prompt_strict": float(all(strict)),
                                                "ifeval_prompt_loose": float(all(strict)),
                                                "ifeval_inst_strict": sum(strict) / len(strict),
                                                "ifeval_inst_loose": sum(strict) / len(strict)},
                "detail": {"instruction_id_list": ["a:b"] * len(strict), "strict_follow_list": strict,
                           "loose_follow_list": strict}}
    block = ifeval_block([rec([True]), rec([False, False, False])])
    assert block["inst_strict"] == 0.25  # 1 of 4 instructions; the mean of per-prompt shares would be 0.5
    old = [{k: v for k, v in r.items() if k != "detail"} for r in (rec([True]), rec([False, False, False]))]
    assert ifeval_block(old)["inst_strict"] == 0.5 and ifeval_block(old)["instruction_types"] == []


def test_a_model_named_like_an_ifeval_block_is_refused(tmp_path):
    recs = evaluate_model(Scripted(good_model), SAMPLES[:1], ONTO, FakeEngine(), model_name="ifeval",
                          max_new_tokens=8, ifeval_prompts=IFE[:1], out_path=tmp_path / "x.jsonl",
                          progress=False, kpi_fn=fake_kpi, experience=False)
    with pytest.raises(DataError, match="reserves"):
        write_matrix({"ifeval": recs}, tmp_path / "out")
    with pytest.raises(DataError, match="occurs twice"):
        evaluate_model(Scripted(good_model), [], ONTO, FakeEngine(), model_name="m", max_new_tokens=8,
                       ifeval_prompts=IFE[:1] * 2, out_path=tmp_path / "y.jsonl", progress=False, experience=False)
