"""Content generators for the finance risk-control example, one function per task type.

Every function takes a seeded ``random.Random`` and a context variant (industry / maturity /
rating) and returns ``(input, output, gold)``. Answers are deliberately short and formulaic
(a ~1M-parameter model must be able to learn them) but computed correctly: ratios are rounded
half-up to the declared precision and shown as ``a/b×100%=r%`` so the rule engine's
numeric-consistency check can re-derive every result from the numbers in the text.
Citations come only from the example whitelist (an example list to verify, not legal advice).
"""

from __future__ import annotations

import random
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

Item = tuple[str, str, dict[str, Any]]

CIT_LIQUIDITY = "《商业银行流动性风险管理办法》（中国银行保险监督管理委员会令2018年第3号）"
CIT_CAPITAL = "《商业银行资本管理办法》（国家金融监督管理总局令2023年第4号）"
CIT_EXPOSURE = "《商业银行大额风险暴露管理办法》（中国银行保险监督管理委员会令2018年第1号）"
CIT_ASSET_MGMT = "《关于规范金融机构资产管理业务的指导意见》（银发〔2018〕106号）"
CIT_PIPL = "《中华人民共和国个人信息保护法》（2021年）"
# A plausible-looking document that is NOT on the whitelist (used for injected defects only).
CIT_FAKE = "《商业银行流动性风险监管暂行规定》（银监发〔2019〕99号）"

TERMS: dict[str, tuple[str, list[str]]] = {
    "信用利差": ("信用债到期收益率与同期限国债到期收益率之差，反映信用风险溢价", ["到期收益率", "国债", "信用风险溢价"]),
    "流动性覆盖率": ("合格优质流动性资产与未来30天现金净流出量之比", ["合格优质流动性资产", "现金净流出量"]),
    "净稳定资金比例": ("可用的稳定资金与所需的稳定资金之比", ["可用的稳定资金", "所需的稳定资金"]),
    "资本充足率": ("资本净额与风险加权资产之比，衡量银行吸收损失的能力", ["资本净额", "风险加权资产"]),
    "杠杆率": ("一级资本净额与调整后的表内外资产余额之比", ["一级资本净额", "表内外资产余额"]),
    "拨备覆盖率": ("贷款损失准备与不良贷款之比，反映风险抵补能力", ["贷款损失准备", "不良贷款"]),
    "不良贷款": ("五级分类中的次级、可疑和损失类贷款", ["次级", "可疑", "损失"]),
    "现金短债比": ("货币资金与短期有息债务之比，衡量短期偿债能力", ["货币资金", "短期有息债务"]),
    "利息保障倍数": ("息税前利润与利息费用之比", ["息税前利润", "利息费用"]),
    "资产负债率": ("总负债与总资产之比，反映财务杠杆水平", ["总负债", "总资产"]),
}
EXPOSURE_LIMITS = {"单一非同业客户": 10, "非同业集团客户": 15, "同业单一客户": 25}
EVENTS = {"评级下调": "评级下调", "债券展期": "债务展期", "无": ""}
INDUSTRY_FACTOR = {"地产": "行业景气下行", "城投": "区域财政压力上升"}
BANKS = ["某城商行", "某农商行", "某股份行", "某民营银行", "某村镇银行"]
CITIES = ["北京", "上海", "广州", "深圳", "杭州", "南京", "成都", "武汉", "西安", "苏州"]
SURNAMES = "张王李赵刘陈杨黄周吴徐孙马朱胡郭何林"
PRODUCT_PREFIX = ["稳健", "安享", "鑫盈", "恒利", "睿远", "福满"]
MATTERS = ["流动性压力测试", "大额风险暴露排查", "不良贷款专项清收", "操作风险自查", "客户信息安全检查"]
RUMORS = [
    ("理财产品大面积亏损", "我行理财产品运作正常，净值波动处于合理区间"),
    ("出现集中挤兑", "我行各项流动性指标符合监管要求，业务经营正常"),
    ("{industry}行业贷款大规模违约", "我行{industry}行业贷款风险总体可控，已足额计提拨备"),
    ("高管被带走调查", "我行高管均正常履职，相关传言不实"),
]
ACTIONS = {
    ("liquidity", "高"): ("增加合格优质流动性资产储备", "压降短期批发融资"),
    ("liquidity", "中"): ("优化负债期限结构", "加强流动性压力测试"),
    ("liquidity", "低"): ("保持现有流动性管理安排", "定期开展压力测试"),
    ("capital", "不足"): ("制定资本补充计划", "压降高风险权重资产"),
    ("capital", "临界"): ("控制风险加权资产增速", "拓宽资本补充渠道"),
    ("capital", "充足"): ("保持资本充足水平稳定", "定期开展资本规划"),
}
SOLVENCY_GRADES = ["风险等级为低", "风险等级为中", "风险等级为高"]
CAPITAL_GRADES = ["资本充足水平为充足", "资本充足水平为临界", "资本充足水平为不足"]
COMPLIANCE_LABELS = ["不符合要求", "，符合要求"]


