"""Load-time check that a user regex cannot backtrack catastrophically.

Python's ``re`` backtracks, so ``(a+)+$`` on ``"a" * 27 + "b"`` takes seconds (×4 per two more
characters). Rules run on every model output, so such a pattern in ``rules.yaml`` is refused when
the rule set loads rather than discovered as a hung evaluation. The check walks the parsed
pattern and rejects an unbounded (or large, > :data:`LARGE` times) repetition whose body can match
the same text in more than one way:

* a nested large repetition that is not separated from the rest of the body by a mandatory
  element it cannot consume: ``(a+)+``, ``(.*)*``, ``(a*b?)*``, ``(a+a)*``, ``(\\s*\\S+)*`` — but
  ``(\\d+,)*`` is fine, the comma splits the iterations unambiguously;
* an alternation whose branches can start with the same character: ``(a|a)*``, ``(a|ab)+``.

It is a conservative heuristic (it may refuse a rare pattern that is in fact linear, which can
be rewritten, e.g. with a possessive ``++`` or an atomic group); it never has to run the regex.
Character sets are compared on a probe alphabet: every literal in the pattern plus a
representative of each character class.
"""

from __future__ import annotations

import re

try:  # Python ≥ 3.11 moved the parser; both are stdlib, just private
    from re import _constants as _c
    from re import _parser as _p
except ImportError:  # pragma: no cover - Python 3.10
    import sre_constants as _c  # type: ignore[no-redef]
    import sre_parse as _p  # type: ignore[no-redef]

LARGE = 32  # {m,n} repetitions above this backtrack like unbounded ones
_PROBES = "0 9aZz_\t\n\r,.;:-+%$#@!?()[]{}<>/\\'\"=*&|^~`中。，"
_CATEGORY = {
    "CATEGORY_DIGIT": r"\d", "CATEGORY_NOT_DIGIT": r"\D", "CATEGORY_SPACE": r"\s",
    "CATEGORY_NOT_SPACE": r"\S", "CATEGORY_WORD": r"\w", "CATEGORY_NOT_WORD": r"\W",
}
_REPEATS = {"MAX_REPEAT", "MIN_REPEAT"}  # POSSESSIVE_REPEAT never backtracks into its body


class UnsafeRegex(ValueError):
    """The pattern can backtrack exponentially; the message says which part and why."""


def _name(op) -> str:
    return str(op)


def _in_class(items, ch: str) -> bool:
    negate, hit = False, False
    for op, av in items:
        n = _name(op)
        if n == "NEGATE":
            negate = True
        elif n == "LITERAL":
            hit |= ch == chr(av)
        elif n == "RANGE":
            hit |= av[0] <= ord(ch) <= av[1]
        elif n == "CATEGORY":
            rx = _CATEGORY.get(_name(av))
            hit |= rx is None or re.fullmatch(rx, ch) is not None  # unknown category: assume it matches
        else:  # anything unexpected: conservatively "may match"
            hit = True
    return hit != negate


