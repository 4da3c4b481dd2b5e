"""Each built-in rule kind with passing and failing texts (spans in original coordinates)."""

from __future__ import annotations

import pytest

from mixtune.rules import RuleEngine, RuleSet, uncertainty_grade


def engine_for(kind: str, params: dict, **extra) -> RuleEngine:
    rule = {"id": "r", "kind": kind, "params": params, **extra}
    return RuleEngine(RuleSet.from_dict({"version": "t", "rules": [rule]}))


def reasons(engine: RuleEngine, text: str, **kw) -> list[str]:
    return [f.reason for f in engine.check(text, **kw)]


def spans(engine: RuleEngine, text: str, **kw) -> list[str]:
    return [text[f.span[0]:f.span[1]] for f in engine.check(text, **kw) if f.span]


def test_regex_must_match_and_must_not_match():
    must = engine_for("regex", {"pattern": r"风险等级为[低中高]"})
    assert must.passes("短期偿债风险等级为中。")
    assert not must.passes("短期偿债风险等级为较低。")
    full = engine_for("regex", {"pattern": r"\d+", "fullmatch": True})
    assert full.passes("１２３") and not full.passes("123a")  # full-width digits normalised first
    never = engine_for("regex", {"pattern": "作为AI", "mode": "must_not_match", "flags": ["IGNORECASE"]})
    text = "好的，作为ａｉ我认为"
    assert spans(never, text) == ["作为ａｉ"]


def test_json_schema():
    eng = engine_for("json_schema", {"schema": {"type": "object", "required": ["factors"],
                                                "properties": {"factors": {"type": "array", "minItems": 1}}}})
    assert eng.passes('{"factors": ["负债水平偏高"]}')
    assert eng.passes('结果如下：\n```json\n{"factors": ["a"]}\n```')
    assert any("factors" in r for r in reasons(eng, '{"factors": []}'))
    assert any("not valid JSON" in r for r in reasons(eng, "{factors: 1"))


def test_required_sections_presence_and_order():
    eng = engine_for("required_sections", {"sections": ["关于", "各相关部门：", "特此通知。"], "ordered": True})
    ok = "关于开展排查的通知\n各相关部门：\n请按时完成。\n特此通知。"
    assert eng.passes(ok)
    assert eng.passes(ok.replace("：", ":"))  # markers are normalised like the text
    assert reasons(eng, "关于开展排查的通知\n请按时完成。") == [
        "missing required section '各相关部门:'", "missing required section '特此通知。'"]
    out_of_order = "特此通知。关于排查\n各相关部门：请完成"
    assert any("out of order" in r for r in reasons(eng, out_of_order))
    unordered = engine_for("required_sections", {"sections": ["关于", "特此通知。"]})
    assert unordered.passes(out_of_order)


def test_length_counts_normalised_characters():
    eng = engine_for("length", {"min": 3, "max": 5})
    assert eng.passes("一二三四")
    assert not eng.passes("一二")
    assert not eng.passes("一二三四五六")
    assert not eng.passes("一\u200b\u200b\u200b二")  # zero-width padding does not count


def test_numeric_precision_with_ignore_regex():
    eng = engine_for("numeric_precision", {
        "patterns": [{"label": "pct", "regex": r"[=为]\s*(?P<v>{num})\s*%", "decimals": 2},
                     {"label": "bp", "regex": r"(?P<v>{num})\s*bp", "decimals": 0}],
        "ignore_regex": r"上限为\s*{num}\s*%"})
    assert eng.passes("比例=12.34%，上限为10%，利差=175bp")
    text = "比例＝１２.３％，利差=17.5bp"
    assert spans(eng, text) == ["１２.３", "17.5"]


def test_numeric_consistency_pass_fail_and_missing():
    eng = engine_for("numeric_consistency", {
        "inputs": {"hqla": r"合格优质流动性资产\s*[:为]\s*(?P<v>{num})",
                   "outflow": r"现金净流出量\s*[:为]\s*(?P<v>{num})"},
        "outputs": {"result": r"流动性覆盖率\s*=\s*(?:[\d.×/%]+=)?(?P<v>{num})%"},
        "expr": "abs(result - hqla / outflow * 100) <= 0.005"})
    inp = "合格优质流动性资产为1200.00亿元，未来30天现金净流出量为800.00亿元"
    assert eng.passes("流动性覆盖率=150.00%", input_text=inp)
    assert eng.passes("流动性覆盖率=1200.00/800.00×100%=150.00%", input_text=inp)
    assert eng.passes("流动性覆盖率＝１５０.００％", input_text=inp.replace("为", "："))
    bad = "流动性覆盖率=１５１.００%"
    [f] = eng.check(bad, input_text=inp)
    assert "inconsistent" in f.reason and bad[f.span[0]:f.span[1]] == "１５１.００"
    [f] = eng.check("流动性覆盖率=150.00%", input_text="合格优质流动性资产为1200亿元")
    assert "'outflow' not found in input" in f.reason
    [f] = eng.check("流动性覆盖率=150.00%", input_text="合格优质流动性资产为1200亿元，现金净流出量为0亿元")
    assert "cannot check" in f.reason  # division by zero is a failure, not a crash


