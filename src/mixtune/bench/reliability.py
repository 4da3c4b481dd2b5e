"""Reliability fault suite (``mixtune bench reliability``): the gateway under load while things break.

Load is concurrency 8 through a real ``mixtune gateway`` process; the fake upstreams
(:class:`~mixtune.bench.gateway_overhead.FakeUpstream`) run in this process so a fault can be
switched on live. For every fault the result says how many requests were answered (HTTP 200), how
many users saw an error, and how many answered requests are missing from the shadow log, measured
against the durability guarantee (``sync``: none may be missing; ``batch``: only requests answered
within ``window_ms`` — plus an allowance for the write in progress — before a kill).

Faults: the candidate slow, down, crashing; the champion restarting; the gateway SIGKILLed at a
random point (batch and sync); the store's disk full (a small tmpfs when mounting works, i.e. as
root, else a file-size limit on the gateway process; the result says which); the store locked by
another process for a few seconds.
"""

from __future__ import annotations

import asyncio
import os
import random
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from mixtune.bench.gateway_overhead import FakeUpstream, _free_port, _stop, _wait_up
from mixtune.bench.harness import Context, row
from mixtune.release.server import ServerThread
from mixtune.release.store import ShadowStore

KEY = "bench"
WINDOW_MS = 100.0
WRITE_ALLOWANCE_S = 0.25  # a write in progress when the gateway dies; loaded machines are slow
BODY = {"model": "any", "messages": [{"role": "user", "content": "流动性覆盖率是多少？"}], "max_tokens": 16}


def start_gateway(champion: str, candidate: str, db: str, *, durability: str = "batch", window_ms: float = WINDOW_MS,
                  args: tuple[str, ...] = (), fsize_limit: int | None = None) -> tuple[subprocess.Popen, str]:
    """A ``mixtune gateway`` process on a free port; returns (process, base url) once it answers."""
    port = _free_port()

    def limit() -> None:  # runs in the child: its files may not grow past the limit ("disk full")
        if fsize_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, fsize_limit))

    proc = subprocess.Popen(
        [sys.executable, "-m", "mixtune", "gateway", "--champion", champion, "--candidate", candidate, "--db", db,
         "--host", "127.0.0.1", "--port", str(port), "--durability", durability, "--window-ms", str(window_ms),
         "--mirror-timeout", "1", "--canary-timeout", "1", "--drain-timeout", "3", *args],
        env=dict(os.environ, MIXTUNE_API_KEY=KEY), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=limit if fsize_limit is not None else None)
    url = f"http://127.0.0.1:{port}"
    _wait_up(url + "/health", proc, 90)
    return proc, url


async def drive(url: str, n: int, concurrency: int = 8, *, during=None, body: dict | None = None) -> list[dict]:
    """Send ``n`` chat requests at ``concurrency``; ``during(sent_so_far)`` runs after each answer.

    Returns one dict per request: ``rid`` (None on error), ``status`` (0 for a transport error), ``t``.
    """
    import httpx

    out: list[dict] = []
    counter = iter(range(n))
    async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {KEY}"},
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker() -> None:
            for i in counter:
                try:
                    r = await client.post(url + "/v1/chat/completions", json=dict(body or BODY, user=f"u{i % 31}"))
                    rec = {"rid": r.headers.get("x-request-id") if r.status_code == 200 else None,
                           "status": r.status_code, "t": time.monotonic()}
                except httpx.HTTPError:
                    rec = {"rid": None, "status": 0, "t": time.monotonic()}
                out.append(rec)
                if during is not None:
                    await during(len(out))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


def stored_ids(db: str) -> set[str]:
    store = ShadowStore(db)
    try:
        return store.request_ids()
    finally:
        store.close()  # no open file left on a tmpfs that is about to be unmounted


def _summary(fault: str, results: list[dict], stored: set[str], *, guarantee: str, allowed: set[str] = frozenset(),
             note: str = "") -> dict:
    answered = [r for r in results if r["status"] == 200]
    missing = {r["rid"] for r in answered} - stored
    return {"fault": fault, "requests": len(results), "answered": len(answered),
            "user_errors": len(results) - len(answered), "lost": len(missing),
            "lost_beyond_guarantee": len(missing - set(allowed)), "guarantee": guarantee, "note": note}


