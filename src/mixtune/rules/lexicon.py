"""Lexicon-based rule kinds: terminology, sensitive words, uncertainty grade, citations, PII.

Multi-keyword scans use one pyahocorasick automaton per rule. ``Automaton.iter`` reports every
(overlapping) occurrence, so overlaps are resolved here: the longest match wins, ties go to the
leftmost. That is what lets a canonical term shadow a forbidden variant it contains, ``不一定``
(hedged) win over ``一定`` (certain), and ``保本保收益`` be reported once.
"""

from __future__ import annotations

import re
from typing import Any

import ahocorasick
import yaml

from mixtune.rules.checks import Check, Hit, Params, register
from mixtune.rules.normalize import Normalized, normalize_text
from mixtune.rules.pii import PII_KINDS, PII_LABELS, find_pii_normalized


class Lexicon:
    """Words → payloads, matched with Aho–Corasick and resolved longest-match-first."""

    def __init__(self, entries: dict[str, Any]):
        self.automaton = ahocorasick.Automaton()
        for word, payload in entries.items():
            self.automaton.add_word(word, (len(word), word, payload))
        self.empty = not entries
        if not self.empty:
            self.automaton.make_automaton()

    def find(self, text: str) -> list[tuple[int, int, str, Any]]:
        """Non-overlapping ``(start, end, word, payload)`` sorted by start; longest wins."""
        if self.empty or not text:
            return []
        raw = [(end + 1 - n, end + 1, w, pl) for end, (n, w, pl) in self.automaton.iter(text)]
        if len(raw) <= 1:
            return raw
        raw.sort(key=lambda h: (h[0] - h[1], h[0]))  # longest first, then leftmost
        taken = bytearray(len(text))
        kept = []
        for h in raw:
            s, e = h[0], h[1]
            if not any(taken[s:e]):
                taken[s:e] = b"\x01" * (e - s)
                kept.append(h)
        kept.sort(key=lambda h: h[0])
        return kept


def _str_list(p: Params, name: str, default: Any = ...) -> list[str]:
    v = p.get(name, list, default)
    if v is None or not all(isinstance(x, str) and x for x in v):
        raise p.fail(f"param {name!r} must be a list of non-empty strings")
    return [normalize_text(x) for x in v]