def test_terminology_forbidden_variants_and_longest_match():
    eng = engine_for("terminology", {"terms": [
        {"canonical": "流动性覆盖率", "forbidden": ["流动覆盖率"]},
        {"canonical": "信用利差", "forbidden": ["利差率"]},
        {"canonical": "利差率变动", "forbidden": []}]})
    assert eng.passes("流动性覆盖率为150.00%")
    text = "该行流动\u200b覆盖率偏低，利差率上升，利差率变动平稳"
    assert spans(eng, text) == ["流动\u200b覆盖率", "利差率"]  # 利差率变动 is canonical and longer


def test_sensitive_words_marked_unmarked_and_overlap():
    eng = engine_for("sensitive_words", {"words": ["保本", "保本保收益", "稳赚"]})
    assert eng.passes("我们不能承诺【敏感：保本保收益】，投资有风险。")
    text = "本产品保本保收益，【敏感:稳赚】，稳赚不赔"
    got = eng.check(text)
    assert [text[f.span[0]:f.span[1]] for f in got] == ["保本保收益", "稳赚"]
    assert got[1].span[0] == text.rindex("稳赚")
    assert engine_for("sensitive_words", {"words": ["保本"]}).passes("no candidate characters at all")


def test_uncertainty_grades_and_allowed_range():
    assert uncertainty_grade("违约必然发生") == 0
    assert uncertainty_grade("很可能走阔") == 1  # 很可能 wins over the contained 可能
    assert uncertainty_grade("或许会走阔，存在不确定性") == 2
    assert uncertainty_grade("不一定走阔") == 2  # not level 0 despite containing 一定
    assert uncertainty_grade("在一定程度上反映了风险") is None  # 一定程度 is neutral
    eng = engine_for("uncertainty", {"allowed_min": 1, "allowed_max": 3})
    assert eng.passes("主要原因可能包括负债偏高。")
    text = "利差一定会继续走阔"
    assert spans(eng, text) == ["一定"]
    req = engine_for("uncertainty", {"required": True})
    assert not req.passes("利差走阔。") and req.passes("利差或许走阔。")


WHITELIST = [
    {"title": "商业银行流动性风险管理办法", "number": "中国银行保险监督管理委员会令2018年第3号"},
    {"title": "商业银行资本管理办法", "number": "国家金融监督管理总局令2023年第4号"},
    {"title": "关于规范金融机构资产管理业务的指导意见", "number": "银发〔2018〕106号"},
    {"title": "中华人民共和国个人信息保护法"},
]


def test_citation_whitelist():
    eng = engine_for("citation_whitelist", {"documents": WHITELIST, "min_citations": 1})
    assert eng.passes("依据《商业银行流动性风险管理办法》（中国银行保险监督管理委员会令2018年第3号）。")
    assert eng.passes("依据《关于规范金融机构资产管理业务的指导意见》(银发[2018]106号)")
    assert eng.passes("依据《中华人民共和国个人信息保护法》（2021年）")
    fake = "依据《商业银行流动性风险监管暂行规定》（银监发〔2019〕99号）。"
    assert spans(eng, fake) == ["银监发〔2019〕99号", "《商业银行流动性风险监管暂行规定》"]
    swapped = "依据《商业银行资本管理办法》（中国银行保险监督管理委员会令2018年第3号）"
    assert any("does not belong" in r for r in reasons(eng, swapped))
    assert any("needs at least 1" in r for r in reasons(eng, "依据相关规定。"))
    assert any("needs at least 1" in r for r in reasons(eng, "依据《商业银行资本管理办法》"))  # no number


def test_pii_kinds_param():
    eng = engine_for("pii", {"kinds": ["mobile"]})
    assert not eng.passes("手机13800138000")
    assert eng.passes("手机138****8000，卡号6222021234567890123")


@pytest.mark.parametrize(
    ("kind", "params", "message"),
    [
        ("regex", {}, "missing required param 'pattern'"),
        ("regex", {"pattern": "("}, "not a valid regex"),
        ("regex", {"pattern": "a", "colour": 1}, "unknown param"),
        ("regex", {"pattern": "a", "mode": "maybe"}, "mode must be"),
        ("length", {"min": 5, "max": 2}, "min <= max"),
        ("length", {"min": "5"}, "must be int"),
        ("json_schema", {"schema": {"type": "no-such-type"}}, "invalid JSON schema"),
        ("numeric_consistency", {"outputs": {"r": "(\\d+)"}, "expr": "__import__('os')"}, "bad expr"),
        ("numeric_consistency", {"outputs": {"r": "(\\d+)"}, "expr": "r + q"}, "unknown name 'q'"),
        ("terminology", {"terms": [{"canonical": "a", "forbidden": ["b"]}, {"canonical": "b"}]}, "both canonical"),
        ("uncertainty", {"allowed_min": 3, "allowed_max": 1}, "allowed_min"),
        ("pii", {"kinds": ["passport"]}, "unknown PII kind"),
        ("sensitive_words", {"words": []}, "must not be empty"),
    ],
)
def test_bad_params_raise_config_error_naming_rule(kind, params, message):
    from mixtune.errors import ConfigError

    with pytest.raises(ConfigError, match=message) as exc:
        engine_for(kind, params)
    assert "rule 'r'" in str(exc.value)
