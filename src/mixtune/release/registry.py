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

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from mixtune.errors import ConfigError
from mixtune.release import registry_integrity as integ
from mixtune.release.registry_checks import RegistryError, check_evidence, verify_audit

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
_PG_WRITE_LOCK = 0x6D78_7265_6700  # advisory lock id serialising registry writes (and the chain head)
__all__ = ["REQUIRED_GATE", "STATES", "TRANSITIONS", "ModelRecord", "Registry", "RegistryError"]


class _Base(DeclarativeBase):
    pass


def _now() -> datetime:
    return datetime.now(timezone.utc)


class _Model(_Base):
    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("name", "version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    version: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(2000))
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    state: Mapped[str] = mapped_column(String(20))
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    weights_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)


class _Alias(_Base):
    __tablename__ = "aliases"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)  # model name, e.g. finance-risk
    alias: Mapped[str] = mapped_column(String(100), primary_key=True)  # champion / challenger
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    previous_model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"), nullable=True)
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class _Audit(_Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)  # assigned with the chain
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    action: Mapped[str] = mapped_column(String(40))  # register / gate / transition / alias / rollback
    from_state: Mapped[str | None] = mapped_column(String(20), nullable=True)
    to_state: Mapped[str | None] = mapped_column(String(20), nullable=True)
    who: Mapped[str] = mapped_column(String(200))
    when: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    why: Mapped[str] = mapped_column(String(4000), default="")
    evidence: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    prev_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    row_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)


def audit_fields(a: Any) -> dict[str, Any]:
    """The hashed content of an audit row (everything but the hashes themselves)."""
    return {"id": a.id, "model_id": a.model_id, "action": a.action, "from_state": a.from_state,
            "to_state": a.to_state, "who": a.who, "when": integ.ts(a.when), "why": a.why or "",
            "evidence": a.evidence}


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


