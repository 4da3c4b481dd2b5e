"""The shadow-traffic log: paired champion/candidate answers, user feedback and expert verdicts.

SQLAlchemy Core over any URL (SQLite file by default, Postgres in production). Three tables:

* ``shadow_records`` — one row per request id: time, source (gateway/replay), user hash, route,
  which model answered, task id, masked prompt, both answers, latencies and errors.
* ``shadow_feedback`` — user feedback posted to the gateway (rating and/or label, comment).
* ``shadow_reviews`` — blind expert review: which model was shown as "A" (kept here, not in the
  exported file, so reviewers cannot see it) and the imported verdict.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from mixtune.errors import ConfigError

RECORD_COLUMNS = ("request_id", "ts", "source", "user_hash", "routed_to", "answered_by", "task_id",
                  "prompt", "champion_answer", "candidate_answer", "champion_latency_ms",
                  "candidate_latency_ms", "champion_error", "candidate_error", "params")


class ShadowStore:
    """Thread-safe access to the shadow log at SQLAlchemy ``url`` (tables created on open)."""

    def __init__(self, url: str):
        import sqlalchemy as sa
        from sqlalchemy.pool import StaticPool

        if "://" not in url:
            raise ConfigError(f"not a database URL: {url!r} (expected e.g. sqlite:///shadow.db)", where="--db")
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            # one connection shared across threads for :memory:, a timeout so writers wait for locks
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
            if url in ("sqlite://", "sqlite:///:memory:"):
                kwargs["poolclass"] = StaticPool
        try:
            self.engine = sa.create_engine(url, **kwargs)
        except Exception as e:
            raise ConfigError(f"cannot open database {url!r}: {e}", where="--db") from e
        md = sa.MetaData()
        text, flt = sa.Text, sa.Float
        self.records = sa.Table(
            "shadow_records", md,
            sa.Column("request_id", sa.String(80), primary_key=True),
            sa.Column("ts", flt, nullable=False, index=True),
            sa.Column("source", sa.String(16), nullable=False),
            sa.Column("user_hash", sa.String(32)),
            sa.Column("routed_to", sa.String(16), nullable=False),
            sa.Column("answered_by", sa.String(16)),
            sa.Column("task_id", sa.String(120)),
            sa.Column("prompt", text, nullable=False),
            sa.Column("champion_answer", text), sa.Column("candidate_answer", text),
            sa.Column("champion_latency_ms", flt), sa.Column("candidate_latency_ms", flt),
            sa.Column("champion_error", text), sa.Column("candidate_error", text),
            sa.Column("params", text),
        )
        self.feedback = sa.Table(
            "shadow_feedback", md,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("request_id", sa.String(80), nullable=False, index=True),
            sa.Column("ts", flt, nullable=False),
            sa.Column("rating", flt), sa.Column("label", sa.String(64)), sa.Column("comment", text),
        )
        self.reviews = sa.Table(
            "shadow_reviews", md,
            sa.Column("request_id", sa.String(80), primary_key=True),
            sa.Column("a_is", sa.String(16), nullable=False),
            sa.Column("exported_ts", flt, nullable=False),
            sa.Column("verdict", sa.String(16)), sa.Column("reviewer", sa.String(120)),
            sa.Column("comment", text), sa.Column("verdict_ts", flt),
        )
        try:
            md.create_all(self.engine)
        except Exception as e:
            raise ConfigError(f"cannot create tables in {url!r}: {e}", where="--db") from e

    # -- records ---------------------------------------------------------------------------
    def insert_records(self, rows: Iterable[dict]) -> int:
        """Insert records in one transaction; a repeated request id replaces the older row."""
        rows = [{c: r.get(c) for c in RECORD_COLUMNS} for r in rows]
        for r in rows:
            if isinstance(r["params"], dict):
                r["params"] = json.dumps(r["params"], ensure_ascii=False, sort_keys=True)
        if not rows:
            return 0
        with self.engine.begin() as conn:
            conn.execute(self.records.delete().where(
                self.records.c.request_id.in_([r["request_id"] for r in rows])))
            conn.execute(self.records.insert(), rows)
        return len(rows)

    def load_records(self, source: str | None = None) -> list[dict]:
        """All records in time order (optionally only one ``source``)."""
        q = self.records.select().order_by(self.records.c.ts, self.records.c.request_id)
        if source:
            q = q.where(self.records.c.source == source)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def request_ids(self) -> set[str]:
        """Ids already recorded (replay skips them, so an interrupted replay resumes)."""
        with self.engine.connect() as conn:
            return {r[0] for r in conn.execute(self.records.select().with_only_columns(
                self.records.c.request_id))}

    def count_records(self) -> int:
        import sqlalchemy as sa

        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(self.records)).scalar_one())

    # -- feedback --------------------------------------------------------------------------
    def add_feedback(self, request_id: str, rating: float | None, label: str | None,
                     comment: str | None) -> None:
        with self.engine.begin() as conn:
            conn.execute(self.feedback.insert(), [{"request_id": request_id, "ts": time.time(),
                                                   "rating": rating, "label": label, "comment": comment}])

    def load_feedback(self) -> list[dict]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(self.feedback.select().order_by(self.feedback.c.id))]

    # -- expert review ---------------------------------------------------------------------
    def save_assignments(self, assignments: dict[str, str]) -> None:
        """Remember which model was shown as "A" for each exported request id."""
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(self.reviews.delete().where(self.reviews.c.request_id.in_(list(assignments))))
            conn.execute(self.reviews.insert(), [{"request_id": k, "a_is": v, "exported_ts": now}
                                                 for k, v in assignments.items()])

    def load_reviews(self) -> dict[str, dict]:
        with self.engine.connect() as conn:
            return {r.request_id: dict(r._mapping) for r in conn.execute(self.reviews.select())}

    def set_verdicts(self, verdicts: list[dict]) -> None:
        """Store imported verdicts (``request_id``, ``verdict`` in candidate/champion/tie, ...)."""
        now = time.time()
        with self.engine.begin() as conn:
            for v in verdicts:
                conn.execute(self.reviews.update().where(self.reviews.c.request_id == v["request_id"])
                             .values(verdict=v["verdict"], reviewer=v.get("reviewer"),
                                     comment=v.get("comment"), verdict_ts=now))

    def close(self) -> None:
        self.engine.dispose()
