"""RuleSet loading/versioning errors and the RuleEngine API on the shipped finance rule set."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import yaml

from mixtune.errors import ConfigError
from mixtune.rules import Failure, RuleEngine, RuleSet

FINANCE = Path(__file__).resolve().parents[1] / "examples" / "finance_risk"
LCR_INPUT = "根据以下数据计算流动性覆盖率\n合格优质流动性资产：1200.00亿元\n未来30天现金净流出量：800.00亿元"
LCR_OK = "流动性覆盖率=1200.00/800.00×100%=150.00%，达到100%的监管要求。"
CALC_IDS = ["numeric_precision_pct", "numeric_consistency", "terminology", "length_stage1"]


@pytest.fixture(scope="module")
def engine() -> RuleEngine:
    return RuleEngine(RuleSet.load(FINANCE / "rules.yaml"))


def write(tmp_path: Path, data, name="rules.yaml") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return p


# ------------------------------------------------------------------ loading and versions

@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("rules: [unclosed", "cannot read rule set"),
        ({"rules": [{"id": "a", "kind": "length"}]}, "'version'"),
        ({"version": "v", "rules": []}, "non-empty list"),
        ({"version": "v", "rules": [{"id": "a", "kind": "spellcheck"}]}, "rule 'a': unknown kind 'spellcheck'"),
        ({"version": "v", "rules": [{"id": "a", "kind": "length", "sevrity": "error"}]}, "rule 'a': unknown key"),
        ({"version": "v", "rules": [{"id": "a", "kind": "length", "severity": "fatal"}]}, "rule 'a': severity"),
        ({"version": "v", "rules": [{"id": "a", "kind": "length"}, {"id": "a", "kind": "length"}]}, "duplicate"),
        ({"version": "v", "rules": [{"id": "a", "kind": "length", "params": {"maximum": 3}}]},
         "rule 'a': unknown param"),
        ({"version": "v", "rules": [{"id": "g", "kind": "terminology", "params": {"glossary": "nope.yaml"}}]},
         "rule 'g': cannot read glossary 'nope.yaml'"),
        ({"version": "v", "rules": [{"id": "w", "kind": "length", "applies_when": {"input_regex": "("}}]},
         "rule 'w'"),
        ({"version": "v", "extra": 1, "rules": [{"id": "a", "kind": "length"}]}, "unknown top-level"),
    ],
)
def test_bad_rule_files_raise_config_error_naming_file_and_rule(tmp_path, data, message):
    path = write(tmp_path, data)
    with pytest.raises(ConfigError, match=message) as exc:
        RuleSet.load(path)
    assert str(path) in str(exc.value)


def test_missing_file_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        RuleSet.load(tmp_path / "absent.yaml")


def test_version_has_content_hash_that_tracks_the_glossary(tmp_path):
    for f in ("rules.yaml", "glossary.yaml"):
        shutil.copy(FINANCE / f, tmp_path / f)
    a, b = RuleSet.load(tmp_path / "rules.yaml"), RuleSet.load(tmp_path / "rules.yaml")
    assert a.version == b.version and a.version.startswith("finance-2026.11.1+")
    gl = tmp_path / "glossary.yaml"
    gl.write_text(gl.read_text(encoding="utf-8") + "  - canonical: 杠杆率\n    forbidden: [杠杆比]\n", encoding="utf-8")
    c = RuleSet.load(tmp_path / "rules.yaml")
    assert c.version != a.version and c.declared_version == a.declared_version
    assert not RuleEngine(c).passes("杠杆比偏高") and RuleEngine(a).passes("杠杆比偏高")


def test_unknown_rule_id_in_check_is_config_error(engine):
    with pytest.raises(ConfigError, match="unknown rule id 'nope'"):
        engine.check("x", rule_ids=["nope"])


# ------------------------------------------------------------------ the finance rule set

def test_finance_ids_groups_and_every_kind_shipped(engine):
    rs = engine.ruleset
    assert {"citation_whitelist", "sensitive_words", "terminology", "pii_masked", "length_stage1"} <= set(rs.ids)
    assert len(rs.groups()["numeric_consistency"]) >= 6 and rs.known("numeric_consistency")
    assert {r.kind for r in rs.rules} >= {"regex", "json_schema", "required_sections", "numeric_precision",
                                          "numeric_consistency", "terminology", "citation_whitelist",
                                          "sensitive_words", "uncertainty", "pii", "length"}


@pytest.mark.parametrize(
    ("inp", "good", "bad"),
    [
        (LCR_INPUT, LCR_OK, LCR_OK.replace("=150.00%", "=151.00%")),
        ("可用的稳定资金为900.00亿元，所需的稳定资金为750.00亿元", "净稳定资金比例=120.00%", "净稳定资金比例=125.00%"),
        ("资本净额：120.00亿元\n风险加权资产：1000.00亿元", "资本充足率=120.00/1000.00×100%=12.00%，达到10.5%的监管要求。",
         "资本充足率=12.50%"),
        ("一级资本净额：50.00亿元\n调整后的表内外资产余额：1000.00亿元", "杠杆率=5.00%", "杠杆率=4.00%"),
        ("客户类型：单一非同业客户\n风险暴露：12.00亿元\n一级资本净额：100.00亿元",
         "风险暴露占一级资本净额比例=12.00/100.00×100%=12.00%，超过10%的上限，不符合要求。", "风险暴露占一级资本净额比例=10.00%"),
        ("信用债到期收益率：3.85%\n同期限国债到期收益率：2.10%", "信用利差=3.85%-2.10%=175bp。", "信用利差=3.85%-2.10%=185bp。"),
        ("Q1违约3起，Q2违约5起，Q3违约7起", "合计15起，整体呈上升态势。", "合计16起，整体呈上升态势。"),
    ],
)
def test_numeric_consistency_per_indicator(engine, inp, good, bad):
    ids = ["numeric_consistency"]
    assert engine.check(good, rule_ids=ids, input_text=inp) == []
    [f] = engine.check(bad, rule_ids=ids, input_text=inp, sample_id="s1")
    assert f.rule_id.startswith("numeric_consistency.") and f.sample_id == "s1" and f.severity == "error"
    assert f.span is not None


def test_precision_bp_and_threshold_exemption(engine):
    ids = ["numeric_precision_pct", "numeric_precision_bp"]
    assert engine.passes("流动性覆盖率=150.00%，上限为10%，达到100%的监管要求，利差=175bp", rule_ids=ids)
    assert not engine.passes("流动性覆盖率为150%", rule_ids=ids)
    assert not engine.passes("信用利差=175.5bp", rule_ids=ids)


def test_default_selection_skips_opt_in_and_inapplicable_rules(engine):
    # No input → no consistency rule applies; length/uncertainty are opt-in.
    text = "违约一定会发生。" * 20
    assert engine.check(text) == []
    assert {f.rule_id for f in engine.check(text, rule_ids=["uncertainty_attribution", "length_stage1"])} == {
        "uncertainty_attribution", "length_stage1"}
    assert any(f.rule_id == "citation_required" for f in engine.check("依据相关规定。", rule_ids=["citation_required"]))


def test_compliance_is_fraction_of_applicable_rules(engine):
    assert engine.compliance(LCR_OK, rule_ids=CALC_IDS, input_text=LCR_INPUT) == 1.0
    # 4 applicable (precision, lcr, terminology, length): precision + lcr fail (two failures, two rules)
    bad = "流动覆盖率=151.0%"
    failures = engine.check(bad, rule_ids=CALC_IDS, input_text=LCR_INPUT)
    assert {f.rule_id for f in failures} == {"numeric_precision_pct", "numeric_consistency.lcr", "terminology"}
    assert engine.compliance(bad, rule_ids=CALC_IDS, input_text=LCR_INPUT) == pytest.approx(1 / 4)
    assert engine.compliance("whatever", rule_ids=["numeric_consistency"]) == 1.0  # nothing applicable


def test_passes_ignores_warnings(engine):
    text = "作为AI，我认为流动性覆盖率=150.00%"
    [f] = engine.check(text)
    assert f.rule_id == "no_ai_disclaimer" and f.severity == "warning"
    assert engine.passes(text)


def test_flag_spans_in_original_coordinates(engine):
    text = "客户手机１３８\u200b００１３８０００，本产品保本，流动覆盖率高，【敏感：稳赚】"
    flagged = engine.flag_spans(text)
    assert [(text[s:e], rid) for s, e, rid in flagged] == [
        ("１３８\u200b００１３８０００", "pii_masked"), ("保本", "sensitive_words"), ("流动覆盖率", "terminology")]
    assert engine.flag_spans(text, kinds=("pii",)) == [flagged[0]]


def test_check_batch_matches_check(engine):
    items = [
        ("a", LCR_INPUT, LCR_OK, CALC_IDS),
        ("b", LCR_INPUT, "流动性覆盖率=151.00%", CALC_IDS),
        ("c", "", "本产品零风险，手机13800138000", None),
        ("d", "", "依据《商业银行资本管理办法》（国家金融监督管理总局令2023年第4号）。", ["citation_required"]),
    ]
    got = engine.check_batch(items)
    assert got == [engine.check(o, rule_ids=r, input_text=i, sample_id=s) for s, i, o, r in items]
    assert got[0] == [] and got[3] == []
    assert {f.rule_id for f in got[2]} == {"sensitive_words", "pii_masked"}
    assert all(isinstance(f, Failure) and f.sample_id == "c" for f in got[2])


def test_generated_finance_samples_gold_passes_and_defects_are_caught(engine):
    from mixtune.data.generate import generate_samples
    from mixtune.data.ontology import load_ontology

    onto = load_ontology(FINANCE / "ontology.yaml")
    # Section rules shipped for tasks whose ontology rule ids do not (yet) cover their sections.
    extra = {"attribution_spread": ["attribution_sections"], "recommend_actions": ["recommend_sections"],
             "promise_refusal": ["refusal_sections"]}
    samples = generate_samples(onto, n_per_task=12, seed=3, defect_rate=0.25)
    caught = total = 0
    for s in samples:
        msgs, steps = s.messages, s.chain_steps or [s.task_id]
        items = [(s.id, msgs[2 * k].content, msgs[2 * k + 1].content, onto.tasks[t].rule_ids + extra.get(t, []))
                 for k, t in enumerate(steps)]
        failures = [f for row in engine.check_batch(items) for f in row]
        if not s.defect:
            assert failures == [], (s.task_id, failures)
        else:
            total += 1
            caught += bool(failures)
    # ≥95%: the generator's wrong_arithmetic can alter a shown operand instead of a negative result
    assert total > 20 and caught / total >= 0.95


def test_throughput_smoke(engine):
    """Loose regression guard; the real number comes from `python -m mixtune.bench.rules_throughput`."""
    items = [(str(i), LCR_INPUT, LCR_OK.replace("150.00", f"{150 + i % 7:.2f}"), CALC_IDS) for i in range(2000)]
    t0 = time.perf_counter()
    engine.check_batch(items)
    # Hang guard only (≈0.2 s quiet; a quadratic regression would take minutes). Speed is measured
    # by `mixtune bench validation`, never asserted here: a loaded machine must not fail the suite.
    assert time.perf_counter() - t0 < 60


def test_json_schema_from_file_is_snapshotted(tmp_path):
    (tmp_path / "s.json").write_text('{"type": "object", "required": ["level"]}', encoding="utf-8")
    path = write(tmp_path, {"version": "v", "rules": [
        {"id": "j", "kind": "json_schema", "params": {"schema_file": "s.json"}}]})
    rs = RuleSet.load(path)
    (tmp_path / "s.json").write_text("not json", encoding="utf-8")  # later edits do not leak in
    eng = RuleEngine(rs)
    assert eng.passes('{"level": "低"}') and not eng.passes('{"other": 1}')
    with pytest.raises(ConfigError, match="rule 'j': schema_file 's.json' is not valid JSON"):
        RuleSet.load(path)


_PIECES = ["9" * 300, "=", "%", "bp", "《", "》", "(", ")", "（", "）", "令2018年第3号", "〔2018〕", "号", "【敏感:",
           "】", "保本", "一定", "流动覆盖率", "\u200b", "\ufeff", "\u0301", "𝐀", "１２３", "，", "合计", "起", ".",
           "[" * 50, "{", '"', "\n", "流动性覆盖率=", "138001380000", " ", "X", "㎡", "e"]


def test_hostile_texts_never_crash_and_spans_stay_in_bounds(engine):
    import random

    rng = random.Random(5)
    ids = list(engine.ruleset.ids)
    start = time.perf_counter()
    for i in range(300):
        text = "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 80)))
        inp = "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 20)))
        for f in engine.check(text, rule_ids=ids, input_text=inp, sample_id=str(i)):
            assert f.span is None or 0 <= f.span[0] <= f.span[1] <= len(text)
        for s, e, _ in engine.flag_spans(text):
            assert 0 <= s < e <= len(text)
    # a long digit run and deep JSON nesting stay linear / fail cleanly
    assert engine.check("1" * 20000 + "bp", rule_ids=["numeric_precision_bp"]) == []
    [f] = engine.check("[" * 100000, rule_ids=["risk_factors_json"])
    assert "too deeply" in f.reason or "not valid JSON" in f.reason
    assert time.perf_counter() - start < 120  # hang guard: a super-linear scan of 100k chars takes hours


def test_rule_ids_by_kind(engine):
    by_kind = {r.id: r.kind for r in engine.ruleset.rules}
    assert engine.rule_ids() == list(by_kind)
    assert engine.rule_ids(kinds="terminology") == [r for r, k in by_kind.items() if k == "terminology"] != []
    both = engine.rule_ids(kinds=("terminology", "pii"))
    assert both == [r for r, k in by_kind.items() if k in ("terminology", "pii")]
    assert set(both) > set(engine.rule_ids(kinds=["pii"])) != set()
    with pytest.raises(ValueError, match="unknown rule kinds \\['glossary'\\]"):
        engine.rule_ids(kinds=["glossary"])