def rnd(value: float, places: int) -> float:
    """Round half-up (what a human checker expects), not banker's rounding."""
    q = Decimal(1).scaleb(-places)
    return float(Decimal(str(value)).quantize(q, rounding=ROUND_HALF_UP))


def ratio_pct(num: float, den: float) -> float:
    return rnd(num / den * 100, 2)


def context_line(ctx: dict[str, str]) -> str:
    parts = []
    if "industry" in ctx:
        parts.append(f"{ctx['industry']}行业")
    if "rating" in ctx:
        parts.append(f"{ctx['rating']}评级")
    if "maturity" in ctx:
        parts.append(f"{ctx['maturity']}期限")
    return "背景：" + "，".join(parts) if parts else ""


def _join(*lines: str) -> str:
    return "\n".join(x for x in lines if x)


def concept_term(rng: random.Random, ctx: dict[str, str]) -> Item:
    term = rng.choice(sorted(TERMS))
    definition, keywords = TERMS[term]
    out = f"{term}是指{definition}。"
    return _join(f"术语：{term}", context_line(ctx)), out, {"answer": out, "keywords": [term, *keywords]}


def lcr_values(rng: random.Random) -> tuple[int, int, float]:
    hqla, outflow = rng.randint(100, 999), rng.randint(100, 999)
    return hqla, outflow, ratio_pct(hqla, outflow)


def calc_lcr(rng: random.Random, ctx: dict[str, str], values: tuple | None = None) -> Item:
    hqla, outflow, r = values or lcr_values(rng)
    verdict = "达到" if r >= 100 else "未达到"
    out = f"流动性覆盖率={hqla:.2f}/{outflow:.2f}×100%={r:.2f}%，{verdict}100%的监管要求。"
    inp = _join(f"合格优质流动性资产：{hqla:.2f}亿元", f"未来30天现金净流出量：{outflow:.2f}亿元", context_line(ctx))
    return inp, out, {"result": r, "unit": "%", "precision": 2, "keywords": [f"{r:.2f}%", verdict]}


def car_values(rng: random.Random) -> tuple[int, int, float]:
    capital, rwa = rng.randint(60, 160), rng.randint(800, 1500)
    return capital, rwa, ratio_pct(capital, rwa)


def calc_car(rng: random.Random, ctx: dict[str, str], values: tuple | None = None) -> Item:
    capital, rwa, r = values or car_values(rng)
    verdict = "达到" if r >= 10.5 else "未达到"
    out = f"资本充足率={capital:.2f}/{rwa:.2f}×100%={r:.2f}%，{verdict}10.5%的监管要求。"
    inp = _join(f"资本净额：{capital:.2f}亿元", f"风险加权资产：{rwa:.2f}亿元", context_line(ctx))
    return inp, out, {"result": r, "unit": "%", "precision": 2, "keywords": [f"{r:.2f}%", verdict]}


def calc_spread(rng: random.Random, ctx: dict[str, str]) -> Item:
    credit, gov = rng.randint(250, 600) / 100, rng.randint(180, 280) / 100
    bp = int(rnd((credit - gov) * 100, 0))
    out = f"信用利差={credit:.2f}%-{gov:.2f}%={bp}bp。"
    inp = _join(f"信用债到期收益率：{credit:.2f}%", f"同期限国债到期收益率：{gov:.2f}%", context_line(ctx))
    return inp, out, {"result": bp, "unit": "bp", "precision": 0}


def attribution_spread(rng: random.Random, ctx: dict[str, str]) -> Item:
    leverage, cash_ratio = rng.randint(50, 95), rng.randint(30, 200) / 100
    event = rng.choice(sorted(EVENTS))
    factors = []
    if leverage >= 75:
        factors.append("负债水平偏高")
    if cash_ratio < 1:
        factors.append("短期偿债压力较大")
    if EVENTS[event]:
        factors.append(EVENTS[event])
    if ctx.get("industry") in INDUSTRY_FACTOR:
        factors.append(INDUSTRY_FACTOR[ctx["industry"]])
    if not factors:
        factors.append("市场风险偏好下降")
    out = f"信用利差走阔的主要原因可能包括：{'、'.join(factors)}。"
    inp = _join(f"资产负债率：{leverage}.00%", f"现金短债比：{cash_ratio:.2f}", f"近期事件：{event}", context_line(ctx))
    return inp, out, {"factors": factors}


