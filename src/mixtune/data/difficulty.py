"""Difficulty scorer: four dimensions → a score in [0, 1] and a level 1..5.

Dimensions (DESIGN.md §4), each in [0, 1], blend the task's ontology prior with evidence read
from the sample itself, so two samples of one task can land on different levels:

- ``breadth``: how many distinct domain concepts (glossary terms, cited documents) it touches;
- ``steps``: reasoning steps — chain turns plus arithmetic / comparison operations in the answer;
- ``constraints``: explicit constraints in the instruction (precision, citation, length, format)
  plus the number of rules that judge the answer;
- ``ambiguity``: how much ambiguity the answer must tolerate — hedged wording, extra facts.

Weights and level cut points are configurable. The default cut points (0.22, 0.32, 0.45, 0.60)
are calibrated on the finance example, where scores span about 0.17 (PII masking) to 0.66
(three-step chains): equal fifths of [0, 1] would leave level 5 empty and crowd everything into 2–4.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_right
from dataclasses import dataclass, field

from mixtune.data.schema import Sample

DIMS = ("breadth", "steps", "constraints", "ambiguity")
CONCEPTS = (
    "流动性覆盖率", "净稳定资金比例", "资本充足率", "一级资本", "核心一级资本", "杠杆率", "风险加权资产",
    "拨备覆盖率", "不良贷款", "信用利差", "到期收益率", "国债", "风险暴露", "资产负债率", "现金短债比",
    "利息保障倍数", "违约", "评级", "期限", "行业", "监管", "个人信息", "理财", "净值",
    "liquidity coverage", "capital adequacy", "credit spread", "default", "exposure", "rating",
)
_OPS = re.compile(r"[=×÷/+]|(?<=\d)-(?=\d)|高于|低于|达到|超过|未超过|合计|划分|判断")
_CONSTRAINTS = re.compile(
    r"保留|小数|引用|依据|不超过|字以内|格式|单位|基点|bp|必须|不得|掩码|脱敏|公文|"
    r"decimal|cite|citation|at most|format|must"
)
_HEDGES = re.compile(r"可能|或许|大概|很可能|大概率|难以判断|不确定|倾向|likely|may|might|possibly|uncertain")


def _clip(x: float) -> float:
    return max(0.0, min(1.0, x))


@dataclass
class DifficultyScorer:
    """Seedless, stateless scorer; ``weights`` per dimension, ``prior_weight`` for the ontology prior."""

    weights: dict[str, float] = field(default_factory=lambda: {d: 1.0 for d in DIMS})
    prior_weight: float = 0.5
    thresholds: tuple[float, ...] = (0.22, 0.32, 0.45, 0.60)

    def __post_init__(self) -> None:
        self.thresholds = tuple(float(x) for x in self.thresholds)
        if len(self.thresholds) != 4 or list(self.thresholds) != sorted(self.thresholds):
            raise ValueError("thresholds must be 4 increasing cut points between levels 1..5")
        unknown = set(self.weights) - set(DIMS)
        if unknown:
            raise ValueError(f"unknown difficulty dimension(s) {sorted(unknown)}; allowed: {list(DIMS)}")
        if sum(self.weights.get(d, 0.0) for d in DIMS) <= 0:
            raise ValueError("difficulty weights must have a positive sum")
        if not 0.0 <= self.prior_weight <= 1.0:
            raise ValueError("prior_weight must be in [0, 1]")

    def dimensions(self, sample: Sample, prior: dict[str, float] | None = None,
                   n_rules: int = 0) -> dict[str, float]:
        """Per-dimension values in [0, 1] for one sample."""
        prior = prior or {}
        answers = [m.content for m in sample.messages if m.role == "assistant"] or [sample.output]
        text = " ".join(m.content for m in sample.messages)
        low = text.lower()
        n_concepts = sum(c.lower() in low for c in CONCEPTS) + len(re.findall("《", text))
        n_ops = sum(len(_OPS.findall(a)) for a in answers)
        n_turns = len(answers)
        user_text = sample.instruction or (sample.messages[0].content if sample.messages else "")
        n_constraints = len(_CONSTRAINTS.findall(user_text.lower())) + n_rules / 3
        n_hedges = len(_HEDGES.findall(" ".join(answers).lower()))
        n_input_lines = len([x for x in sample.input.splitlines() if x.strip()])
        evidence = {
            "breadth": _clip(n_concepts / 6),
            "steps": _clip((n_turns - 1) / 2 * 0.6 + n_ops / 8),
            "constraints": _clip(n_constraints / 4),
            "ambiguity": _clip(n_hedges / 2 * 0.6 + max(0, n_input_lines - 3) / 4),
        }
        pw = self.prior_weight
        return {d: round(pw * float(prior.get(d, evidence[d])) + (1 - pw) * evidence[d], 4) for d in DIMS}

    def score(self, dims: dict[str, float]) -> tuple[float, int]:
        """Weighted mean of the dimensions and its level 1..5."""
        total = sum(self.weights.get(d, 0.0) for d in DIMS)
        s = sum(self.weights.get(d, 0.0) * dims[d] for d in DIMS) / total
        return round(s, 4), 1 + bisect_right(self.thresholds, s)

    def apply(self, sample: Sample, prior: dict[str, float] | None = None, n_rules: int = 0) -> Sample:
        """Store difficulty_score, difficulty_dims (JSON) and level on the sample (in place)."""
        dims = self.dimensions(sample, prior, n_rules)
        s, level = self.score(dims)
        sample.difficulty_score, sample.level = s, level
        sample.difficulty_dims = json.dumps(dims, sort_keys=True)
        return sample

    def state_dict(self) -> dict:
        return {"weights": dict(self.weights), "prior_weight": self.prior_weight,
                "thresholds": list(self.thresholds)}

    def load_state_dict(self, state: dict) -> None:
        self.weights = dict(state["weights"])
        self.prior_weight = float(state["prior_weight"])
        self.thresholds = tuple(state.get("thresholds", self.thresholds))
        self.__post_init__()
