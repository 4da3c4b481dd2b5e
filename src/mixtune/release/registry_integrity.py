"""Integrity primitives of the model registry: weights hashes, the registry key, evidence
signatures, the audit hash chain and the append-only triggers.

* **Weights hash** — SHA-256 over the weight and adapter files of a model folder (name + content
  hash of each, sorted), so gate evidence is bound to the exact bytes that were evaluated.
* **Registry key** — HMAC-SHA256 key that signs gate evidence the registry recorded. From the
  ``key`` argument, else ``MIXTUNE_REGISTRY_KEY``, else (SQLite files only) a key file
  ``<db>.key`` created with mode 0600 beside the database. Without one (e.g. PostgreSQL with no
  env key) evidence is still accepted when it is recorded in the registry, just not when signed.
* **Hash chain** — every audit row stores ``prev_hash`` and ``row_hash = sha256(prev_hash + "\\n" +
  canonical JSON of the row)``; rewriting, deleting or reordering a row breaks the chain.
* **Triggers** — the database refuses UPDATE/DELETE (and TRUNCATE on PostgreSQL) on ``audit_log``;
  they are checked and recreated on every open, and a missing or altered one is reported.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

from mixtune.errors import ConfigError
from mixtune.jsonl import sha256_file

GENESIS = "0" * 64
KEY_ENV = "MIXTUNE_REGISTRY_KEY"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack", ".onnx")
WEIGHT_NAMES = ("adapter_config.json",)  # changes what an adapter does, so it is part of "the weights"
APPEND_ONLY = "audit_log is append-only"



def weights_digest(path: str | Path) -> str:
    """SHA-256 over a model's weight/adapter files (or the file itself); OSError/ValueError if
    the path is missing or holds no weight file."""
    root = Path(path)
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.is_file()
                       and (p.name.endswith(WEIGHT_SUFFIXES) or p.name in WEIGHT_NAMES))
        if not files:
            raise ValueError(f"no weight files ({', '.join('*' + s for s in WEIGHT_SUFFIXES[:4])}, ...) in {root}")
    else:
        raise FileNotFoundError(f"model path does not exist: {root}")
    h = hashlib.sha256()
    for f in files:
        rel = f.name if f == root else f.relative_to(root).as_posix()
        h.update(f"{rel}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def canonical(obj: Any) -> bytes:
    """Deterministic JSON bytes (sorted keys, no spaces) used for hashes and signatures."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


# ---- key and signatures -----------------------------------------------------------------------
def load_key(url: str, key: str | bytes | None) -> bytes | None:
    """The registry's HMAC key (see module doc), creating the SQLite key file on first use."""
    if key:
        return key.encode() if isinstance(key, str) else key
    if os.environ.get(KEY_ENV):
        return os.environ[KEY_ENV].encode()
    prefix = "sqlite:///"
    db = url[len(prefix):].split("?", 1)[0] if url.startswith(prefix) else ""
    if not db or db == ":memory:":
        return secrets.token_hex(32).encode() if url.startswith("sqlite") else None
    path = Path(db + ".key")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # 0600 from the first byte
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    except FileExistsError:
        if os.name == "posix" and stat.S_IMODE(path.stat().st_mode) & 0o077:
            raise ConfigError("registry key file is readable by other users; run chmod 600 on it",
                              str(path)) from None
    except OSError as e:
        raise ConfigError(f"cannot create the registry key file: {e}", str(path)) from None
    for _ in range(50):  # another process may have created it and be writing it right now
        data = path.read_bytes().strip()
        if data:
            return data
        time.sleep(0.02)
    raise ConfigError("registry key file is empty", str(path))


def sign(key: bytes, evidence: dict[str, Any]) -> str:
    """HMAC-SHA256 of the evidence (without its ``signature`` field)."""
    body = {k: v for k, v in evidence.items() if k != "signature"}
    return hmac.new(key, canonical(body), hashlib.sha256).hexdigest()


