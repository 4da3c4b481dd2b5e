"""Tables of the model registry and the machinery around its transactions: schema creation and
upgrade on open, SQLite ``BEGIN IMMEDIATE``, and the serialised write transaction."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
    event,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from mixtune.release import registry_integrity as integ
from mixtune.release.registry_checks import RegistryError

log = logging.getLogger("mixtune.release.registry")
PG_WRITE_LOCK = 0x6D78_7265_6700  # advisory lock id serialising registry writes (and the chain head)


def now() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


def _now() -> datetime:
    return datetime.now(timezone.utc)


class ModelRow(Base):
    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("name", "version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    version: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(2000))
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    state: Mapped[str] = mapped_column(String(20))
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    weights_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)


class AliasRow(Base):
    __tablename__ = "aliases"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)  # model name, e.g. finance-risk
    alias: Mapped[str] = mapped_column(String(100), primary_key=True)  # champion / challenger
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    previous_model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"), nullable=True)
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class AuditRow(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)  # assigned with the chain
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    action: Mapped[str] = mapped_column(String(40))  # register / gate / transition / alias / rollback
    from_state: Mapped[str | None] = mapped_column(String(20), nullable=True)
    to_state: Mapped[str | None] = mapped_column(String(20), nullable=True)
    who: Mapped[str] = mapped_column(String(200))
    when: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    why: Mapped[str] = mapped_column(String(4000), default="")
    evidence: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    prev_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    row_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)


def audit_fields(a: Any) -> dict[str, Any]:
    """The hashed content of an audit row (everything but the hashes themselves)."""
    return {"id": a.id, "model_id": a.model_id, "action": a.action, "from_state": a.from_state,
            "to_state": a.to_state, "who": a.who, "when": integ.ts(a.when), "why": a.why or "",
            "evidence": a.evidence}


def sqlite_immediate(engine) -> None:
    """Make every SQLite transaction ``BEGIN IMMEDIATE``: the write lock is taken before the
    first read, so a compare-and-set cannot be interleaved (pysqlite's own deferred BEGIN would
    let two writers read the same state and one die with 'database is locked')."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves

    @event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def open_schema(engine, url: str) -> list[str]:
    """Create/upgrade tables, seal a pre-chain audit log, check and recreate the triggers."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_WRITE_LOCK})
        fresh = not inspect(conn).has_table("audit_log")
        Base.metadata.create_all(conn)
        cols = {t: {c["name"] for c in inspect(conn).get_columns(t)} for t in ("models", "audit_log")}
        for table, col in (("models", "weights_sha256"), ("audit_log", "prev_hash"), ("audit_log", "row_hash")):
            if col not in cols[table]:  # registries created before the hash chain
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {col} VARCHAR(64)"))
        problems = [] if fresh else integ.trigger_problems(conn)
        count = select(func.count()).select_from(AuditRow)
        total = conn.execute(count).scalar()
        unsealed = conn.execute(count.where(AuditRow.row_hash.is_(None))).scalar()
        if unsealed and unsealed == total:  # a legacy log: chain it once, as it stands today
            integ.drop_triggers(conn)
            prev = integ.GENESIS
            for a in conn.execute(select(AuditRow).order_by(AuditRow.id)).all():
                h = integ.row_hash(prev, audit_fields(a))
                conn.execute(update(AuditRow).where(AuditRow.id == a.id).values(prev_hash=prev, row_hash=h))
                prev = h
            log.warning("registry %s: sealed %d audit rows written before the hash chain", url, total)
        if fresh or problems or unsealed == total and total:
            integ.create_triggers(conn)
    for p in problems:
        log.warning("registry %s: %s (recreated)", url, p)
    return problems


class WriteTxn:
    """``with WriteTxn(sessionmaker) as session``: one serialised transaction; database conflicts become
    clear RegistryErrors (never a raw IntegrityError/OperationalError traceback)."""

    def __init__(self, session_factory):
        self._cm = session_factory.begin()

    def __enter__(self) -> Session:
        try:
            s = self._cm.__enter__()
            if s.get_bind().dialect.name == "postgresql":
                s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_WRITE_LOCK})
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