def compliance_exposure(rng: random.Random, ctx: dict[str, str]) -> Item:
    client = rng.choice(sorted(EXPOSURE_LIMITS))
    limit = EXPOSURE_LIMITS[client]
    tier1 = rng.randint(100, 999)
    exposure = max(1, round(tier1 * limit / 100 * rng.uniform(0.5, 1.5)))
    r = ratio_pct(exposure, tier1)
    ok = r <= limit
    verdict = f"未超过{limit}%的上限，符合要求" if ok else f"超过{limit}%的上限，不符合要求"
    out = f"风险暴露占一级资本净额比例={exposure:.2f}/{tier1:.2f}×100%={r:.2f}%，{verdict}。依据{CIT_EXPOSURE}。"
    inp = _join(f"客户类型：{client}", f"风险暴露：{exposure:.2f}亿元", f"一级资本净额：{tier1:.2f}亿元", context_line(ctx))
    gold = {"result": r, "unit": "%", "precision": 2, "citations": [CIT_EXPOSURE],
            "label": "，符合要求" if ok else "不符合要求", "label_choices": COMPLIANCE_LABELS}
    return inp, out, gold


def history_default(rng: random.Random, ctx: dict[str, str]) -> Item:
    q = [rng.randint(0, 12) for _ in range(3)]
    total = sum(q)
    trend = "上升" if q[0] < q[1] < q[2] else "下降" if q[0] > q[1] > q[2] else "波动"
    out = f"近三个季度违约分别为{q[0]}起、{q[1]}起、{q[2]}起，合计{total}起，整体呈{trend}态势。"
    inp = _join(f"行业：{ctx.get('industry', '')}", f"Q1违约{q[0]}起，Q2违约{q[1]}起，Q3违约{q[2]}起", context_line(
        {k: v for k, v in ctx.items() if k != "industry"}))
    return inp, out, {"result": total, "unit": "起", "precision": 0, "keywords": [f"合计{total}起", f"{trend}态势"]}


def solvency_grade(r: float) -> str:
    return "低" if r >= 150 else "中" if r >= 100 else "高"


def capital_grade(r: float) -> str:
    return "充足" if r >= 10.5 else "临界" if r >= 8 else "不足"


def grade_solvency(rng: random.Random, ctx: dict[str, str], value: float | None = None) -> Item:
    r = value if value is not None else lcr_values(rng)[2]
    g = solvency_grade(r)
    out = f"流动性覆盖率为{r:.2f}%，短期偿债风险等级为{g}。"
    return f"流动性覆盖率：{r:.2f}%", out, {"grade": g, "label": f"风险等级为{g}", "label_choices": SOLVENCY_GRADES}


def grade_capital(rng: random.Random, ctx: dict[str, str], value: float | None = None) -> Item:
    r = value if value is not None else car_values(rng)[2]
    g = capital_grade(r)
    out = f"资本充足率为{r:.2f}%，资本充足水平为{g}。"
    return f"资本充足率：{r:.2f}%", out, {"grade": g, "label": f"资本充足水平为{g}", "label_choices": CAPITAL_GRADES}


def recommend_actions(rng: random.Random, ctx: dict[str, str], topic: str | None = None,
                      grade: str | None = None) -> Item:
    value = None
    if topic is None:  # standalone: draw an indicator value and derive the grade from it
        topic = rng.choice(["liquidity", "capital"])
        value = lcr_values(rng)[2] if topic == "liquidity" else car_values(rng)[2]
        grade = solvency_grade(value) if topic == "liquidity" else capital_grade(value)
    a1, a2 = ACTIONS[(topic, grade)]
    cit = CIT_LIQUIDITY if topic == "liquidity" else CIT_CAPITAL
    out = f"建议：一是{a1}；二是{a2}。依据{cit}。"
    if topic == "liquidity":
        label, shown = f"短期偿债风险等级：{grade}", value is not None and f"流动性覆盖率：{value:.2f}%"
    else:
        label, shown = f"资本充足水平：{grade}", value is not None and f"资本充足率：{value:.2f}%"
    inp = _join(f"机构：{rng.choice(CITIES)}{rng.choice(BANKS)[1:]}", shown or "", label)
    return inp, out, {"citations": [cit], "keywords": [a1, a2]}