def _phases(tmp: Path, n: int, *, down_s: float = 1.0, lock_s: float = 3.0) -> list[dict]:
    """Live faults on one batch gateway: candidate slow, down, crashing; champion restart; store locked."""
    champ_app, cand_app = FakeUpstream("champ"), FakeUpstream("cand")
    champ = ServerThread(champ_app, graceful_timeout=0.5).start()
    cand = ServerThread(cand_app, graceful_timeout=0.5).start()
    db_path = tmp / "phases.db"
    db = f"sqlite:///{db_path}"
    results: dict[str, list[dict]] = {}
    proc, url = start_gateway(champ.url, cand.url, db)  # no --*-model: discovery must recover
    notes = {}
    try:
        asyncio.run(drive(url, 16))  # warm-up
        cand_app.delay_s = 3.0  # beyond --mirror-timeout 1
        results["candidate_slow"] = asyncio.run(drive(url, n))
        cand_app.delay_s = 0.0
        cand.stop()  # connection refused
        results["candidate_down"] = asyncio.run(drive(url, n))
        cand = ServerThread(cand_app, port=int(cand.url.rsplit(":", 1)[1]), graceful_timeout=0.5).start()
        cand_app.mode = "crash"
        half = n // 2

        async def flip(k: int) -> None:
            if k == half:
                cand_app.mode = "reset"

        results["candidate_crashing"] = asyncio.run(drive(url, n, during=flip))
        cand_app.mode = "ok"
        port = int(champ.url.rsplit(":", 1)[1])
        state = {"down_at": None}

        async def restart(k: int) -> None:  # champion down for ~down_s a third of the way in
            nonlocal champ
            if k == n // 3:
                await asyncio.to_thread(champ.stop)
                state["down_at"] = time.monotonic()
            elif state["down_at"] and time.monotonic() - state["down_at"] > down_s:
                state["down_at"] = None
                champ = await asyncio.to_thread(lambda: ServerThread(champ_app, port=port,
                                                                     graceful_timeout=0.5).start())

        results["champion_restart"] = asyncio.run(drive(url, n, during=restart))
        if state["down_at"]:
            champ = ServerThread(champ_app, port=port, graceful_timeout=0.5).start()
        after = asyncio.run(drive(url, 16))  # recovered: every request answered again
        notes["champion_restart"] = (f"502 while the champion is down; after it is back "
                                     f"{sum(r['status'] == 200 for r in after)}/16 answered")
        locker = sqlite3.connect(db_path, timeout=30)

        def hold_lock() -> None:
            locker.execute("BEGIN EXCLUSIVE")
            time.sleep(lock_s)
            locker.rollback()

        t = threading.Thread(target=hold_lock)
        t.start()
        results["store_locked"] = asyncio.run(drive(url, n))
        t.join()
        locker.close()
        notes["store_locked"] = f"another process holds an exclusive lock for {lock_s:g} s during the load"
    finally:
        _stop(proc)  # graceful: drains mirrors, flushes the log
        champ.stop()
        cand.stop()
    stored = stored_ids(db)
    guarantee = "batch: none after a graceful stop"
    return [_summary(k, v, stored, guarantee=guarantee, note=notes.get(k, "")) for k, v in results.items()]