class _Analyzer:
    def __init__(self, tree, source: str):
        self.source = source
        lits = set()
        for op, av in _walk(tree):
            for o, a in (av if _name(op) == "IN" else [(op, av)]):
                if _name(o) in ("LITERAL", "NOT_LITERAL"):
                    lits.add(chr(a))
                elif _name(o) == "RANGE":
                    lits.update((chr(a[0]), chr(a[1])))
        self.universe = frozenset(_PROBES) | lits

    # chars(seq): every character the subpattern can consume; first(seq): those it can start with
    def chars(self, seq) -> frozenset[str]:
        out: set[str] = set()
        for op, av in seq:
            out |= self._item_chars(op, av, first=False)[0]
        return frozenset(out)

    def first(self, seq) -> tuple[frozenset[str], bool]:
        """(first characters, nullable) of a sequence."""
        out: set[str] = set()
        for op, av in seq:
            f, nullable = self._item_chars(op, av, first=True)
            out |= f
            if not nullable:
                return frozenset(out), False
        return frozenset(out), True

    def _item_chars(self, op, av, *, first: bool) -> tuple[frozenset[str], bool]:
        n, u = _name(op), self.universe
        sub = self.first if first else (lambda s: (self.chars(s), self.nullable(s)))
        if n == "LITERAL":
            return frozenset({chr(av)}), False
        if n == "NOT_LITERAL":
            return u - {chr(av)}, False
        if n == "ANY":
            return u, False
        if n == "IN":
            return frozenset(c for c in u if _in_class(av, c)), False
        if n == "CATEGORY":
            return frozenset(c for c in u if _in_class([(op, av)], c)), False
        if n in ("AT", "ASSERT", "ASSERT_NOT"):
            return frozenset(), True
        if n == "SUBPATTERN":
            return sub(av[-1])
        if n == "ATOMIC_GROUP":
            return sub(av)
        if n in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            chars, nullable = sub(av[2])
            return chars, nullable or av[0] == 0
        if n == "BRANCH":
            parts = [sub(b) for b in av[1]]
            return frozenset().union(*(p[0] for p in parts)), any(p[1] for p in parts)
        return u, True  # back-references, conditionals: could be anything

    def nullable(self, seq) -> bool:
        return self.first(seq)[1]

    def check(self, seq) -> None:
        for op, av in seq:
            n = _name(op)
            if n in _REPEATS or n == "POSSESSIVE_REPEAT":
                lo, hi, body = av
                if n in _REPEATS and (hi == _c.MAXREPEAT or hi > LARGE):
                    self._check_loop_body(body)
                self.check(body)
            elif n == "SUBPATTERN":
                self.check(av[-1])
            elif n == "ATOMIC_GROUP":
                self.check(av)
            elif n == "BRANCH":
                for b in av[1]:
                    self.check(b)
            elif n in ("ASSERT", "ASSERT_NOT"):
                self.check(av[1])

    def _check_loop_body(self, body) -> None:
        # 1. an alternation inside the loop whose branches overlap
        for op, av in _walk(body):
            if _name(op) == "BRANCH":
                firsts = [self.first(b) for b in av[1]]
                for i, (fi, ni) in enumerate(firsts):
                    for fj, nj in firsts[i + 1:]:
                        if fi & fj or ni or nj:
                            raise UnsafeRegex("an alternation inside a repeated group has overlapping "
                                              "branches (like (a|a)* or (a|ab)+)")
        if self.nullable(body):
            if any(_name(op) in _REPEATS for op, _ in _walk(body)):
                raise UnsafeRegex("a repeated group can match the empty string and contains another "
                                  "quantifier (like (a*)* or (.*)*)")
            return
        # 2. a nested large repetition not separated by a mandatory element it cannot consume
        for op, av in _walk(body):
            if _name(op) in _REPEATS and av[1] != av[0]:  # variable width: (\d{1,3})+ splits many ways
                inner = self.chars(av[2])
                separated = any(
                    not self._item_chars(o, a, first=False)[1] and not (self.chars([(o, a)]) & inner)
                    for o, a in _top_items(body))
                if not separated:
                    raise UnsafeRegex("nested quantifiers: a repeated group contains another unbounded "
                                      "quantifier over the same characters (like (a+)+ or (.*,)*)")


def _walk(seq):
    """Every (op, av) node in a parsed sequence, depth first."""
    for op, av in seq:
        yield op, av
        n = _name(op)
        if n == "SUBPATTERN":
            yield from _walk(av[-1])
        elif n in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            yield from _walk(av[2])
        elif n == "ATOMIC_GROUP":
            yield from _walk(av)
        elif n == "BRANCH":
            for b in av[1]:
                yield from _walk(b)
        elif n in ("ASSERT", "ASSERT_NOT"):
            yield from _walk(av[1])


def _top_items(seq):
    """Top-level items of a loop body, looking through plain groups (``((a+)b)``)."""
    for op, av in seq:
        if _name(op) == "SUBPATTERN":
            yield from _top_items(av[-1])
        else:
            yield op, av


def check_regex_safety(pattern: str, flags: int = 0) -> None:
    """Raise :class:`UnsafeRegex` if ``pattern`` can backtrack exponentially (see module doc).

    ``pattern`` must already compile; this only inspects its structure.
    """
    tree = _p.parse(pattern, flags)
    _Analyzer(tree, pattern).check(tree)
