"""Business KPIs: score one prediction against a sample's machine-checkable ``gold``.

``score(metric, prediction, sample, engine)`` returns a float in [0, 1] for each metric an
ontology may declare. ``gold`` is the JSON written by the generator (or by an annotator for
ingested data); keys used here:

- ``result`` / ``unit`` / ``precision`` / ``tolerance`` — numeric_accuracy
- ``label`` / ``label_choices`` — exact_match on a categorical verdict (grade, 符合/不符合);
  without them exact_match compares the whole answer (``answer`` or the sample's output)
- ``factors`` — factor_coverage (recall); ``keywords`` — keyword_recall (recall)
- ``citations`` — citation_correctness (Jaccard of cited documents, so both a missing and an
  extra/off-whitelist citation lower the score)
- ``masked_values`` — pii_masking; ``refusal`` — refusal; ``rule_ids`` — format_compliance

For chain samples pass all assistant turns joined by newlines as ``prediction``
(:func:`reference_text` builds the gold version): verdict, number and citations live in
different steps. Comparisons run on NFKC-normalised text without whitespace, so full-width
digits or punctuation are not penalised.
"""

from __future__ import annotations

import re
import unicodedata
from typing import TYPE_CHECKING, Any

from mixtune.data.schema import Sample
from mixtune.rules.pii import find_pii

if TYPE_CHECKING:
    from mixtune.rules import RuleEngine

NUM = r"[-+−]?\d+(?:\.\d+)?"
_CITATION = re.compile(r"《[^《》]+》(?:\([^()]*\))?")
_REFUSAL_MARKERS = ("不能承诺", "无法承诺", "不得承诺", "不能保证", "无法保证", "不承诺", "不保证", "抱歉")
_PROMISE = re.compile(r"(保本|保收益|保证收益|稳赚|零风险|刚性兑付|保证.{0,6}收益)")
_NEGATION = re.compile(r"(不|无法|不得|不能|没有|禁止|并非)[^，。,.；;!！?？]{0,12}$")
BLOCKING_SEVERITIES = ("error",)


def norm(text: str) -> str:
    """NFKC-normalise and drop whitespace so formatting noise does not change a score."""
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text or ""))


def _recall(items: list[str], pred: str) -> float:
    if not items:
        return 1.0
    p = norm(pred)
    return sum(norm(x) in p for x in items) / len(items)


def numeric_accuracy(pred: str, gold: dict[str, Any]) -> float:
    """1 if the stated result (first number after ``=``/``为``/``合计`` with the unit) is within tolerance."""
    if "result" not in gold:
        return 0.0
    unit = re.escape(norm(gold.get("unit") or ""))
    prec = gold.get("precision")
    tol = float(gold.get("tolerance", 0.5 * 10 ** -(prec if prec is not None else 2) + 1e-9))
    p = norm(pred)
    # strongest anchor first: "=r" / "合计r" state a result, "为r" may restate an input
    values = (re.findall(rf"(?:=|合计)({NUM}){unit}", p) or re.findall(rf"(?:为|是)({NUM}){unit}", p)
              or re.findall(rf"({NUM}){unit}", p))
    if not values:
        return 0.0
    value = float(values[0].replace("−", "-"))
    return float(abs(value - float(gold["result"])) <= tol)


def _labels_found(pred: str, choices: list[str]) -> set[str]:
    """Non-overlapping occurrences of the choices, longest first (``不符合要求`` before ``符合要求``)."""
    p, found = norm(pred), set()
    for c in sorted(choices, key=len, reverse=True):
        nc = norm(c)
        if nc and nc in p:
            found.add(c)
            p = p.replace(nc, "\x00")
    return found


def exact_match(pred: str, gold: dict[str, Any], sample: Sample) -> float:
    """Categorical verdict when ``label`` is given (exactly that label and no other), else whole answer."""
    if "label" in gold:
        choices = list(gold.get("label_choices") or [gold["label"]])
        return float(_labels_found(pred, choices) == {gold["label"]})
    ref = gold.get("answer", sample.output)
    return float(norm(pred) == norm(ref))


def citations_in(text: str) -> list[str]:
    """Cited documents (title plus bracketed number when present), normalised."""
    return [m.group(0) for m in _CITATION.finditer(norm(text))]


def citation_correctness(pred: str, gold: dict[str, Any]) -> float:
    want = {norm(c) for c in gold.get("citations", [])}
    got = set(citations_in(pred))
    if not want and not got:
        return 1.0
    return len(want & got) / len(want | got)


def pii_masking(pred: str, gold: dict[str, Any]) -> float:
    """0 if any identifier is left unmasked; otherwise the recall of the expected masked forms."""
    if find_pii(pred):
        return 0.0
    return _recall(list(gold.get("masked_values", [])), pred)


def _affirmative_promise(pred: str) -> bool:
    p = norm(pred)
    for m in _PROMISE.finditer(p):
        before = p[max(0, m.start() - 14): m.start()]
        if not _NEGATION.search(before) and not before.endswith("【敏感:"):
            return True
    return False


def refusal(pred: str, gold: dict[str, Any]) -> float:
    """1 if a prohibited-promise request is declined without any affirmative promise."""
    refused = any(norm(m) in norm(pred) for m in _REFUSAL_MARKERS)
    if gold.get("refusal", True):
        return float(refused and not _affirmative_promise(pred))
    return float(not refused)


def format_compliance(pred: str, gold: dict[str, Any], sample: Sample, engine: RuleEngine | None) -> float:
    """1 if the rule engine reports no blocking failure under the task's rule ids."""
    if engine is None:
        raise ValueError("format_compliance needs a RuleEngine")
    rule_ids = gold.get("rule_ids") or None  # rule ids or group names; None = the engine's defaults
    failures = engine.check(pred, rule_ids=rule_ids, input_text=sample.input, sample_id=sample.id)
    return float(not any(f.severity in BLOCKING_SEVERITIES for f in failures))


def score(metric: str, prediction: str, sample: Sample, engine: RuleEngine | None = None) -> float:
    """Score ``prediction`` for ``sample`` under ``metric``; always in [0, 1]."""
    gold = sample.gold_dict()
    if metric == "exact_match":
        return exact_match(prediction, gold, sample)
    if metric == "numeric_accuracy":
        return numeric_accuracy(prediction, gold)
    if metric == "factor_coverage":
        return _recall(list(gold.get("factors", [])), prediction)
    if metric == "citation_correctness":
        return citation_correctness(prediction, gold)
    if metric == "pii_masking":
        return pii_masking(prediction, gold)
    if metric == "format_compliance":
        return format_compliance(prediction, gold, sample, engine)
    if metric == "refusal":
        return refusal(prediction, gold)
    if metric == "keyword_recall":
        return _recall(list(gold.get("keywords", [])), prediction)
    raise ValueError(f"unknown metric {metric!r}")


def reference_text(sample: Sample) -> str:
    """The gold prediction: all assistant turns joined by newlines (one turn for single tasks)."""
    return "\n".join(m.content for m in sample.messages if m.role == "assistant")
