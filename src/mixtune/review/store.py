"""The review store: one append-only SQL store for every kind of reviewed item.

Three kinds share it — ``sample`` (training data awaiting dual validation), ``output`` (model
outputs sampled during stage 2) and ``pair`` (A/B answer pairs from shadow traffic). Tables
(names carry a prefix so several stores, or several tests, share one database):

- ``items``: what is reviewed — prompt, reference, output, task, family, model or data version
  and the rule engine's findings (spans) computed at enqueue time.
- ``verdicts``: one row per verdict — item, kind, task, reviewer, reviewer kind
  (human|simulated), verdict, reason code, role (review|adjudication), time, version, note,
  idempotency key. Rows are only ever inserted: the API has no update or delete, and a database
  trigger refuses both, so an audit can trust the history.
- ``model_versions``: register/retire events; a verdict on an output of a version that is not
  (or no longer) active is refused with a clear message instead of polluting live rates.

SQLite (the default, a path) runs in WAL mode with ``BEGIN IMMEDIATE`` so reviewers in several
processes neither block readers nor hit snapshot-upgrade errors; any SQLAlchemy URL works too
(a team uses PostgreSQL). Queue logic (states, kappa, rates) lives in :mod:`mixtune.review.queue`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    insert,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from mixtune.errors import MixtuneError

KINDS = ("sample", "output", "pair")
VERDICTS: dict[str, tuple[str, ...]] = {
    "sample": ("approve", "reject", "needs_fix"),
    "output": ("approve", "reject", "needs_fix"),
    "pair": ("a", "b", "tie"),
}
REVIEWER_KINDS = ("human", "simulated")
ROLES = ("review", "adjudication")
# item meta that reviewers must not see: which model a blind A/B pair shows as "A"
PRIVATE_META = ("a_is",)


class ReviewError(MixtuneError):
    """A refused review action; ``status`` is the HTTP status the web app answers with."""

    def __init__(self, message: str, where: str | None = None, status: int = 409):
        super().__init__(message, where)
        self.status = status


@dataclass(frozen=True)
class Item:
    """One reviewable item (a row of ``items``)."""

    id: str
    kind: str
    task_id: str
    family: str
    prompt: str
    reference: str
    output: str
    model_version: str
    data_version: str
    findings: list[dict]
    meta: dict
    seq: int = 0
    created: str = ""

    def public_meta(self) -> dict:
        """``meta`` without what would unblind a reviewer (:data:`PRIVATE_META`)."""
        return {k: v for k, v in self.meta.items() if k not in PRIVATE_META}

    @property
    def version(self) -> str:
        """The version a verdict on this item is about: the model's for outputs, else the data's."""
        return self.model_version if self.kind == "output" else self.data_version


@dataclass(frozen=True)
class Verdict:
    """One recorded verdict (a row of ``verdicts``)."""

    seq: int
    item_id: str
    kind: str
    task_id: str
    reviewer: str
    reviewer_kind: str
    verdict: str
    reason: str
    role: str
    time: str
    version: str
    note: str
    idem_key: str


def now() -> str:
    """UTC time as ISO 8601 with microseconds (sortable as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def store_url(store: str | Path) -> str:
    """A SQLAlchemy URL for ``store``: URLs pass through, anything else is a SQLite file path."""
    s = str(store)
    if "://" in s:
        return s
    path = Path(s).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _sqlite_setup(engine: Engine, begin: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _rec):  # pragma: no cover - exercised through every sqlite test
        dbapi_conn.isolation_level = None  # SQLAlchemy's "begin" hook below emits BEGIN itself
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql(begin)


class ReviewStore:
    """Append-only review store on SQLite (path, WAL) or any SQLAlchemy URL."""

    def __init__(self, store: str | Path, *, prefix: str = "review_"):
        if not re.fullmatch(r"[a-z][a-z0-9_]*", prefix):
            raise ReviewError(f"table prefix {prefix!r} must be lower-case letters, digits and _", status=422)
        self.url = store_url(store)
        self.prefix = prefix
        try:
            self.engine = create_engine(self.url, future=True)
            self.reader = self.engine
            if self.engine.dialect.name == "sqlite":
                # writes BEGIN IMMEDIATE: take the write lock up front, so a busy writer waits
                # (busy_timeout) instead of failing to upgrade a read snapshot; reads stay deferred
                # on their own engine, and in WAL mode they never wait for a writer
                _sqlite_setup(self.engine, "BEGIN IMMEDIATE")
                self.reader = create_engine(self.url, future=True)
                _sqlite_setup(self.reader, "BEGIN")
        except Exception as e:  # bad URL or missing driver: a user mistake, name it
            raise MixtuneError(f"cannot open review store: {e}", where=str(store)) from None
        md = MetaData()
        self.items = Table(
            f"{prefix}items", md,
            Column("seq", Integer, primary_key=True, autoincrement=True),
            Column("id", String(1000), nullable=False, unique=True),
            Column("kind", String(16), nullable=False),
            Column("task_id", String(1000), nullable=False, index=True),
            Column("family", String(1000), nullable=False),
            Column("prompt", Text, nullable=False), Column("reference", Text, nullable=False),
            Column("output", Text, nullable=False),
            Column("model_version", String(1000), nullable=False), Column("data_version", String(1000), nullable=False),
            Column("findings", Text, nullable=False), Column("meta", Text, nullable=False),
            Column("created", String(40), nullable=False),
        )
        self.verdicts = Table(
            f"{prefix}verdicts", md,
            Column("seq", Integer, primary_key=True, autoincrement=True),
            Column("item_id", String(1000), nullable=False, index=True),
            Column("kind", String(16), nullable=False), Column("task_id", String(1000), nullable=False, index=True),
            Column("reviewer", String(1000), nullable=False), Column("reviewer_kind", String(16), nullable=False),
            Column("verdict", String(16), nullable=False), Column("reason", String(1000), nullable=False),
            Column("role", String(16), nullable=False), Column("time", String(40), nullable=False),
            Column("version", String(1000), nullable=False), Column("note", Text, nullable=False),
            Column("idem_key", String(1000), nullable=False),
            # one verdict per reviewer and item: a double submit from two tabs or two processes
            # collides here, and the loser reads the winner back (idempotent or refused)
            UniqueConstraint("item_id", "reviewer", "role", name=f"{prefix}one_verdict"),
        )
        self.model_versions = Table(
            f"{prefix}model_versions", md,
            Column("seq", Integer, primary_key=True, autoincrement=True),
            Column("version", String(1000), nullable=False, index=True),
            Column("event", String(16), nullable=False), Column("time", String(40), nullable=False),
        )
        self.metadata = md
        try:
            with self.engine.begin() as c:
                if self.engine.dialect.name == "postgresql":
                    # Several processes may open one store at once (reviewers, the training loop):
                    # schema set-up runs one at a time, or concurrent DDL on the same objects fails.
                    c.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"mixtune-{prefix}"})
                md.create_all(c)
                self._guard_append_only(c)
        except OperationalError as e:
            raise MixtuneError(f"cannot open review store: {e.orig}", where=str(store)) from None

    # --- schema ---------------------------------------------------------------------------
    def _guard_append_only(self, c) -> None:
        """Database triggers that refuse UPDATE/DELETE on verdicts (the API has none either)."""
        t = self.verdicts.name
        if self.engine.dialect.name == "sqlite":
            for op in ("UPDATE", "DELETE"):
                c.exec_driver_sql(
                    f"CREATE TRIGGER IF NOT EXISTS {t}_no_{op.lower()} BEFORE {op} ON {t} "
                    f"BEGIN SELECT RAISE(ABORT, 'review verdicts are append-only'); END")
        elif self.engine.dialect.name == "postgresql":
            c.exec_driver_sql(
                f"CREATE OR REPLACE FUNCTION {t}_append_only() RETURNS trigger LANGUAGE plpgsql AS "
                f"$$ BEGIN RAISE EXCEPTION 'review verdicts are append-only'; END $$")
            c.exec_driver_sql(f"DROP TRIGGER IF EXISTS {t}_append_only ON {t}")
            c.exec_driver_sql(f"CREATE TRIGGER {t}_append_only BEFORE UPDATE OR DELETE ON {t} "
                              f"FOR EACH ROW EXECUTE FUNCTION {t}_append_only()")

    def drop(self) -> None:
        """Drop this store's tables (tests and throw-away stores only; nothing calls it otherwise)."""
        self.metadata.drop_all(self.engine)
        if self.engine.dialect.name == "postgresql":
            with self.engine.begin() as c:
                c.exec_driver_sql(f"DROP FUNCTION IF EXISTS {self.verdicts.name}_append_only()")
        self.close()

    def close(self) -> None:
        self.engine.dispose()
        self.reader.dispose()

    # --- model versions -------------------------------------------------------------------
    def register_model_version(self, version: str) -> None:
        """Mark ``version`` active: its outputs may be reviewed."""
        if version not in self.active_model_versions():
            with self.engine.begin() as c:
                c.execute(insert(self.model_versions).values(version=version, event="register", time=now()))

    def retire_model_version(self, version: str) -> None:
        """Mark ``version`` gone: verdicts on its outputs are refused from now on."""
        with self.engine.begin() as c:
            c.execute(insert(self.model_versions).values(version=version, event="retire", time=now()))

    def active_model_versions(self) -> set[str]:
        """Versions whose latest event is ``register``."""
        last: dict[str, str] = {}
        with self.reader.connect() as c:
            for v, ev in c.execute(select(self.model_versions.c.version, self.model_versions.c.event)
                                   .order_by(self.model_versions.c.seq)):
                last[v] = ev
        return {v for v, ev in last.items() if ev == "register"}

    # --- items ----------------------------------------------------------------------------
    def enqueue(self, item_id: str, kind: str, task_id: str, *, prompt: str = "", reference: str = "",
                output: str = "", family: str = "", model_version: str = "", data_version: str = "",
                findings: list[dict] | None = None, meta: dict | None = None) -> bool:
        """Add an item; returns False when an item with this id is already there (kept as it was)."""
        if kind not in KINDS:
            raise ReviewError(f"unknown item kind {kind!r}; allowed: {list(KINDS)}", status=422)
        if kind == "output" and not model_version:
            raise ReviewError(f"output {item_id!r} needs the model_version that produced it", status=422)
        spans = []
        for f in findings or []:
            s, e = int(f["start"]), int(f["end"])
            if not 0 <= s <= e <= len(output):
                raise ReviewError(f"item {item_id!r}: finding span {s}..{e} is outside the output "
                                  f"({len(output)} characters)", status=422)
            spans.append({"start": s, "end": e, "rule_id": str(f.get("rule_id", "")),
                          "severity": str(f.get("severity", "error")), "reason": str(f.get("reason", ""))})
        row = dict(id=item_id, kind=kind, task_id=task_id, family=family or task_id, prompt=prompt,
                   reference=reference, output=output, model_version=model_version, data_version=data_version,
                   findings=json.dumps(spans, ensure_ascii=False), meta=json.dumps(meta or {}, ensure_ascii=False),
                   created=now())
        try:
            with self.engine.begin() as c:
                if c.execute(select(self.items.c.seq).where(self.items.c.id == item_id)).first() is not None:
                    return False
                c.execute(insert(self.items).values(**row))
        except IntegrityError:  # another process enqueued the same id between our check and insert
            return False
        return True

    def item(self, item_id: str) -> Item:
        """The item ``item_id``; unknown ids are a 404-style :class:`ReviewError`."""
        with self.reader.connect() as c:
            r = c.execute(select(self.items).where(self.items.c.id == item_id)).mappings().first()
        if r is None:
            raise ReviewError(f"no item {item_id!r} in the review store", status=404)
        return _item(r)

    def items_of(self, kinds: tuple[str, ...] | list[str] = KINDS) -> list[Item]:
        """Items of ``kinds`` in enqueue order."""
        with self.reader.connect() as c:
            rows = c.execute(select(self.items).where(self.items.c.kind.in_(list(kinds)))
                             .order_by(self.items.c.seq)).mappings().all()
        return [_item(r) for r in rows]

    # --- verdicts -------------------------------------------------------------------------
    def add_verdict(self, item_id: str, reviewer: str, verdict: str, *, reviewer_kind: str = "human",
                    reason: str = "", role: str = "review", note: str = "", idem_key: str = "",
                    ) -> tuple[Verdict, bool]:
        """Append one verdict; returns ``(row, created)``.

        A repeat of the same reviewer's verdict on the same item (same verdict, and same
        idempotency key when both carry one) returns the stored row with ``created=False``; a
        different one is refused, because verdicts are never overwritten. Outputs of a model
        version that is not active are refused.
        """
        it = self.item(item_id)
        if verdict not in VERDICTS[it.kind]:
            raise ReviewError(f"verdict {verdict!r} is not one of {list(VERDICTS[it.kind])} for a {it.kind}",
                              status=422)
        if reviewer_kind not in REVIEWER_KINDS or role not in ROLES:
            raise ReviewError(f"reviewer kind must be one of {REVIEWER_KINDS} and role one of {ROLES}", status=422)
        if it.kind == "output" and it.model_version not in self.active_model_versions():
            raise ReviewError(f"output {item_id!r} was produced by model version {it.model_version!r}, which is "
                              f"no longer registered in the review store; its verdicts are refused "
                              f"(review outputs of an active version instead)", status=410)
        row = dict(item_id=item_id, kind=it.kind, task_id=it.task_id, reviewer=reviewer, reviewer_kind=reviewer_kind,
                   verdict=verdict, reason=reason, role=role, time=now(), version=it.version, note=note,
                   idem_key=idem_key)
        try:
            with self.engine.begin() as c:
                old = self._existing(c, item_id, reviewer, role)
                if old is None:
                    seq = c.execute(insert(self.verdicts).values(**row)).inserted_primary_key[0]
                    return Verdict(seq=seq, **row), True
        except IntegrityError:  # a concurrent double submit won the race; compare with it below
            pass
        with self.reader.connect() as c:
            old = self._existing(c, item_id, reviewer, role)
        if old is None:  # pragma: no cover - the unique constraint fired, so a row exists
            raise ReviewError(f"verdict on {item_id!r} by {reviewer!r} could not be stored; retry")
        same = old.verdict == verdict and old.reason == reason and (
            not idem_key or not old.idem_key or old.idem_key == idem_key)
        if not same:
            raise ReviewError(f"{reviewer!r} already gave {old.verdict!r} on item {item_id!r} at {old.time}; "
                              f"verdicts are append-only and are not changed", status=409)
        return old, False

    def _existing(self, c, item_id: str, reviewer: str, role: str) -> Verdict | None:
        v = self.verdicts.c
        r = c.execute(select(self.verdicts).where(v.item_id == item_id, v.reviewer == reviewer, v.role == role)
                      ).mappings().first()
        return Verdict(**r) if r is not None else None

    def verdicts_of(self, *, kinds: tuple[str, ...] | list[str] = KINDS, item_id: str | None = None,
                    task_id: str | None = None) -> list[Verdict]:
        """Verdict rows in insertion order, optionally of one item or task."""
        v = self.verdicts.c
        q = select(self.verdicts).where(v.kind.in_(list(kinds)))
        if item_id is not None:
            q = q.where(v.item_id == item_id)
        if task_id is not None:
            q = q.where(v.task_id == task_id)
        with self.reader.connect() as c:
            return [Verdict(**r) for r in c.execute(q.order_by(v.seq)).mappings()]

    def state_token(self) -> str:
        """A short fingerprint of the store's state (counts and last sequence numbers): a run
        fingerprint that includes it rebuilds when verdicts arrive."""
        with self.reader.connect() as c:
            parts = [c.execute(text(f"SELECT COUNT(*), COALESCE(MAX(seq), 0) FROM {t.name}")).one()
                     for t in (self.items, self.verdicts, self.model_versions)]
        return "-".join(f"{n}.{m}" for n, m in parts)

    def rejection_rates(self, kinds: tuple[str, ...] = ("output",), *, window: int = 50, prior: float = 0.1,
                        strength: float = 5.0, tasks: list[str] | None = None,
                        model_versions: list[str] | None = None) -> dict[str, tuple[float, int]]:
        """Per task ``(rate, n)``: see :func:`mixtune.review.queue.rejection_rates`."""
        from mixtune.review.queue import rejection_rates  # why: import cycle (queue builds on the store)

        return rejection_rates(self, kinds=kinds, window=window, prior=prior, strength=strength, tasks=tasks,
                               model_versions=model_versions)


def _item(r: Any) -> Item:
    d = dict(r)
    d["findings"] = json.loads(d["findings"] or "[]")
    d["meta"] = json.loads(d["meta"] or "{}")
    return Item(**d)
