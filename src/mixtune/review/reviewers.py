"""Reviewers: who may review what, authenticated by token.

A reviewers file (YAML or JSON) lists each reviewer once::

    reviewers:
      - id: alice
        token_sha256: 5e88...      # sha256 hex of the token; the file never holds the token itself
        qualifications: [calc, concept]   # task families (or "*" for all)
        adjudicator: false
        kind: human                # or "simulated": every verdict it gives is labelled so

Tokens are random secrets handed to each reviewer (``mixtune review token`` makes one and
prints its hash), so an unsalted SHA-256 is enough; lookups compare digests with
:func:`hmac.compare_digest` against every reviewer so timing does not reveal a near match.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

import yaml

from mixtune.errors import ConfigError, MixtuneError

_KEYS = {"id", "token_sha256", "qualifications", "adjudicator", "kind", "name"}


class AuthError(MixtuneError):
    """Missing or unknown token (HTTP 401)."""

    status = 401


class ForbiddenError(MixtuneError):
    """Known reviewer without the qualification the item needs (HTTP 403)."""

    status = 403


@dataclass(frozen=True)
class Reviewer:
    """One reviewer; ``qualifications`` are task families (``*`` = every family)."""

    id: str
    token_sha256: str
    qualifications: tuple[str, ...] = ()
    adjudicator: bool = False
    kind: str = "human"
    name: str = ""

    def qualified(self, family: str) -> bool:
        return "*" in self.qualifications or family in self.qualifications


def hash_token(token: str) -> str:
    """Hex SHA-256 of a token, as stored in the reviewers file."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh random reviewer token (URL-safe, 256 bits)."""
    return secrets.token_urlsafe(32)


class Reviewers:
    """The reviewer registry: authenticate tokens, check qualifications."""

    def __init__(self, reviewers: list[Reviewer]):
        ids = [r.id for r in reviewers]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ConfigError(f"duplicate reviewer id(s) {dup}")
        self.by_id = {r.id: r for r in reviewers}

    @classmethod
    def load(cls, path: str | Path) -> Reviewers:
        """Read a YAML/JSON reviewers file; errors name the file and the entry."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8-sig")
            raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read reviewers file: {e}", where=str(path)) from None
        return cls.from_data(raw, source=str(path))

    @classmethod
    def from_data(cls, raw: object, source: str = "<reviewers>") -> Reviewers:
        """Validate parsed data: ``{reviewers: [...]}`` or a bare list."""
        items = raw.get("reviewers") if isinstance(raw, dict) else raw
        if not isinstance(items, list) or not items:
            raise ConfigError("expected a non-empty list under 'reviewers'", where=source)
        out = []
        for i, d in enumerate(items):
            where = f"{source}: reviewers[{i}]"
            if not isinstance(d, dict):
                raise ConfigError("each reviewer must be a mapping", where=where)
            if "token" in d:
                raise ConfigError("holds a plain 'token'; store only 'token_sha256' "
                                  "(`mixtune review token` prints both)", where=where)
            unknown = set(d) - _KEYS
            if unknown:
                raise ConfigError(f"unknown key(s) {sorted(unknown)}; allowed: {sorted(_KEYS)}", where=where)
            rid, digest = d.get("id"), str(d.get("token_sha256", "")).lower()
            if not isinstance(rid, str) or not rid:
                raise ConfigError("needs a non-empty string 'id'", where=where)
            if len(digest) != 64 or any(ch not in "0123456789abcdef" for ch in digest):
                raise ConfigError(f"reviewer {rid!r}: token_sha256 must be 64 hex characters", where=where)
            quals = d.get("qualifications", [])
            if isinstance(quals, str):
                quals = [quals]
            kind = d.get("kind", "human")
            if kind not in ("human", "simulated"):
                raise ConfigError(f"reviewer {rid!r}: kind must be human or simulated, got {kind!r}", where=where)
            out.append(Reviewer(rid, digest, tuple(str(q) for q in quals), bool(d.get("adjudicator", False)),
                                kind, str(d.get("name", ""))))
        return cls(out)

    def authenticate(self, token: str | None) -> Reviewer:
        """The reviewer holding ``token``; a missing or unknown token raises :class:`AuthError`."""
        if not token:
            raise AuthError("missing reviewer token (send 'Authorization: Bearer <token>' or log in)")
        digest = hash_token(token)
        found = None
        for r in self.by_id.values():  # no early exit: every comparison takes the same time
            if hmac.compare_digest(digest, r.token_sha256):
                found = r
        if found is None:
            raise AuthError("unknown reviewer token")
        return found

    def require(self, reviewer: Reviewer, family: str, *, adjudication: bool = False) -> None:
        """Raise :class:`ForbiddenError` unless ``reviewer`` may judge items of ``family``."""
        if not reviewer.qualified(family):
            raise ForbiddenError(f"reviewer {reviewer.id!r} is not qualified for task family {family!r} "
                                 f"(qualifications: {list(reviewer.qualifications)})")
        if adjudication and not reviewer.adjudicator:
            raise ForbiddenError(f"reviewer {reviewer.id!r} is not an adjudicator")


def reviewers_file_entry(rid: str, token: str, qualifications: list[str], adjudicator: bool = False,
                         kind: str = "human") -> dict:
    """A reviewers-file entry for ``token`` (helper for setup scripts and tests)."""
    return {"id": rid, "token_sha256": hash_token(token), "qualifications": qualifications,
            "adjudicator": adjudicator, "kind": kind}