def _sqlite_immediate(engine) -> None:
    """Make every SQLite transaction ``BEGIN IMMEDIATE``: the write lock is taken before the
    first read, so a compare-and-set cannot be interleaved (pysqlite's own deferred BEGIN would
    let two writers read the same state and one die with 'database is locked')."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves

    @event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


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
                _sqlite_immediate(self._engine)
            self._session = sessionmaker(self._engine, expire_on_commit=False)
            self.integrity_problems = self._open_schema()
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

    def _open_schema(self) -> list[str]:
        """Create/upgrade tables, seal a pre-chain audit log, check and recreate the triggers."""
        with self._engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_WRITE_LOCK})
            fresh = not inspect(conn).has_table("audit_log")
            _Base.metadata.create_all(conn)
            cols = {t: {c["name"] for c in inspect(conn).get_columns(t)} for t in ("models", "audit_log")}
            for table, col in (("models", "weights_sha256"), ("audit_log", "prev_hash"), ("audit_log", "row_hash")):
                if col not in cols[table]:  # registries created before the hash chain
                    conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {col} VARCHAR(64)"))
            problems = [] if fresh else integ.trigger_problems(conn)
            count = select(func.count()).select_from(_Audit)
            total = conn.execute(count).scalar()
            unsealed = conn.execute(count.where(_Audit.row_hash.is_(None))).scalar()
            if unsealed and unsealed == total:  # a legacy log: chain it once, as it stands today
                integ.drop_triggers(conn)
                prev = integ.GENESIS
                for a in conn.execute(select(_Audit).order_by(_Audit.id)).all():
                    h = integ.row_hash(prev, audit_fields(a))
                    conn.execute(update(_Audit).where(_Audit.id == a.id).values(prev_hash=prev, row_hash=h))
                    prev = h
                log.warning("registry %s: sealed %d audit rows written before the hash chain", self.url, total)
            if fresh or problems or unsealed == total and total:
                integ.create_triggers(conn)
        for p in problems:
            log.warning("registry %s: %s (recreated)", self.url, p)
        return problems

    def close(self) -> None:
        """Release pooled connections (SQLite files can then be removed on Windows)."""
        self._engine.dispose()

    # ---- transactions and helpers ------------------------------------------------------------
    def _write(self):
        return _WriteTxn(self)

    @staticmethod
    def _get(session: Session, model_id: int, *, lock: bool = False) -> _Model:
        row = session.get(_Model, model_id, with_for_update=lock or None, populate_existing=lock)
        if row is None:
            raise RegistryError(f"unknown model id {model_id}")
        return row

    @staticmethod
    def _champion(session: Session, name: str) -> _Alias | None:
        """The champion alias row, locked (FOR UPDATE) until the transaction ends."""
        return session.get(_Alias, (name, "champion"), with_for_update=True, populate_existing=True)

    @staticmethod
    def _next_version(session: Session, name: str) -> int:
        return (session.scalar(select(func.max(_Model.version)).where(_Model.name == name)) or 0) + 1

    @staticmethod
    def _record(session: Session, row: _Model) -> ModelRecord:
        aliases = session.scalars(select(_Alias.alias).where(_Alias.model_id == row.id)).all()
        return ModelRecord(row.id, row.name, row.version, row.path, _iso(row.created), row.state,
                           dict(row.metrics or {}), sorted(aliases), weights_sha256=row.weights_sha256 or "")

    @staticmethod
    def _audit(session: Session, model_id: int, action: str, from_state: str | None, to_state: str | None,
               who: str, why: str, evidence: dict | None) -> _Audit:
        """Append an audit row linked to the chain head (writes are serialised, so the head is stable)."""
        session.flush()
        head = session.execute(select(_Audit.id, _Audit.row_hash).order_by(_Audit.id.desc()).limit(1)).first()
        prev = (head.row_hash or integ.GENESIS) if head else integ.GENESIS
        row = _Audit(id=(head.id + 1) if head else 1, model_id=model_id, action=action, from_state=from_state,
                     to_state=to_state, who=who, when=_now(), why=why or "", evidence=evidence, prev_hash=prev)
        row.row_hash = integ.row_hash(prev, audit_fields(row))
        session.add(row)
        session.flush()
        return row

    def _move_alias(self, session: Session, name: str, alias: str, model_id: int, who: str, why: str,
                    expected: int | None) -> None:
        """Compare-and-set: point ``alias`` at ``model_id`` only if it still points at ``expected``."""
        if expected is None:
            if session.get(_Alias, (name, alias)) is not None:
                raise RegistryError(f"{name}@{alias} was set concurrently; retry")
            session.add(_Alias(name=name, alias=alias, model_id=model_id, previous_model_id=None))
        elif expected != model_id:
            res = session.execute(update(_Alias).where(_Alias.name == name, _Alias.alias == alias,
                                                       _Alias.model_id == expected)
                                  .values(model_id=model_id, previous_model_id=expected, updated=_now())
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
            row = _Model(name=name, version=version, path=path, state="trained", metrics=dict(metrics or {}),
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
            head = s.scalar(select(func.max(_Audit.id))) or 0
            body["binding"] = {"model_id": model_id, "name": row.name, "version": row.version, "path": row.path,
                               "weights_sha256": digest, "audit_id": head + 1}
            a = self._audit(s, model_id, "gate", None, None, who, f"{body['gate']} gate: {body.get('status')}", body)
            assert a.id == head + 1
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
                evidence = check_evidence(s, _Audit, row, to_state, gate, evidence, self._key,
                                          self._digest(model_id, row.path))
            res = s.execute(update(_Model).where(_Model.id == model_id, _Model.state == current)
                            .values(state=to_state).execution_options(synchronize_session=False))
            if res.rowcount != 1:
                raise RegistryError(f"model {model_id} changed state concurrently; retry")
            self._audit(s, model_id, "transition", current, to_state, who, why, evidence)
            if to_state == "released":
                self._move_alias(s, row.name, "champion", model_id, who, why, alias.model_id if alias else None)
                challenger = s.get(_Alias, (row.name, "challenger"))
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
            current = s.get(_Alias, (name, alias), with_for_update=True)
            row = self._get(s, model_id, lock=True)
            if row.name != name:
                raise RegistryError(f"model {model_id} belongs to {row.name!r}, not {name!r}")
            if row.state in ("rejected", "rolled_back"):
                raise RegistryError(f"model {model_id} is {row.state!r}; it cannot take an alias")
            self._move_alias(s, name, alias, model_id, who, why, current.model_id if current else None)

    def get_alias(self, name: str, alias: str) -> ModelRecord | None:
        """The model an alias points at, or None."""
        with self._session() as s:
            a = s.get(_Alias, (name, alias))
            return self._record(s, self._get(s, a.model_id)) if a else None

    def list(self, name: str | None = None) -> list[ModelRecord]:
        """All versions (of one model name if given), oldest first."""
        with self._session() as s:
            q = select(_Model).order_by(_Model.name, _Model.version)
            if name is not None:
                q = q.where(_Model.name == name)
            return [self._record(s, r) for r in s.scalars(q).all()]

    def show(self, model_id: int) -> ModelRecord:
        """One model with its full audit trail, oldest entry first."""
        with self._session() as s:
            rec = self._record(s, self._get(s, model_id))
            rows = s.scalars(select(_Audit).where(_Audit.model_id == model_id).order_by(_Audit.id)).all()
            rec.audit = [{"id": a.id, "action": a.action, "from_state": a.from_state, "to_state": a.to_state,
                          "who": a.who, "when": _iso(a.when), "why": a.why, "evidence": a.evidence}
                         for a in rows]
            return rec

    def audit_count(self) -> int:
        """Number of audit rows (they only ever grow)."""
        with self._session() as s:
            return int(s.scalar(select(func.count()).select_from(_Audit)) or 0)

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
            history = s.scalars(select(_Audit).where(_Audit.action == "alias").order_by(_Audit.id.desc())).all()
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
            res = s.execute(update(_Model).where(_Model.id == current.id, _Model.state == "released")
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
            head = s.scalar(select(_Audit.row_hash).order_by(_Audit.id.desc()).limit(1))
            return int(s.scalar(select(func.count()).select_from(_Audit)) or 0), head or integ.GENESIS

    def verify(self) -> list[str]:
        """Problems with the audit trail, first bad row first (empty: chain, triggers and state agree)."""
        with self._engine.connect() as conn:
            problems = verify_audit(conn, _Audit, _Model, _Alias, audit_fields)
        return problems + [f"{p} (found when the registry was opened; recreated)" for p in self.integrity_problems]


class _WriteTxn:
    """``with reg._write() as session``: one serialised transaction; database conflicts become
    clear RegistryErrors (never a raw IntegrityError/OperationalError traceback)."""

    def __init__(self, reg: Registry):
        self._cm = reg._session.begin()

    def __enter__(self) -> Session:
        try:
            s = self._cm.__enter__()
            if s.get_bind().dialect.name == "postgresql":
                s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_WRITE_LOCK})
        except DBAPIError as e:
            raise RegistryError(f"registry database is busy or unavailable ({e.__class__.__name__}: "
                                f"{str(e.orig).strip()[:200]}); retry") from None
        return s

    def __exit__(self, et, ev, tb) -> bool:
        try:
            self._cm.__exit__(et, ev, tb)  # commit, or roll back when the body raised
        except DBAPIError as e:
            ev = e
        if isinstance(ev, IntegrityError):
            raise RegistryError("another process changed the same model concurrently (e.g. registered the "
                                "same version); nothing was written, retry") from None
        if isinstance(ev, DBAPIError):
            raise RegistryError(f"registry write failed ({ev.__class__.__name__}: {str(ev.orig).strip()[:200]}); "
                                "nothing was written, retry") from None
        return False
