"""Text normalisation with an offset map back to the original text.

Every check runs on normalised text — NFKC (which also folds full-width ASCII, the ideographic
space and full-width punctuation such as ``，：％（）＝`` to their half-width forms) with zero-width
characters (U+200B..U+200D, U+FEFF, U+2060) removed — so that ``流动性覆盖率＝１５０.００％`` and a
mobile number with a zero-width space inside are seen for what they are. Reported spans must still
point into the text the user wrote, so :class:`Normalized` keeps a sparse map of the pieces that
changed and translates spans back.

Normalisation is done per cluster (a character plus following combining marks), which equals
whole-string NFKC except for rare cross-cluster compositions (conjoining Hangul jamo).
"""

from __future__ import annotations

import re
import sys
import unicodedata
from bisect import bisect_right

ZERO_WIDTH = "\u200b\u200c\u200d\ufeff\u2060"
_ZW_RE = re.compile(f"[{ZERO_WIDTH}]")
# Built lazily: scanning all code points takes ~0.2 s. Two patterns because a character class
# holding only BMP code points compiles to a bitmap (O(1) per char) while one with astral
# ranges is scanned range by range (~15x slower); the astral one runs only on astral text.
_PATTERNS: tuple[re.Pattern[str], re.Pattern[str], frozenset[str], dict[int, str]] | None = None
_CHUNK_CACHE: dict[str, str] = {}
_CHUNK_CACHE_MAX = 8192


def _ranges_class(cps: list[int]) -> str:
    """Compress sorted code points into a regex character class body."""
    parts: list[str] = []
    i = 0
    while i < len(cps):
        j = i
        while j + 1 < len(cps) and cps[j + 1] == cps[j] + 1:
            j += 1
        lo, hi = cps[i], cps[j]
        parts.append(re.escape(chr(lo)) if lo == hi else f"{re.escape(chr(lo))}-{re.escape(chr(hi))}")
        i = j + 1
    return "".join(parts)


def _patterns() -> tuple[re.Pattern[str], re.Pattern[str], frozenset[str], dict[int, str]]:
    """(BMP runs regex, all-planes runs regex, combining marks, one-to-one translate table)."""
    global _PATTERNS
    if _PATTERNS is None:
        cps: list[int] = []
        marks: list[str] = []
        one_to_one: dict[int, str] = {}
        zw = {ord(c) for c in ZERO_WIDTH}
        for cp in range(sys.maxunicode + 1):
            if 0xD800 <= cp <= 0xDFFF:
                continue
            c = chr(cp)
            is_mark = unicodedata.combining(c) != 0
            if is_mark:
                marks.append(c)
            if is_mark or cp in zw or not unicodedata.is_normalized("NFKC", c):
                cps.append(cp)
                n = unicodedata.normalize("NFKC", c)
                if not is_mark and cp not in zw and len(n) == 1 and not unicodedata.combining(n):
                    one_to_one[cp] = n
        bmp = re.compile(f"[{_ranges_class([c for c in cps if c < 0x10000])}]+")
        full = re.compile(f"[{_ranges_class(cps)}]+")
        _PATTERNS = (bmp, full, frozenset(marks), one_to_one)
    return _PATTERNS


def _clusters(text: str, s: int, e: int, marks: frozenset[str], floor: int) -> list[tuple[int, int]]:
    """Split a run ``text[s:e]`` of changing chars into clusters (char + following marks).

    A run that starts with a mark takes the preceding base character along (it may compose
    with it), unless that character was already consumed (``floor``).
    """
    if text[s] in marks and s > floor:
        s -= 1
    out: list[tuple[int, int]] = []
    i = s
    while i < e:
        j = i + 1
        while j < e and text[j] in marks:
            j += 1
        out.append((i, j))
        i = j
    return out


def _norm_chunk(chunk: str) -> str:
    out = _CHUNK_CACHE.get(chunk)
    if out is None:
        out = _ZW_RE.sub("", unicodedata.normalize("NFKC", chunk))
        if len(_CHUNK_CACHE) < _CHUNK_CACHE_MAX:
            _CHUNK_CACHE[chunk] = out
    return out


class Normalized:
    """Normalised text plus the map from its positions back to the original text.

    ``text`` is what checks see; :meth:`span_to_orig` converts a ``[start, end)`` span on
    ``text`` into original coordinates. Unchanged stretches map one to one; a span edge inside a
    changed cluster widens to the whole original cluster.
    """

    __slots__ = ("original", "text", "_ns", "_ne", "_os", "_oe")

    def __init__(self, original: str, text: str, chunks: list[tuple[int, int, int, int]] | None = None):
        self.original = original
        self.text = text
        chunks = chunks or []
        self._ns = [c[0] for c in chunks]
        self._ne = [c[1] for c in chunks]
        self._os = [c[2] for c in chunks]
        self._oe = [c[3] for c in chunks]

    @property
    def identity(self) -> bool:
        """True when every offset is unchanged (spans need no mapping; text may differ 1:1)."""
        return not self._ns

    def _start(self, j: int) -> int:
        k = bisect_right(self._ns, j) - 1
        if k < 0:
            return j
        if j < self._ne[k]:
            return self._os[k]
        return j - self._ne[k] + self._oe[k]

    def _end(self, e: int) -> int:
        j = e - 1  # last included character
        k = bisect_right(self._ns, j) - 1
        if k < 0:
            return e
        if j < self._ne[k]:
            return self._oe[k]
        return j - self._ne[k] + self._oe[k] + 1

    def span_to_orig(self, start: int, end: int) -> tuple[int, int]:
        """Map a span on the normalised text to the original text."""
        if not self._ns:
            return start, end
        s = self._start(start)
        if end <= start:
            return s, s
        return s, max(s, self._end(end))


def normalize(text: str) -> Normalized:
    """Normalise ``text`` (NFKC, full→half width, zero-width removed) keeping an offset map.

    Fast paths: ASCII text is returned untouched. Typical Chinese text only needs one-to-one
    substitutions (full-width ``，：（）％`` and digits → half-width), which keep every offset, so
    a few C-level ``str.replace`` calls suffice and no map is built. Only text with deletions
    (zero-width), expansions (``㎡`` → ``m2``) or combining marks takes the clustered path.
    """
    if text.isascii():
        return Normalized(text, text)
    bmp_re, full_re, marks, table = _patterns()
    pattern = full_re if max(text) > "\uffff" else bmp_re
    runs = pattern.findall(text)
    if not runs:
        return Normalized(text, text)
    changed = set("".join(runs))
    if all(ord(c) in table for c in changed):
        folded = text
        for c in changed:
            folded = folded.replace(c, table[ord(c)])
        return Normalized(text, folded)
    pieces: list[str] = []
    chunks: list[tuple[int, int, int, int]] = []
    orig_pos = 0
    norm_pos = 0
    for m in pattern.finditer(text):
        for s, e in _clusters(text, m.start(), m.end(), marks, orig_pos):
            out = _norm_chunk(text[s:e])
            if out == text[s:e]:  # e.g. a digit + combining mark: stays part of the next gap
                continue
            if s > orig_pos:
                pieces.append(text[orig_pos:s])
                norm_pos += s - orig_pos
            pieces.append(out)
            chunks.append((norm_pos, norm_pos + len(out), s, e))
            norm_pos += len(out)
            orig_pos = e
    pieces.append(text[orig_pos:])
    return Normalized(text, "".join(pieces), chunks)


def normalize_text(text: str) -> str:
    """Return the normalised form of ``text`` (what every rule checks)."""
    return normalize(text).text