def load_glossary(ref: str, p: Params) -> list[dict[str, Any]]:
    """Parse a glossary YAML file (``terms: [{canonical, forbidden: [...]}]``)."""
    try:
        data = yaml.safe_load(p.read_file(ref, "glossary"))
    except yaml.YAMLError as e:
        raise p.fail(f"glossary {ref!r} is not valid YAML: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("terms"), list):
        raise p.fail(f"glossary {ref!r} must be a mapping with a 'terms' list")
    return data["terms"]


@register("terminology")
class TerminologyCheck(Check):
    """Forbidden variants of canonical terms fail with their span (from ``glossary`` or ``terms``)."""

    def __init__(self, p: Params):
        super().__init__(p)
        glossary = p.get("glossary", str, None)
        terms = p.get("terms", list, None)
        if (glossary is None) == (terms is None):
            raise p.fail("give exactly one of 'glossary' (file) or 'terms' (inline list)")
        if glossary is not None:
            terms = load_glossary(glossary, p)
        entries: dict[str, str | None] = {}
        for i, t in enumerate(terms or []):
            if not isinstance(t, dict) or not isinstance(t.get("canonical"), str):
                raise p.fail(f"terms[{i}] must be a mapping with a 'canonical' string")
            canon = normalize_text(t["canonical"])
            if entries.get(canon) is not None:
                raise p.fail(f"term {canon!r} is both canonical and a forbidden variant")
            entries[canon] = None  # canonical: matched so it shadows variants it contains
            for v in t.get("forbidden", []) or []:
                if not isinstance(v, str) or not v:
                    raise p.fail(f"terms[{i}].forbidden must be a list of non-empty strings")
                v = normalize_text(v)
                if v in entries:
                    raise p.fail(f"variant {v!r} is already canonical or forbidden elsewhere")
                entries[v] = canon
        self.lexicon = Lexicon(entries)

    def run(self, out: Normalized, inp: Normalized | None) -> list[Hit]:
        return [
            (f"non-standard term {w!r}; use {canon!r}", (s, e))
            for s, e, w, canon in self.lexicon.find(out.text)
            if canon is not None
        ]


@register("sensitive_words")
class SensitiveWordsCheck(Check):
    """Listed words fail unless quoted inside a marker such as ``【敏感:保本】``."""

    def __init__(self, p: Params):
        super().__init__(p)
        words = _str_list(p, "words", ...)
        if not words:
            raise p.fail("param 'words' must not be empty")
        self.open = normalize_text(p.get("marker_open", str, "【敏感:"))
        self.close = normalize_text(p.get("marker_close", str, "】"))
        if not self.open or not self.close:
            raise p.fail("marker_open and marker_close must be non-empty")
        self.marked = re.compile(f"{re.escape(self.open)}.{{0,60}}?{re.escape(self.close)}", re.DOTALL)
        self.lexicon = Lexicon({w: None for w in words})
        # Cheap pre-filter: no word's first character present → no automaton run at all.
        self.first = re.compile("[" + "".join(sorted({re.escape(w[0]) for w in words})) + "]")

    def unmarked(self, text: str) -> list[tuple[int, int, str]]:
        """Sensitive words in normalised ``text`` that are not inside a marker."""
        if not self.first.search(text):
            return []
        found = self.lexicon.find(text)
        if not found:
            return []
        marks = [m.span() for m in self.marked.finditer(text)] if self.open in text else []
        return [(s, e, w) for s, e, w, _ in found if not any(a <= s and e <= b for a, b in marks)]

    def run(self, out: Normalized, inp: Normalized | None) -> list[Hit]:
        return [
            (f"sensitive word {w!r} must be marked as {self.open}{w}{self.close}", (s, e))
            for s, e, w in self.unmarked(out.text)
        ]


DEFAULT_UNCERTAINTY: dict[int, list[str]] = {
    0: ["必然", "一定", "必将", "毫无疑问", "不可能"],
    1: ["大概率", "很可能", "极有可能", "非常可能"],
    2: ["可能", "或许", "也许", "不一定", "未必"],
    3: ["难以判断", "存在不确定性", "不确定", "尚不明确", "难以预测"],
}
# Phrases containing a hedge word without hedging anything ("to some extent").
DEFAULT_NEUTRAL = ["一定程度", "一定的", "一定比例"]


def _uncertainty_lexicon(levels: dict[int, list[str]], neutral: list[str]) -> Lexicon:
    entries: dict[str, int | None] = {normalize_text(w): None for w in neutral}
    for lvl, words in levels.items():
        entries.update({normalize_text(w): lvl for w in words})
    return Lexicon(entries)


_DEFAULT_LEXICON: Lexicon | None = None


def uncertainty_marks(text: str, lexicon: Lexicon | None = None) -> list[tuple[int, int, int]]:
    """Hedging expressions in normalised ``text`` as ``(start, end, level)``."""
    global _DEFAULT_LEXICON
    if lexicon is None:
        if _DEFAULT_LEXICON is None:
            _DEFAULT_LEXICON = _uncertainty_lexicon(DEFAULT_UNCERTAINTY, DEFAULT_NEUTRAL)
        lexicon = _DEFAULT_LEXICON
    return [(s, e, lvl) for s, e, _w, lvl in lexicon.find(text) if lvl is not None]


def uncertainty_grade(text: str) -> int | None:
    """Most assertive hedging level in ``text`` (0 certain … 3 uncertain), None if none.

    Levels follow the domain file: 0 必然/一定, 1 大概率/很可能, 2 可能/或许, 3 难以判断/存在不确定性.
    """
    marks = uncertainty_marks(normalize_text(text))
    return min(lvl for _s, _e, lvl in marks) if marks else None


@register("uncertainty")
class UncertaintyCheck(Check):
    """Every hedging expression's level lies in ``[allowed_min, allowed_max]``."""

    def __init__(self, p: Params):
        super().__init__(p)
        self.lo = p.get("allowed_min", int, 0)
        self.hi = p.get("allowed_max", int, 3)
        if not 0 <= self.lo <= self.hi <= 3:
            raise p.fail("need 0 <= allowed_min <= allowed_max <= 3")
        self.required = p.get("required", bool, False)
        levels = p.get("levels", dict, None)
        neutral = _str_list(p, "neutral", list(DEFAULT_NEUTRAL))
        if levels is not None:
            if not all(isinstance(k, int) and 0 <= k <= 3 and isinstance(v, list) for k, v in levels.items()):
                raise p.fail("param 'levels' must map levels 0..3 to lists of expressions")
            self.lexicon = _uncertainty_lexicon(levels, neutral)
        else:
            self.lexicon = _uncertainty_lexicon(DEFAULT_UNCERTAINTY, neutral)

    def run(self, out: Normalized, inp: Normalized | None) -> list[Hit]:
        marks = uncertainty_marks(out.text, self.lexicon)
        if self.required and not marks:
            return [("no uncertainty expression found; one is required", None)]
        return [
            (f"uncertainty level {lvl} ({out.text[s:e]!r}) outside allowed {self.lo}..{self.hi}", (s, e))
            for s, e, lvl in marks
            if not self.lo <= lvl <= self.hi
        ]


_TITLE = re.compile(r"《([^《》\n]{1,60})》")
# Document numbers as written after normalisation: (…令2018年第3号) or 银发〔2018〕106号.
_ORDER_NO = re.compile(r"\(([^()\n]{1,40}?令\s*\d{4}\s*年\s*第\s*\d+\s*号)\)")
_BRACKET_NO = re.compile(r"([\u4e00-\u9fff]{1,8}\s*[〔\[［]\s*\d{4}\s*[〕\]］]\s*\d+\s*号)")


def _number_key(s: str) -> str:
    return re.sub(r"\s+", "", normalize_text(s)).strip("()").replace("[", "〔").replace("]", "〕")


@register("citation_whitelist")
class CitationWhitelistCheck(Check):
    """Cited titles 《…》 and document numbers must be on the whitelist; ``min_citations`` counts
    whitelisted documents cited by full title (and their number, when ``require_number``)."""

    def __init__(self, p: Params):
        super().__init__(p)
        self.titles: dict[str, str | None] = {}
        for i, d in enumerate(p.get("documents", list, required=True)):
            if not isinstance(d, dict) or not isinstance(d.get("title"), str) or set(d) - {"title", "number"}:
                raise p.fail(f"documents[{i}] must be a mapping with 'title' and optional 'number'")
            num = d.get("number")
            if num is not None and not isinstance(num, str):
                raise p.fail(f"documents[{i}].number must be a string")
            self.titles[normalize_text(d["title"]).strip("《》")] = _number_key(num) if num else None
        self.numbers = {n: t for t, n in self.titles.items() if n}
        self.min_citations = p.get("min_citations", int, 0)
        self.require_number = p.get("require_number", bool, True)

    def run(self, out: Normalized, inp: Normalized | None) -> list[Hit]:
        text = out.text
        hits: list[Hit] = []
        numbers = [(m.span(1), _number_key(m.group(1))) for m in _ORDER_NO.finditer(text)]
        numbers += [(m.span(1), _number_key(m.group(1))) for m in _BRACKET_NO.finditer(text)]
        for (s, e), key in numbers:
            if key not in self.numbers:
                hits.append((f"document number {text[s:e]!r} is not on the whitelist", (s, e)))
        cited: set[str] = set()
        for m in _TITLE.finditer(text):
            title = m.group(1)
            if title not in self.titles:
                hits.append((f"document 《{title}》 is not on the whitelist", m.span()))
                continue
            expected = self.titles[title]
            # The number, if any, directly follows the title (allowing a space).
            follow = [(sp, k) for sp, k in numbers if m.end() <= sp[0] <= m.end() + 3]
            if follow and expected and follow[0][1] in self.numbers and follow[0][1] != expected:
                sp = follow[0][0]
                hits.append((f"document number {text[sp[0]:sp[1]]!r} does not belong to 《{title}》", sp))
            elif expected is None or not self.require_number or (follow and follow[0][1] == expected):
                cited.add(title)
        if len(cited) < self.min_citations:
            hits.append((f"cites {len(cited)} whitelisted document(s) with title and number, "
                         f"needs at least {self.min_citations}", None))
        return hits


@register("pii")
class PiiCheck(Check):
    """Unmasked ID card, mobile or bank card numbers fail with their span."""

    def __init__(self, p: Params):
        super().__init__(p)
        kinds = p.get("kinds", list, list(PII_KINDS))
        bad = set(kinds) - set(PII_KINDS)
        if bad:
            raise p.fail(f"unknown PII kind(s) {sorted(bad)}; allowed: {list(PII_KINDS)}")
        self.kinds = frozenset(kinds)

    def run(self, out: Normalized, inp: Normalized | None) -> list[Hit]:
        return [
            (f"unmasked {PII_LABELS[k]}", (s, e))
            for s, e, k in find_pii_normalized(out.text)
            if k in self.kinds
        ]