def signature_ok(key: bytes | None, evidence: dict[str, Any]) -> bool:
    sig = evidence.get("signature")
    return bool(key) and isinstance(sig, str) and hmac.compare_digest(sign(key, evidence), sig)


# ---- hash chain ---------------------------------------------------------------------------------
def ts(dt: datetime | None) -> str:
    """Canonical UTC timestamp (SQLite returns naive datetimes, PostgreSQL aware ones)."""
    if dt is None:
        return ""
    dt = dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)
    return dt.isoformat(timespec="microseconds")


def row_hash(prev: str, fields: dict[str, Any]) -> str:
    """``sha256(prev_hash + "\\n" + canonical row)``."""
    return hashlib.sha256(prev.encode() + b"\n" + canonical(fields)).hexdigest()


# ---- triggers -----------------------------------------------------------------------------------
_SQLITE_TRIGGERS = {
    f"audit_log_no_{op.lower()}": f"CREATE TRIGGER audit_log_no_{op.lower()} BEFORE {op} ON audit_log "
                                  f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END"
    for op in ("UPDATE", "DELETE")
}
_PG_FUNC_BODY = f"BEGIN RAISE EXCEPTION '{APPEND_ONLY}'; END;"
_PG_TRIGGERS = {
    "audit_log_no_update": "BEFORE UPDATE ON audit_log FOR EACH ROW",
    "audit_log_no_delete": "BEFORE DELETE ON audit_log FOR EACH ROW",
    "audit_log_no_truncate": "BEFORE TRUNCATE ON audit_log FOR EACH STATEMENT",
}


def _norm(sql: str | None) -> str:
    # old registries created the triggers with IF NOT EXISTS; same trigger, same meaning
    return " ".join((sql or "").split()).rstrip(";").lower().replace(" if not exists", "")


def trigger_problems(conn: Connection) -> list[str]:
    """Missing, disabled or altered append-only triggers (empty when all are intact)."""
    problems = []
    if conn.dialect.name == "sqlite":
        found = dict(conn.execute(text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' "
                                       "AND tbl_name = 'audit_log'")).all())
        for name, sql in _SQLITE_TRIGGERS.items():
            if name not in found:
                problems.append(f"trigger {name} is missing")
            elif _norm(found[name]) != _norm(sql):
                problems.append(f"trigger {name} was altered")
    elif conn.dialect.name == "postgresql":
        found = dict(conn.execute(text(
            "SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'audit_log'::regclass "
            "AND NOT tgisinternal")).all())
        for name in _PG_TRIGGERS:
            if name not in found:
                problems.append(f"trigger {name} is missing")
            elif found[name] == "D":
                problems.append(f"trigger {name} is disabled")
        body = conn.execute(text("SELECT prosrc FROM pg_proc WHERE proname = 'audit_log_append_only' AND "
                                 "pronamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())"
                                 )).scalar()
        if _norm(body) != _norm(_PG_FUNC_BODY):
            problems.append("trigger function audit_log_append_only is missing or altered")
    return problems


def drop_triggers(conn: Connection) -> None:
    for name in _SQLITE_TRIGGERS if conn.dialect.name == "sqlite" else _PG_TRIGGERS:
        conn.execute(text(f"DROP TRIGGER IF EXISTS {name}" + (" ON audit_log" if conn.dialect.name != "sqlite"
                                                                else "")))


def create_triggers(conn: Connection) -> None:
    """(Re)create the append-only triggers; other dialects rely on the insert-only code path."""
    if conn.dialect.name == "sqlite":
        drop_triggers(conn)
        for sql in _SQLITE_TRIGGERS.values():
            conn.execute(text(sql))
    elif conn.dialect.name == "postgresql":
        conn.execute(text("CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger "
                          f"LANGUAGE plpgsql AS $$ {_PG_FUNC_BODY} $$"))
        drop_triggers(conn)
        for name, spec in _PG_TRIGGERS.items():
            conn.execute(text(f"CREATE TRIGGER {name} {spec} EXECUTE FUNCTION audit_log_append_only()"))
