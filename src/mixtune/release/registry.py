"""Model registry: versions, lifecycle states, aliases and a tamper-evident audit log.

SQLAlchemy 2 over any URL (SQLite file by default, Postgres in production). A model moves
``trained → validated → canary → released``; ``rejected`` and ``rolled_back`` end a version's
life. A transition may not skip a gate: ``validated`` needs a passing ``validate`` gate decision
and ``released`` a passing ``canary`` one, and only decisions the registry itself recorded for
that model (:meth:`Registry.record_gate`, bound to its path and weights hash) or signed with the
registry's key count — a JSON file saying ``"status": "pass"`` is not evidence.

Every state change is a compare-and-set inside one transaction with its audit row: SQLite
transactions start with ``BEGIN IMMEDIATE`` (one writer at a time) and PostgreSQL ones take an
advisory lock plus ``SELECT ... FOR UPDATE`` row locks, and the ``champion`` alias moves only if
it still points where the transaction read it. Audit rows form a hash chain and triggers refuse
UPDATE/DELETE on them (see :mod:`mixtune.release.registry_integrity`); :meth:`Registry.verify`
checks both.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from mixtune.errors import ConfigError
from mixtune.release import registry_integrity as integ
from mixtune.release.registry_checks import RegistryError, check_evidence, verify_audit
from mixtune.release.registry_schema import (
    AliasRow,
    AuditRow,
    ModelRow,
    WriteTxn,
    audit_fields,
    now,
    open_schema,
    sqlite_immediate,
)

log = logging.getLogger(__name__)

STATES = ("trained", "validated", "canary", "released", "rejected", "rolled_back")
# Allowed moves; anything else (e.g. trained → canary) is a skipped gate and refused.
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "trained": ("validated", "rejected"),
    "validated": ("canary", "rejected"),
    "canary": ("released", "rejected"),
    "released": ("rolled_back",),
    "rejected": (),
    "rolled_back": (),
}
# The gate decision a target state requires as evidence.
REQUIRED_GATE = {"validated": "validate", "released": "canary"}
__all__ = ["REQUIRED_GATE", "STATES", "TRANSITIONS", "ModelRecord", "Registry", "RegistryError"]


@dataclass
class ModelRecord:
    """A registered model version as plain data; ``audit`` is filled by :meth:`Registry.show`."""

    id: int
    name: str
    version: int
    path: str
    created: str
    state: str
    metrics: dict[str, Any]
    aliases: list[str] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)
    weights_sha256: str = ""


def _iso(dt: datetime | None) -> str:
    if dt is None:
        return ""
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).isoformat(timespec="seconds")


def _sqlalchemy_url(url: str) -> str:
    """Accept full SQLAlchemy URLs and, for convenience, a bare SQLite file path."""
    return url if "://" in url else f"sqlite:///{url}"


class Registry:
    """Transactional model registry at a SQLAlchemy ``url`` (tables are created on first use).

    ``key`` signs gate evidence (default: env ``MIXTUNE_REGISTRY_KEY``, else a 0600 key file
    beside a SQLite database). ``integrity_problems`` lists trigger problems found (and repaired)
    when the registry was opened; :meth:`verify` reports them.
    """

    def __init__(self, url: str = "sqlite:///registry.db", *, mlflow_sync: bool = False,
                 key: str | bytes | None = None):
        self.url = _sqlalchemy_url(url)
        try:
            sqlite = self.url.startswith("sqlite")
            self._engine = create_engine(self.url, **({"connect_args": {"timeout": 60}} if sqlite else {}))
            if sqlite:
                sqlite_immediate(self._engine)
            self._session = sessionmaker(self._engine, expire_on_commit=False)
            self.integrity_problems = open_schema(self._engine, self.url)
        except (SQLAlchemyError, ImportError) as e:
            raise ConfigError(f"cannot open registry database: {e.__class__.__name__}: {e}", self.url) from None
        self._key = integ.load_key(self.url, key)
        self._mlflow = None
        if mlflow_sync:
            try:
                import mlflow  # optional; only for mirroring aliases
            except ImportError:
                raise ConfigError("mlflow_sync needs the 'mlflow' package, which is not installed") from None
            self._mlflow = mlflow.MlflowClient()

    def close(self) -> None:
        """Release pooled connections (SQLite files can then be removed on Windows)."""
        self._engine.dispose()

    # ---- transactions and helpers ------------------------------------------------------------
    def _write(self):
        return WriteTxn(self._session)

    @staticmethod
    def _get(session: Session, model_id: int, *, lock: bool = False) -> ModelRow:
        row = session.get(ModelRow, model_id, with_for_update=lock or None, populate_existing=lock)
        if row is None:
            raise RegistryError(f"unknown model id {model_id}")
        return row

    @staticmethod
    def _champion(session: Session, name: str) -> AliasRow | None:
        """The champion alias row, locked (FOR UPDATE) until the transaction ends."""
        return session.get(AliasRow, (name, "champion"), with_for_update=True, populate_existing=True)

    @staticmethod
    def _next_version(session: Session, name: str) -> int:
        return (session.scalar(select(func.max(ModelRow.version)).where(ModelRow.name == name)) or 0) + 1

    @staticmethod
    def _record(session: Session, row: ModelRow) -> ModelRecord:
        aliases = session.scalars(select(AliasRow.alias).where(AliasRow.model_id == row.id)).all()
        return ModelRecord(row.id, row.name, row.version, row.path, _iso(row.created), row.state,
                           dict(row.metrics or {}), sorted(aliases), weights_sha256=row.weights_sha256 or "")

    @staticmethod
    def _audit(session: Session, model_id: int, action: str, from_state: str | None, to_state: str | None,
               who: str, why: str, evidence: dict | None) -> AuditRow:
        """Append an audit row linked to the chain head (writes are serialised, so the head is stable)."""
        session.flush()
        head = session.execute(select(AuditRow.id, AuditRow.row_hash).order_by(AuditRow.id.desc()).limit(1)).first()
        prev = (head.row_hash or integ.GENESIS) if head else integ.GENESIS
        row = AuditRow(id=(head.id + 1) if head else 1, model_id=model_id, action=action, from_state=from_state,
                     to_state=to_state, who=who, when=now(), why=why or "", evidence=evidence, prev_hash=prev)
        row.row_hash = integ.row_hash(prev, audit_fields(row))
        session.add(row)
        session.flush()
        return row

    def _move_alias(self, session: Session, name: str, alias: str, model_id: int, who: str, why: str,
                    expected: int | None) -> None:
        """Compare-and-set: point ``alias`` at ``model_id`` only if it still points at ``expected``."""
        if expected is None:
            if session.get(AliasRow, (name, alias)) is not None:
                raise RegistryError(f"{name}@{alias} was set concurrently; retry")
            session.add(AliasRow(name=name, alias=alias, model_id=model_id, previous_model_id=None))
        elif expected != model_id:
            res = session.execute(update(AliasRow).where(AliasRow.name == name, AliasRow.alias == alias,
                                                       AliasRow.model_id == expected)
                                  .values(model_id=model_id, previous_model_id=expected, updated=now())
                                  .execution_options(synchronize_session=False))
            if res.rowcount != 1:
                raise RegistryError(f"{name}@{alias} no longer points at model {expected} (moved concurrently); "
                                    "nothing changed, retry")
        self._audit(session, model_id, "alias", None, None, who, why,
                    {"alias": alias, "model_name": name, "previous_model_id": expected})

    def _sync_mlflow(self, name: str, alias: str, version: int) -> None:
        if self._mlflow is None:
            return
        try:  # the registry stays the source of truth; a mirror failure is logged, not fatal
            self._mlflow.set_registered_model_alias(name, alias, str(version))
        except Exception as e:  # noqa: BLE001 - any mlflow/network failure
            log.warning("mlflow alias sync failed for %s@%s: %s", name, alias, e)

    @staticmethod
    def _digest(model_id: int | None, path: str) -> str:
        try:
            return integ.weights_digest(path)
        except (OSError, ValueError) as e:
            what = f"model {model_id}: cannot hash the weights" if model_id is not None else "cannot register"
            raise RegistryError(f"{what}: {e}", path) from None

    # ---- public API ----------------------------------------------------------------------
    def register(self, name: str, path: str, metrics: dict[str, Any] | None = None,
                 who: str = "mixtune") -> ModelRecord:
        """Add a new version of model ``name`` in state ``trained`` (version = previous max + 1).

        ``path`` must be an existing model/adapter folder (or weights file): its weights hash is
        recorded, and gate evidence is only accepted for these exact weights.
        """
        if not name or not path:
            raise RegistryError("register needs a model name and a path")
        path = str(Path(path).resolve())
        digest = self._digest(None, path)
        with self._write() as s:
            version = self._next_version(s, name)
            row = ModelRow(name=name, version=version, path=path, state="trained", metrics=dict(metrics or {}),
                         weights_sha256=digest)
            s.add(row)
            s.flush()
            self._audit(s, row.id, "register", None, "trained", who, f"registered {path}",
                        {"weights_sha256": digest})
            return self._record(s, row)

    def record_gate(self, model_id: int, decision: dict[str, Any], *, who: str = "mixtune") -> dict[str, Any]:
        """Store a gate decision for ``model_id`` in the audit log, bound to the model's path and
        the weights hash computed now; returns it as evidence (signed when the registry has a key)
        for :meth:`transition` or a ``gates.jsonl``."""
        if not isinstance(decision, dict) or decision.get("gate") not in REQUIRED_GATE.values():
            raise RegistryError(f"not a gate decision for gates {sorted(REQUIRED_GATE.values())}")
        with self._write() as s:
            row = self._get(s, model_id)
            digest = self._digest(model_id, row.path)
            if row.weights_sha256 and digest != row.weights_sha256:
                raise RegistryError(f"model {model_id}: the weights at {row.path} changed since it was registered; "
                                    "register them as a new version")
            body = {k: v for k, v in decision.items() if k not in ("binding", "signature")}
            head = s.scalar(select(func.max(AuditRow.id))) or 0
            body["binding"] = {"model_id": model_id, "name": row.name, "version": row.version, "path": row.path,
                               "weights_sha256": digest, "audit_id": head + 1}
            a = self._audit(s, model_id, "gate", None, None, who, f"{body['gate']} gate: {body.get('status')}", body)
            if a.id != head + 1:  # cannot happen while writes are serialised; never store a wrong binding
                raise RegistryError("the audit log moved while recording a gate decision; retry")
        return {**body, "signature": integ.sign(self._key, body)} if self._key else body

    def transition(self, model_id: int, to_state: str, *, who: str, why: str,
                   evidence: dict[str, Any] | None = None) -> ModelRecord:
        """Move a model to ``to_state`` if allowed and evidenced; one transaction with its audit row.

        For gated states ``evidence`` must be a decision returned by :meth:`record_gate` (recorded
        or signed); when None, the newest decision the registry recorded for that gate is used.
        Releasing also makes the model the ``champion`` of its name (the old one is remembered).
        """
        if to_state not in STATES:
            raise RegistryError(f"unknown state {to_state!r} (states: {', '.join(STATES)})")
        with self._write() as s:
            name = self._get(s, model_id).name
            alias = self._champion(s, name) if to_state == "released" else None  # lock order: alias, model
            row = self._get(s, model_id, lock=True)
            current = row.state
            if to_state not in TRANSITIONS[current]:
                allowed = ", ".join(TRANSITIONS[current]) or "none: it is final"
                raise RegistryError(f"model {model_id} is {current!r}; cannot move to {to_state!r} "
                                    f"(allowed from {current!r}: {allowed})")
            gate = REQUIRED_GATE.get(to_state)
            if gate is not None:
                evidence = check_evidence(s, AuditRow, row, to_state, gate, evidence, self._key,
                                          self._digest(model_id, row.path))
            res = s.execute(update(ModelRow).where(ModelRow.id == model_id, ModelRow.state == current)
                            .values(state=to_state).execution_options(synchronize_session=False))
            if res.rowcount != 1:
                raise RegistryError(f"model {model_id} changed state concurrently; retry")
            self._audit(s, model_id, "transition", current, to_state, who, why, evidence)
            if to_state == "released":
                self._move_alias(s, row.name, "champion", model_id, who, why, alias.model_id if alias else None)
                challenger = s.get(AliasRow, (row.name, "challenger"))
                if challenger is not None and challenger.model_id == model_id:
                    s.delete(challenger)  # a released challenger is no longer a challenger
            s.flush()
            s.refresh(row)
            record = self._record(s, row)
        if to_state == "released":
            self._sync_mlflow(record.name, "champion", record.version)
        return record

    def set_alias(self, name: str, alias: str, model_id: int, *, who: str = "mixtune", why: str = "") -> None:
        """Point ``alias`` of model ``name`` at ``model_id`` (audited). ``champion`` moves only by
        release or rollback, so production never points at an ungated model."""
        if alias == "champion":
            raise RegistryError("the 'champion' alias moves only by releasing a model or by rollback")
        with self._write() as s:
            current = s.get(AliasRow, (name, alias), with_for_update=True)
            row = self._get(s, model_id, lock=True)
            if row.name != name:
                raise RegistryError(f"model {model_id} belongs to {row.name!r}, not {name!r}")
            if row.state in ("rejected", "rolled_back"):
                raise RegistryError(f"model {model_id} is {row.state!r}; it cannot take an alias")
            self._move_alias(s, name, alias, model_id, who, why, current.model_id if current else None)

    def get_alias(self, name: str, alias: str) -> ModelRecord | None:
        """The model an alias points at, or None."""
        with self._session() as s:
            a = s.get(AliasRow, (name, alias))
            return self._record(s, self._get(s, a.model_id)) if a else None

    def list(self, name: str | None = None) -> list[ModelRecord]:
        """All versions (of one model name if given), oldest first."""
        with self._session() as s:
            q = select(ModelRow).order_by(ModelRow.name, ModelRow.version)
            if name is not None:
                q = q.where(ModelRow.name == name)
            return [self._record(s, r) for r in s.scalars(q).all()]

    def show(self, model_id: int) -> ModelRecord:
        """One model with its full audit trail, oldest entry first."""
        with self._session() as s:
            rec = self._record(s, self._get(s, model_id))
            rows = s.scalars(select(AuditRow).where(AuditRow.model_id == model_id).order_by(AuditRow.id)).all()
            rec.audit = [{"id": a.id, "action": a.action, "from_state": a.from_state, "to_state": a.to_state,
                          "who": a.who, "when": _iso(a.when), "why": a.why, "evidence": a.evidence}
                         for a in rows]
            return rec

    def audit_count(self) -> int:
        """Number of audit rows (they only ever grow)."""
        with self._session() as s:
            return int(s.scalar(select(func.count()).select_from(AuditRow)) or 0)

    def rollback(self, name: str, *, who: str, why: str, expected_champion: int | None = None) -> ModelRecord:
        """Retire the current champion (→ rolled_back) and restore the most recent earlier champion
        that is still released. With ``expected_champion``, refuse if the champion is no longer that
        model (someone released or rolled back meanwhile). Returns the restored model."""
        with self._write() as s:
            alias = self._champion(s, name)
            if alias is None:
                raise RegistryError(f"model {name!r} has no champion to roll back")
            if expected_champion is not None and alias.model_id != expected_champion:
                raise RegistryError(f"{name}@champion is now model {alias.model_id}, not {expected_champion}; "
                                    "nothing rolled back (look again, then retry)")
            current = self._get(s, alias.model_id, lock=True)
            # Walk the champion history (alias audit rows) newest first for a still-released model.
            history = s.scalars(select(AuditRow).where(AuditRow.action == "alias").order_by(AuditRow.id.desc())).all()
            target = None
            for a in history:
                ev = a.evidence or {}
                if ev.get("alias") != "champion" or ev.get("model_name") != name or a.model_id == current.id:
                    continue
                cand = self._get(s, a.model_id, lock=True)
                if cand.state == "released":
                    target = cand
                    break
            if target is None:
                raise RegistryError(f"model {name!r} has no earlier released champion to restore")
            res = s.execute(update(ModelRow).where(ModelRow.id == current.id, ModelRow.state == "released")
                            .values(state="rolled_back").execution_options(synchronize_session=False))
            if res.rowcount != 1:
                raise RegistryError(f"champion {current.id} changed state concurrently; retry")
            evidence = {"rolled_back_model_id": current.id, "restored_model_id": target.id}
            self._audit(s, current.id, "rollback", "released", "rolled_back", who, why, evidence)
            self._move_alias(s, name, "champion", target.id, who, f"rollback: {why}", current.id)
            s.flush()
            record = self._record(s, target)
        self._sync_mlflow(record.name, "champion", record.version)
        return record

    def audit_head(self) -> tuple[int, str]:
        """(number of audit rows, hash of the newest one): record it elsewhere to anchor the chain."""
        with self._session() as s:
            head = s.scalar(select(AuditRow.row_hash).order_by(AuditRow.id.desc()).limit(1))
            return int(s.scalar(select(func.count()).select_from(AuditRow)) or 0), head or integ.GENESIS

    def verify(self) -> list[str]:
        """Problems with the audit trail, first bad row first (empty: chain, triggers and state agree)."""
        with self._engine.connect() as conn:
            problems = verify_audit(conn, AuditRow, ModelRow, AliasRow, audit_fields)
        return problems + [f"{p} (found when the registry was opened; recreated)" for p in self.integrity_problems]