def official_writing(rng: random.Random, ctx: dict[str, str]) -> Item:
    matter = rng.choice(MATTERS + [f"{ctx.get('industry', '重点')}行业授信排查"])
    month, day = rng.randint(1, 12), rng.randint(1, 28)
    out = (f"关于开展{matter}的通知\n各相关部门：\n请于{month}月{day}日前完成{matter}，"
           f"结果报送风险管理部。\n特此通知。")
    inp = _join(f"事项：开展{matter}", f"截止时间：{month}月{day}日", "牵头部门：风险管理部")
    return inp, out, {"keywords": [matter, f"{month}月{day}日", "特此通知"]}


def opinion_reply(rng: random.Random, ctx: dict[str, str]) -> Item:
    rumor, fact = rng.choice(RUMORS)
    rumor, fact = rumor.format(industry=ctx.get("industry", "地产")), fact.format(industry=ctx.get("industry", "地产"))
    branch = f"{rng.choice(CITIES)}分行"
    month, day = rng.randint(1, 12), rng.randint(1, 28)
    out = f"关于网传{branch}{rumor}的情况说明：经核实，{fact}。我行将持续依法合规经营，感谢社会各界关注。"
    inp = _join(f"传言：{month}月{day}日网传我行{branch}{rumor}", f"核实结果：{fact}")
    return inp, out, {"keywords": ["经核实", fact]}


def _id_number(rng: random.Random) -> str:
    body = f"{rng.choice(['110101', '310104', '440305', '330106', '510107'])}"
    body += f"{rng.randint(1960, 2002)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}{rng.randint(0, 999):03d}"
    weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
    check = "10X98765432"[sum(int(c) * w for c, w in zip(body, weights)) % 11]
    return body + check


def mask_id(s: str) -> str:
    return s[:3] + "*" * (len(s) - 7) + s[-4:]


def mask_card(s: str) -> str:
    return "*" * (len(s) - 4) + s[-4:]


def pii_masking(rng: random.Random, ctx: dict[str, str]) -> Item:
    idn = _id_number(rng)
    mobile = f"1{rng.choice('3456789')}{rng.randint(0, 999999999):09d}"
    card = "62" + "".join(str(rng.randint(0, 9)) for _ in range(rng.choice([14, 17])))
    name = rng.choice(SURNAMES) + rng.choice(["先生", "女士"])
    fields = [("身份证号", idn, mask_id(idn)), ("手机号", mobile, mask_id(mobile)), ("银行卡号", card, mask_card(card))]
    fields = rng.sample(fields, rng.choice([2, 3]))
    raw = f"客户{name}，" + "，".join(f"{k}{v}" for k, v, _ in fields) + "。"
    out = f"客户{name}，" + "，".join(f"{k}{m}" for k, _, m in fields) + "。"
    gold = {"masked": True, "answer": out, "masked_values": [m for *_, m in fields], "raw_values": [v for _, v, _ in fields]}
    return raw, out, gold


def promise_refusal(rng: random.Random, ctx: dict[str, str]) -> Item:
    product = f"{rng.choice(PRODUCT_PREFIX)}{rng.randint(1, 99)}号理财产品"
    question = rng.choice([f"这款{product}能保本吗？", f"你们能保证{product}年化收益{rng.randint(3, 9)}%吗？",
                           f"买{product}是不是稳赚不赔？", f"{product}承诺刚性兑付吗？"])
    out = (f"抱歉，我们不能承诺{product}本金不受损失或取得固定收益。依据{CIT_ASSET_MGMT}，"
           "产品净值随市场波动，投资有风险，请审慎决策。")
    return f"客户：{question}", out, {"refusal": True, "citations": [CIT_ASSET_MGMT], "keywords": ["不能承诺", "投资有风险"]}


GENERATORS = {
    "concept_term": concept_term, "calc_lcr": calc_lcr, "calc_car": calc_car, "calc_spread": calc_spread,
    "attribution_spread": attribution_spread, "compliance_exposure": compliance_exposure,
    "history_default": history_default, "grade_solvency": grade_solvency, "grade_capital": grade_capital,
    "recommend_actions": recommend_actions, "official_writing": official_writing, "opinion_reply": opinion_reply,
    "pii_masking": pii_masking, "promise_refusal": promise_refusal,
}
