"""Detection and masking of personal identifiers (ID card, mobile, bank card numbers).

Detection runs on normalised text (so full-width digits and zero-width characters hidden inside
a number do not evade it) and reports spans in original coordinates. Masked forms keep the first
3 and last 4 digits (``110***********1234``, ``138****5678``); since ``*`` breaks the digit run,
masked numbers are never detected again.
"""

from __future__ import annotations

import re

from mixtune.rules.normalize import Normalized, normalize

# Boundaries: not glued to other digits/letters, and not part of a decimal number (an amount).
_L = r"(?<![0-9A-Za-z.])"
_R = r"(?![0-9A-Za-z]|\.\d)"
# 18-char resident ID: 6-digit region, birth date 18xx-20xx, 3-digit sequence, check digit/X.
_ID_CARD = r"[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx]"
_MOBILE = r"1[3-9]\d{9}"
# Bank cards: 16-19 digits, contiguous or in groups of four separated by single spaces/hyphens.
_BANK_CARD = r"\d{16,19}|\d{4}(?:[ -]\d{4}){3}(?:[ -]?\d{1,3})?"
_PII_RE = re.compile(
    f"{_L}(?:(?P<id_card>{_ID_CARD})|(?P<mobile>{_MOBILE})|(?P<bank_card>{_BANK_CARD})){_R}"
)
_QUICK = re.compile(r"\d{11}|\d{4}[ -]\d{4}")  # every PII form contains one of these

PII_KINDS = ("id_card", "mobile", "bank_card")
PII_LABELS = {"id_card": "ID card number", "mobile": "mobile number", "bank_card": "bank card number"}


def find_pii_normalized(text: str) -> list[tuple[int, int, str]]:
    """Unmasked identifiers in already-normalised ``text``: ``(start, end, kind)``."""
    if not _QUICK.search(text):
        return []
    return [(m.start(), m.end(), m.lastgroup or "") for m in _PII_RE.finditer(text)]


def find_pii(text: str | Normalized) -> list[tuple[int, int, str]]:
    """Unmasked identifiers in ``text`` with spans in ORIGINAL coordinates."""
    nt = text if isinstance(text, Normalized) else normalize(text)
    out = []
    for s, e, kind in find_pii_normalized(nt.text):
        os_, oe = nt.span_to_orig(s, e)
        out.append((os_, oe, kind))
    return out


def mask_digits(value: str, keep_head: int = 3, keep_tail: int = 4) -> str:
    """Mask an identifier keeping its first ``keep_head`` and last ``keep_tail`` characters."""
    chars = [c for c in value if c.isalnum()]
    if len(chars) <= keep_head + keep_tail:
        return "*" * len(chars)
    return "".join(chars[:keep_head]) + "*" * (len(chars) - keep_head - keep_tail) + "".join(chars[-keep_tail:])


def mask_pii(text: str) -> str:
    """Return ``text`` with every unmasked ID card, mobile and bank card number masked.

    Replacement happens in the original text (everything else is left exactly as written);
    the digits come from the normalised form, so ``１３８…`` becomes ``138****…``.
    """
    nt = normalize(text)
    hits = find_pii_normalized(nt.text)
    if not hits:
        return text
    pieces: list[str] = []
    pos = 0
    for s, e, _kind in hits:
        os_, oe = nt.span_to_orig(s, e)
        pieces.append(text[pos:os_])
        pieces.append(mask_digits(nt.text[s:e]))
        pos = oe
    pieces.append(text[pos:])
    return "".join(pieces)
