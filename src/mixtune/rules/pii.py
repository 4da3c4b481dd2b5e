"""Detection and masking of personal identifiers (ID card, mobile, bank card numbers, e-mail addresses).

Detection runs on normalised text (so full-width digits and zero-width characters hidden inside
a number do not evade it) and reports spans in original coordinates. Masked forms keep the first
3 and last 4 digits (``110***********1234``, ``138****5678``); since ``*`` breaks the digit run,
masked numbers are never detected again. Written variants count too: a mobile number in 3-4-4
groups (``138 1234 5678``, ``138-1234-5678``), with a ``+86``/``86`` prefix (the prefix is kept,
the number masked) or glued to a phone word (``Tel13812345678``); an ID number in 6-8-4 groups
(``110101 19900307 1234``). E-mail addresses keep their first character and domain
(``z***@example.com``).
"""

from __future__ import annotations

import re

from mixtune.rules.normalize import Normalized, normalize

# Boundaries: not glued to other digits/letters, and not part of a decimal number (an amount).
_L = r"(?<![0-9A-Za-z.])"
_R = r"(?![0-9A-Za-z]|\.\d)"
_SEP = r"[ -]?"
# 18-char resident ID: 6-digit region, birth date 18xx-20xx, 3-digit sequence, check digit/X;
# optionally written in 6-8-4 groups.
_ID_CARD = (rf"[1-9]\d{{5}}{_SEP}(?:18|19|20)\d{{2}}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01]){_SEP}"
            r"\d{3}[\dXx]")
_MOBILE = rf"1[3-9]\d{_SEP}\d{{4}}{_SEP}\d{{4}}"
# A mobile number may follow a phone word directly ("Tel13812345678"); any other letter before it
# means it is part of a code ("编号A13800138000"), not a phone number.
_PHONE_WORDS = ("tel", "Tel", "TEL", "phone", "Phone", "PHONE", "mobile", "Mobile", "MOBILE", "mob", "Mob")
_L_MOBILE = "(?:" + "|".join(f"(?<={w})" for w in _PHONE_WORDS) + f"|{_L})"
# Bank cards: 16-19 digits, contiguous or in groups of four separated by single spaces/hyphens.
_BANK_CARD = r"\d{16,19}|\d{4}(?:[ -]\d{4}){3}(?:[ -]?\d{1,3})?"
# E-mail: starts at the beginning of its run (the lookbehind keeps scanning linear on long words).
_EMAIL = r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,24}"
_PII_RE = re.compile(
    f"{_L}(?P<id_card>{_ID_CARD}){_R}"
    f"|{_L_MOBILE}(?:\\+?86[ -]?)?(?P<mobile>{_MOBILE}){_R}"
    f"|{_L}(?P<bank_card>{_BANK_CARD}){_R}"
    f"|(?P<email>{_EMAIL})(?![A-Za-z0-9-])"
)
_QUICK = re.compile(r"\d{11}|\d{3,4}[ -]\d{4}|@")  # every PII form contains one of these

PII_KINDS = ("id_card", "mobile", "bank_card", "email")
PII_LABELS = {"id_card": "ID card number", "mobile": "mobile number", "bank_card": "bank card number",
              "email": "e-mail address"}


def find_pii_normalized(text: str) -> list[tuple[int, int, str]]:
    """Unmasked identifiers in already-normalised ``text``: ``(start, end, kind)``."""
    if not _QUICK.search(text):
        return []
    # the named group's span: a "+86" prefix or a phone word stays readable, only the identifier is masked
    return [(*m.span(m.lastgroup), m.lastgroup) for m in _PII_RE.finditer(text) if m.lastgroup]


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


def mask_email(value: str) -> str:
    """``zhang.san@example.com`` -> ``z***@example.com`` (the domain stays: it says which provider)."""
    local, _, domain = value.partition("@")
    return f"{local[:1]}***@{domain}"


def mask_pii(text: str) -> str:
    """Return ``text`` with every unmasked ID card, mobile, bank card number and e-mail address masked.

    Replacement happens in the original text (everything else is left exactly as written);
    the digits come from the normalised form, so ``１３８…`` becomes ``138****…``.
    """
    nt = normalize(text)
    hits = find_pii_normalized(nt.text)
    if not hits:
        return text
    pieces: list[str] = []
    pos = 0
    for s, e, kind in hits:
        os_, oe = nt.span_to_orig(s, e)
        pieces.append(text[pos:os_])
        pieces.append(mask_email(nt.text[s:e]) if kind == "email" else mask_digits(nt.text[s:e]))
        pos = oe
    pieces.append(text[pos:])
    return "".join(pieces)