def _kill(tmp: Path, n: int, durability: str, seed: int) -> dict:
    """SIGKILL the gateway at a random point of the load; count answered requests missing from the log."""
    champ_app, cand_app = FakeUpstream("champ"), FakeUpstream("cand", delay_s=2.0)  # mirrors in flight
    db = f"sqlite:///{tmp / f'kill_{durability}.db'}"
    with ServerThread(champ_app, graceful_timeout=0.5) as champ, ServerThread(cand_app, graceful_timeout=0.5) as cand:
        proc, url = start_gateway(champ.url, cand.url, db, durability=durability,
                                  args=("--champion-model", "fake", "--candidate-model", "fake"))
        kill_at = random.Random(seed).randint(n // 4, 3 * n // 4)
        state = {"t": None}

        async def killer(k: int) -> None:
            if k == kill_at and state["t"] is None:
                proc.send_signal(signal.SIGKILL)
                state["t"] = time.monotonic()

        try:
            results = asyncio.run(drive(url, n, during=killer))
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
    kill_t = state["t"] or time.monotonic()
    window = (WINDOW_MS / 1000 + WRITE_ALLOWANCE_S) if durability == "batch" else 0.0
    allowed = {r["rid"] for r in results if r["status"] == 200 and r["t"] > kill_t - window}
    guarantee = (f"batch: only answers of the last {WINDOW_MS:g} ms (+{WRITE_ALLOWANCE_S * 1000:g} ms for the "
                 "write in progress)" if durability == "batch" else "sync: none")
    return _summary(f"gateway_sigkill_{durability}", results, stored_ids(db), guarantee=guarantee, allowed=allowed,
                    note=f"SIGKILL after answer {kill_at} of {n} (seed {seed}); candidate 2 s slow")


def _full_disk(tmp: Path, n: int, durability: str) -> dict:
    """The store's filesystem fills up mid-load: a 1 MiB tmpfs when mount works, else RLIMIT_FSIZE."""
    mnt = tmp / f"tmpfs_{durability}"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                             capture_output=True).returncode == 0 if shutil.which("mount") else False
    db_path = mnt / "full.db"
    db = f"sqlite:///{db_path}"
    ShadowStore(db).close()  # tables exist before the disk fills
    how = "256 KiB tmpfs" if mounted else "RLIMIT_FSIZE 256 KiB on the gateway process (tmpfs mount refused)"
    champ_app, cand_app = FakeUpstream("champ"), FakeUpstream("cand")
    try:
        with ServerThread(champ_app) as champ, ServerThread(cand_app) as cand:
            proc, url = start_gateway(champ.url, cand.url, db, durability=durability,
                                      args=("--champion-model", "fake", "--candidate-model", "fake"),
                                      fsize_limit=None if mounted else 256 * 1024)
            try:
                # a long prompt so the disk fills within the run
                big = dict(BODY, messages=[{"role": "user", "content": "余额" * 400}])
                results = asyncio.run(drive(url, n, body=big))
            finally:
                _stop(proc)
        stored = stored_ids(db)
    finally:
        if mounted and subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)  # lazy: never leave it mounted
    guarantee = ("sync: an answer is refused (503) when its record cannot be written" if durability == "sync"
                 else "batch: a full disk is outside the guarantee; losses are counted and logged")
    return _summary(f"store_disk_full_{durability}", results, stored, guarantee=guarantee,
                    allowed=set() if durability == "sync" else {r["rid"] for r in results}, note=how)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_faults(n: int, *, full: bool, seed: int = 0) -> list[dict]:
    """Every fault (the quick tier skips the sync kill and the disk-full runs); one dict per fault."""
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        faults = _phases(tmp, n, down_s=1.0 if full else 0.5, lock_s=3.0 if full else 1.5)
        faults.append(_kill(tmp, 3 * n, "batch", seed))
        if full:
            faults.append(_kill(tmp, 3 * n, "sync", seed))
            faults.append(_full_disk(tmp, 4 * n, "batch"))
            faults.append(_full_disk(tmp, 4 * n, "sync"))
        for f in faults:
            log(f"reliability: {f}")
    return faults


def run(ctx: Context) -> dict:
    """The ``reliability`` bench suite."""
    n = 200 if ctx.full else 16
    faults = run_faults(n, full=ctx.full, seed=ctx.seeds[0])
    table = [row(f"{f['fault']}: answered / user errors / lost", f"{f['answered']} / {f['user_errors']} / {f['lost']}",
                 target="lost beyond guarantee 0", note=f"{f['requests']} requests; lost beyond guarantee "
                 f"{f['lost_beyond_guarantee']}; {f['guarantee']}" + (f"; {f['note']}" if f["note"] else ""))
             for f in faults]
    return {"faults": faults, "concurrency": 8, "window_ms": WINDOW_MS, "repetitions": 1,
            "lost_beyond_guarantee": sum(f["lost_beyond_guarantee"] for f in faults), "table": table,
            "setup": "mixtune gateway process (durability batch, window 100 ms unless a fault says sync), fake "
                     "upstreams in the bench process, load at concurrency 8, mirror timeout 1 s"}
