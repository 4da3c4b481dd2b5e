"""Model registry: versions, lifecycle states, aliases and an append-only audit log.

SQLAlchemy 2 over any URL (SQLite file by default, Postgres in production). A model moves
``trained → validated → canary → released``; ``rejected`` and ``rolled_back`` end a version's
life. A transition may not skip a gate: ``validated`` needs a passing ``validate`` gate decision
as evidence and ``released`` a passing ``canary`` one. Every change and its audit row commit in
one transaction, so a failure half-way leaves neither. Releasing moves the ``champion`` alias
(the previous champion is remembered in the alias history) and :meth:`Registry.rollback` restores
it. The audit table is only ever inserted into; on SQLite, triggers also refuse UPDATE/DELETE.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    DDL,
    JSON,
    DateTime,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from mixtune.errors import ConfigError, MixtuneError

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


class RegistryError(MixtuneError):
    """A refused registry operation: unknown model, skipped gate, missing evidence."""


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


class _Alias(_Base):
    __tablename__ = "aliases"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)  # model name, e.g. finance-risk
    alias: Mapped[str] = mapped_column(String(100), primary_key=True)  # champion / challenger
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    previous_model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"), nullable=True)
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class _Audit(_Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    action: Mapped[str] = mapped_column(String(40))  # register / transition / alias / rollback
    from_state: Mapped[str | None] = mapped_column(String(20), nullable=True)
    to_state: Mapped[str | None] = mapped_column(String(20), nullable=True)
    who: Mapped[str] = mapped_column(String(200))
    when: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    why: Mapped[str] = mapped_column(String(4000), default="")
    evidence: Mapped[dict | None] = mapped_column(JSON, nullable=True)


# Defence in depth for the append-only promise where the database can enforce it cheaply.
for _op in ("UPDATE", "DELETE"):
    event.listen(
        _Audit.__table__,
        "after_create",
        DDL(
            f"CREATE TRIGGER IF NOT EXISTS audit_log_no_{_op.lower()} BEFORE {_op} ON audit_log "
            "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"
        ).execute_if(dialect="sqlite"),
    )


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


def _iso(dt: datetime | None) -> str:
    if dt is None:
        return ""
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).isoformat(timespec="seconds")


def _sqlalchemy_url(url: str) -> str:
    """Accept full SQLAlchemy URLs and, for convenience, a bare SQLite file path."""
    return url if "://" in url else f"sqlite:///{url}"


class Registry:
    """Transactional model registry at a SQLAlchemy ``url`` (tables are created on first use)."""

    def __init__(self, url: str = "sqlite:///registry.db", *, mlflow_sync: bool = False):
        self.url = _sqlalchemy_url(url)
        try:
            self._engine = create_engine(self.url)
            _Base.metadata.create_all(self._engine)
        except (SQLAlchemyError, ImportError) as e:
            raise ConfigError(f"cannot open registry database: {e.__class__.__name__}: {e}", self.url) from None
        self._session = sessionmaker(self._engine, expire_on_commit=False)
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

    # ---- helpers -------------------------------------------------------------------------
    @staticmethod
    def _get(session: Session, model_id: int) -> _Model:
        row = session.get(_Model, model_id)
        if row is None:
            raise RegistryError(f"unknown model id {model_id}")
        return row

    @staticmethod
    def _record(session: Session, row: _Model) -> ModelRecord:
        aliases = session.scalars(select(_Alias.alias).where(_Alias.model_id == row.id)).all()
        return ModelRecord(row.id, row.name, row.version, row.path, _iso(row.created), row.state,
                           dict(row.metrics or {}), sorted(aliases))

    @staticmethod
    def _audit(session: Session, model_id: int, action: str, from_state: str | None, to_state: str | None,
               who: str, why: str, evidence: dict | None) -> None:
        session.add(_Audit(model_id=model_id, action=action, from_state=from_state, to_state=to_state,
                           who=who, why=why or "", evidence=evidence))

    def _move_alias(self, session: Session, name: str, alias: str, model_id: int, who: str, why: str) -> None:
        row = session.get(_Alias, (name, alias))
        previous = row.model_id if row else None
        if row is None:
            session.add(_Alias(name=name, alias=alias, model_id=model_id, previous_model_id=None))
        elif row.model_id != model_id:
            row.previous_model_id, row.model_id, row.updated = row.model_id, model_id, _now()
        self._audit(session, model_id, "alias", None, None, who, why,
                    {"alias": alias, "model_name": name, "previous_model_id": previous})

    def _sync_mlflow(self, name: str, alias: str, version: int) -> None:
        if self._mlflow is None:
            return
        try:  # the registry stays the source of truth; a mirror failure is logged, not fatal
            self._mlflow.set_registered_model_alias(name, alias, str(version))
        except Exception as e:  # noqa: BLE001 - any mlflow/network failure
            log.warning("mlflow alias sync failed for %s@%s: %s", name, alias, e)

    # ---- public API ----------------------------------------------------------------------
    def register(self, name: str, path: str, metrics: dict[str, Any] | None = None,
                 who: str = "mixtune") -> ModelRecord:
        """Add a new version of model ``name`` in state ``trained`` (version = previous max + 1)."""
        if not name or not path:
            raise RegistryError("register needs a model name and a path")
        with self._session.begin() as s:
            version = (s.scalar(select(func.max(_Model.version)).where(_Model.name == name)) or 0) + 1
            row = _Model(name=name, version=version, path=str(path), state="trained", metrics=dict(metrics or {}))
            s.add(row)
            s.flush()
            self._audit(s, row.id, "register", None, "trained", who, f"registered {path}", None)
            return self._record(s, row)

    def transition(self, model_id: int, to_state: str, *, who: str, why: str,
                   evidence: dict[str, Any] | None = None) -> ModelRecord:
        """Move a model to ``to_state`` if allowed and evidenced; one transaction with its audit row.

        Releasing also makes the model the ``champion`` of its name (the old one is remembered).
        """
        if to_state not in STATES:
            raise RegistryError(f"unknown state {to_state!r} (states: {', '.join(STATES)})")
        with self._session.begin() as s:
            row = self._get(s, model_id)
            current = row.state
            if to_state not in TRANSITIONS[current]:
                allowed = ", ".join(TRANSITIONS[current]) or "none: it is final"
                raise RegistryError(f"model {model_id} is {current!r}; cannot move to {to_state!r} "
                                    f"(allowed from {current!r}: {allowed})")
            gate = REQUIRED_GATE.get(to_state)
            if gate is not None:
                self._check_evidence(model_id, to_state, gate, evidence)
            # Compare-and-set: a concurrent writer that moved the model first makes this one fail.
            res = s.execute(update(_Model).where(_Model.id == model_id, _Model.state == current)
                            .values(state=to_state).execution_options(synchronize_session=False))
            if res.rowcount != 1:
                raise RegistryError(f"model {model_id} changed state concurrently; retry")
            self._audit(s, model_id, "transition", current, to_state, who, why, evidence)
            if to_state == "released":
                self._move_alias(s, row.name, "champion", model_id, who, why)
                alias_row = s.get(_Alias, (row.name, "challenger"))
                if alias_row is not None and alias_row.model_id == model_id:
                    s.delete(alias_row)  # a released challenger is no longer a challenger
            s.flush()
            s.refresh(row)
            record = self._record(s, row)
        if to_state == "released":
            self._sync_mlflow(record.name, "champion", record.version)
        return record

    @staticmethod
    def _check_evidence(model_id: int, to_state: str, gate: str, evidence: dict[str, Any] | None) -> None:
        if not evidence:
            raise RegistryError(f"moving model {model_id} to {to_state!r} needs a passing {gate!r} gate "
                                "decision as evidence (run `mixtune gate` first)")
        if evidence.get("gate") != gate:
            raise RegistryError(f"moving model {model_id} to {to_state!r} needs a {gate!r} gate decision, "
                                f"got one for gate {evidence.get('gate')!r}")
        if evidence.get("status") != "pass":
            raise RegistryError(f"the {gate!r} gate decision is {evidence.get('status')!r}, not 'pass'; "
                                f"model {model_id} stays where it is")
        claimed = (evidence.get("meta") or {}).get("model_id")
        if claimed is not None and str(claimed) != str(model_id):
            raise RegistryError(f"the {gate!r} gate decision is for model {claimed}, not {model_id}")

    def set_alias(self, name: str, alias: str, model_id: int, *, who: str = "mixtune", why: str = "") -> None:
        """Point ``alias`` of model ``name`` at ``model_id`` (audited). ``champion`` moves only by
        release or rollback, so production never points at an ungated model."""
        if alias == "champion":
            raise RegistryError("the 'champion' alias moves only by releasing a model or by rollback")
        with self._session.begin() as s:
            row = self._get(s, model_id)
            if row.name != name:
                raise RegistryError(f"model {model_id} belongs to {row.name!r}, not {name!r}")
            if row.state in ("rejected", "rolled_back"):
                raise RegistryError(f"model {model_id} is {row.state!r}; it cannot take an alias")
            self._move_alias(s, name, alias, model_id, who, why)

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

    def rollback(self, name: str, *, who: str, why: str) -> ModelRecord:
        """Retire the current champion (→ rolled_back) and restore the most recent earlier champion
        that is still released. Returns the restored model. One transaction, audited."""
        with self._session.begin() as s:
            alias = s.get(_Alias, (name, "champion"))
            if alias is None:
                raise RegistryError(f"model {name!r} has no champion to roll back")
            current = self._get(s, alias.model_id)
            # Walk the champion history (alias audit rows) newest first for a still-released model.
            history = s.scalars(select(_Audit).where(_Audit.action == "alias").order_by(_Audit.id.desc())).all()
            target = None
            for a in history:
                ev = a.evidence or {}
                if ev.get("alias") != "champion" or ev.get("model_name") != name or a.model_id == current.id:
                    continue
                cand = s.get(_Model, a.model_id)
                if cand is not None and cand.state == "released":
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
            self._move_alias(s, name, "champion", target.id, who, f"rollback: {why}")
            s.flush()
            record = self._record(s, target)
        self._sync_mlflow(record.name, "champion", record.version)
        return record
