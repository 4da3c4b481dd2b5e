"""The gateway's shadow-log writer: one thread, batched transactions, a stated durability guarantee.

The gateway hands every record over twice: when the user is answered (the answering model's half)
and when the other model's answer arrives (the complete pair, an upsert of the same request id).
Both go through :meth:`ShadowWriter.submit`, which only appends to a list under a lock; masking
and SQL run in the writer thread, off the event loop, so users never wait for the database unless
they asked to.

Durability (``durability``):

* ``sync`` — the answer is sent only after its record is committed (group commit: every record
  that arrived while the previous transaction ran goes into the next one). A killed gateway loses
  no answered request, only pending second halves (the mirrored model's answer). When the record
  cannot be committed the user gets 503 instead of an answer that would not be in the log.
* ``batch`` (default) — records are committed at least every ``window_ms``. A killed gateway loses
  at most the requests answered in the last ``window_ms`` plus the duration of one write; users
  never wait for, or fail because of, the database.

A batch that fails is retried record by record, so one record the database refuses can never
take the others down with it; a record that still fails is retried on the next flushes (a locked
or full database may recover) and counted lost after ``_MAX_TRIES``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy.exc import OperationalError

from mixtune.release.openai_compat import content_text
from mixtune.release.store import ShadowStore

log = logging.getLogger("mixtune.gateway")

DURABILITY = ("sync", "batch")
_MAX_BATCH = 512
_MAX_TRIES = 5
_RETRY_PAUSE_S = 1.0


class ShadowWriter:
    """Batches records into ``store`` from a daemon thread (see module docstring)."""

    def __init__(self, store: ShadowStore, mask: Callable[[str], str], *, durability: str = "batch",
                 window_ms: float = 100.0, max_pending: int = 10_000, stats: dict | None = None):
        if durability not in DURABILITY:
            raise ValueError(f"durability must be one of {DURABILITY}, got {durability!r}")
        self.store, self.mask = store, mask
        self.sync = durability == "sync"
        self.window_s = max(0.001, window_ms / 1000)
        self.max_pending = max_pending
        self.stats = stats if stats is not None else {}
        for k in ("records_written", "records_lost", "write_failures"):
            self.stats.setdefault(k, 0)
        self._pending: list[list] = []  # [record, final, future, tries, masked row, sequence number]
        self._seq = 0
        self._written: dict[str, int] = {}  # request id -> newest sequence number written (bounded)
        self._retry: list[list] = []  # failed records waiting for _retry_at
        self._retry_at = 0.0
        self._cond = threading.Condition()
        self._stats_lock = threading.Lock()
        self._prompts: dict[str, str] = {}  # masked prompt of half-written records (masked once)
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.last_commit = time.monotonic()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Warm up, then start the thread. The masker's first call builds its tables (≈0.2 s): paid at
        start-up, not by the first batch, which would otherwise widen the loss window of a kill."""
        self.mask("warm-up 预热：电话１３８１２３４５６７８，a@b.io")  # CJK and full-width build tables too
        self.store.warm_up()
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="shadow-writer", daemon=True)
        self._thread.start()

    def close(self, timeout: float) -> int:
        """Write what is pending (bounded by ``timeout``) and stop; returns records left unwritten."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cond:
            left = len(self._pending) + len(self._retry)
            if left:
                self._count("records_lost", left)
                log.error("shutdown: %d shadow records could not be written", left)
            self._pending.clear()
            self._retry.clear()
        return left

    def pending(self) -> int:
        return len(self._pending) + len(self._retry)

    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[key] += n

    # -- the event loop's side -------------------------------------------------------------
    def submit(self, record: dict, *, final: bool, wait: bool = False) -> asyncio.Future | None:
        """Queue a copy of ``record``; with ``wait`` a future resolves to True once it is committed.

        ``final``: no later version of this request id follows (its cached masked prompt is freed).
        """
        fut = self._loop.create_future() if wait else None
        with self._cond:
            if len(self._pending) >= self.max_pending:
                full = True
            else:
                full = False
                self._seq += 1
                self._pending.append([dict(record), final, fut, 0, None, self._seq])
                if self.sync or len(self._pending) >= _MAX_BATCH:
                    self._cond.notify()
        if full:  # the database is far behind: lose the record, never block or fail the user in batch mode
            self._count("records_lost")
            log.error("record %s lost: %d records waiting for the database", record.get("request_id"),
                      self.max_pending)
            if fut is not None:
                fut.set_result(False)
        return fut

    def _resolve(self, fut: asyncio.Future | None, ok: bool) -> None:
        if fut is not None and not fut.done():
            fut.set_result(ok)

    # -- the thread's side -----------------------------------------------------------------
    def _masked(self, record: dict, final: bool) -> dict:
        rid = record["request_id"]
        prompt = self._prompts.pop(rid, None) if final else self._prompts.get(rid)
        if prompt is None:
            prompt = json.dumps([{"role": m.get("role"), "content": self.mask(content_text(m.get("content")))}
                                 for m in record["prompt"] if isinstance(m, dict)], ensure_ascii=False)
            if not final:
                self._prompts[rid] = prompt
                if len(self._prompts) > 4 * self.max_pending:  # mirrors that never finished
                    self._prompts.pop(next(iter(self._prompts)))
        out = dict(record, prompt=prompt)
        for k in ("champion_answer", "candidate_answer", "champion_error", "candidate_error"):
            if isinstance(out.get(k), str) and out[k]:
                out[k] = self.mask(out[k])
        return out

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping:
                    now = time.monotonic()
                    retry_due = bool(self._retry) and now >= self._retry_at
                    if not self.sync:  # batch: at least every window, sooner when a batch is full
                        self._cond.wait(self.window_s)
                        break
                    if self._pending or retry_due:  # sync: at once (group commit)
                        break
                    self._cond.wait(max(0.0, self._retry_at - now) if self._retry else None)
                batch, self._pending = self._pending[:_MAX_BATCH], self._pending[_MAX_BATCH:]
                stopping = self._stopping
                # failed records wait for their pause; new records never wait behind them
                if self._retry and (stopping or time.monotonic() >= self._retry_at):
                    batch, self._retry = self._retry + batch, []
            if batch:
                self._flush(batch)
            elif stopping and not self._retry:
                return

    def _write(self, rows: list[dict], items: list) -> list:
        """Insert ``rows``; returns the items whose rows are not written."""
        try:
            self.store.insert_records(rows)
            return []
        except OperationalError as e:  # locked, full, unreachable: the whole batch waits for a retry
            self._count("write_failures")
            log.error("writing %d records failed (%s): will retry", len(rows), str(e).splitlines()[0][:200])
            return list(items)
        except Exception as e:  # the data: find the record at fault, write the others
            self._count("write_failures")
            log.error("writing %d records failed (%s): retrying one by one", len(rows), type(e).__name__)
        failed = []
        for row, item in zip(rows, items, strict=True):
            try:
                self.store.insert_records([row])
            except Exception:
                failed.append(item)
        return failed

    def _flush(self, batch: list) -> None:
        rows, items = [], []
        for item in batch:  # [record, final, future, tries, masked row or None, sequence number]
            if item[3] and self._written.get(item[0]["request_id"], 0) > item[5]:
                continue  # a retried half whose newer version (the pair) is already written
            try:
                if item[4] is None:  # masked once, also across retries
                    item[4] = self._masked(item[0], item[1])
                rows.append(item[4])
                items.append(item)
            except Exception as e:  # a record the masker cannot read is dropped alone
                log.error("record %s dropped: %s", item[0].get("request_id"), type(e).__name__)
                self._count("records_lost")
                self._loop.call_soon_threadsafe(self._resolve, item[2], False)
        failed = self._write(rows, items) if rows else []
        failed_ids = {id(it) for it in failed}
        done = [it for it in items if id(it) not in failed_ids]
        self._count("records_written", len(done))
        self.last_commit = time.monotonic()
        for it in done:
            rid = it[0]["request_id"]
            self._written[rid] = max(self._written.get(rid, 0), it[5])
        while len(self._written) > 4 * self.max_pending:
            self._written.pop(next(iter(self._written)))
        for it in done:
            self._loop.call_soon_threadsafe(self._resolve, it[2], True)
        retry = []
        for it in failed:
            self._loop.call_soon_threadsafe(self._resolve, it[2], False)  # sync: the user is not kept waiting
            it[2], it[3] = None, it[3] + 1
            if it[3] < _MAX_TRIES:
                retry.append(it)
            else:
                self._count("records_lost")
                log.error("record %s lost after %d attempts", it[0].get("request_id"), _MAX_TRIES)
        if retry:
            with self._cond:
                self._retry.extend(retry)
                self._retry_at = time.monotonic() + _RETRY_PAUSE_S
