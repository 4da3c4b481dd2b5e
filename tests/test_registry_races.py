"""Registry races from two processes (issue 14), and tamper detection, on SQLite and, with
MIXTUNE_TEST_PG_URL, PostgreSQL.

Each child widens the race window by sleeping inside its transaction right after reading the
state it will change (the champion alias, or the next version number). Without serialisation
(SQLite ``BEGIN IMMEDIATE``; PostgreSQL advisory + ``FOR UPDATE`` locks) both would read the same
state and one would fail with 'database is locked', a lost compare-and-set or an IntegrityError;
with it the second waits and then sees the first one's result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from mixtune.release.registry import Registry

SRC = str(Path(__file__).resolve().parents[1] / "src")
CHILD = r"""
import json, sys, time
from pathlib import Path
from mixtune.release.registry import Registry, RegistryError

url, op, arg, ready, go, delay = sys.argv[1:7]
for hook in ("_champion", "_next_version"):
    def slow(s, name, _orig=getattr(Registry, hook)):
        out = _orig(s, name)
        time.sleep(float(delay))  # inside the transaction, after the read
        return out
    setattr(Registry, hook, staticmethod(slow))
reg = Registry(url)
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.002)
try:
    if op == "release":
        rec = reg.transition(int(arg), "released", who="b", why="race")
    elif op == "rollback":
        name, expected = arg.split(":")
        rec = reg.rollback(name, who="a", why="race", expected_champion=int(expected))
    else:
        name, path = arg.split(":", 1)
        rec = reg.register(name, path)
    print(json.dumps({"ok": True, "id": rec.id, "version": rec.version, "t": time.time()}))
except RegistryError as e:
    print(json.dumps({"ok": False, "error": str(e), "t": time.time()}))
"""


def race(tmp_path: Path, url: str, *jobs: tuple[str, str], delay: float = 0.4) -> list[dict]:
    """Run ``(op, arg)`` jobs in separate processes released at the same instant."""
    go = tmp_path / f"go-{uuid.uuid4().hex}"
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    procs, readies = [], []
    for i, (op, arg) in enumerate(jobs):
        ready = tmp_path / f"ready-{go.name}-{i}"
        readies.append(ready)
        procs.append(subprocess.Popen([sys.executable, "-c", CHILD, url, op, arg, str(ready), str(go), str(delay)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    deadline = time.time() + 60
    while not all(r.exists() for r in readies):
        assert time.time() < deadline and all(p.poll() is None for p in procs), \
            [p.communicate()[1][-2000:] for p in procs if p.poll() is not None]
        time.sleep(0.01)
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]  # a raw traceback (IntegrityError, OperationalError) fails here
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'reg.db'}"
        return
    base = os.environ.get("MIXTUNE_TEST_PG_URL")
    if not base:
        pytest.skip("MIXTUNE_TEST_PG_URL is not set, so there is no PostgreSQL server to race against")
    schema = f"mixtune_test_{uuid.uuid4().hex[:12]}"  # a private schema: triggers and rows go with it
    admin = sa.create_engine(base)
    with admin.begin() as c:
        c.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield base + ("&" if "?" in base else "?") + f"options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as c:
            c.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def _model(tmp_path: Path, tag: str) -> str:
    d = tmp_path / f"model-{tag}"
    d.mkdir()
    (d / "model.safetensors").write_text(f"weights {tag}")
    return str(d)


def _gate_and_release(reg: Registry, model_id: int, release: bool = True) -> None:
    reg.transition(model_id, "validated", who="ci", why="v",
                   evidence=reg.record_gate(model_id, {"gate": "validate", "status": "pass"}))
    reg.transition(model_id, "canary", who="ci", why="c")
    reg.record_gate(model_id, {"gate": "canary", "status": "pass"})
    if release:
        reg.transition(model_id, "released", who="ci", why="r")


def test_rollback_racing_a_release_keeps_the_champion_consistent(tmp_path, url):
    name = f"fr-{uuid.uuid4().hex[:8]}"
    reg = Registry(url)
    v1, v2, v3 = (reg.register(name, _model(tmp_path, t)).id for t in ("v1", "v2", "v3"))
    _gate_and_release(reg, v1)
    _gate_and_release(reg, v2)
    _gate_and_release(reg, v3, release=False)  # in canary, its canary decision recorded
    assert reg.get_alias(name, "champion").id == v2
    rollback, release = race(tmp_path, url, ("rollback", f"{name}:{v2}"), ("release", str(v3)))
    # the release never loses: it either goes first, or waits for the rollback and then applies
    assert release["ok"], release
    champion = reg.get_alias(name, "champion")
    assert champion.id == v3 and reg.show(v3).state == "released"
    if rollback["ok"]:  # the rollback went first: v2 retired, v1 restored, then v3 released over v1
        assert rollback["t"] <= release["t"] and rollback["id"] == v1
        assert reg.show(v2).state == "rolled_back"
        assert reg.show(v3).audit[-1]["evidence"]["previous_model_id"] == v1
    else:  # the release went first: the rollback saw the champion move and changed nothing
        assert f"@champion is now model {v3}, not {v2}" in rollback["error"]
        assert reg.show(v2).state == "released"
        assert reg.show(v3).audit[-1]["evidence"]["previous_model_id"] == v2
    assert reg.verify() == []
    reg.close()


def test_concurrent_register_of_the_same_name_gets_distinct_versions(tmp_path, url):
    name = f"fr-{uuid.uuid4().hex[:8]}"
    reg = Registry(url)
    a, b = race(tmp_path, url, ("register", f"{name}:{_model(tmp_path, 'a')}"),
                ("register", f"{name}:{_model(tmp_path, 'b')}"))
    assert a["ok"] and b["ok"], (a, b)
    assert sorted([a["version"], b["version"]]) == [1, 2]
    assert [m.version for m in reg.list(name)] == [1, 2] and reg.verify() == []
    reg.close()


def test_tampering_is_detected_and_triggers_restored_on_both_backends(tmp_path, url):
    name = f"fr-{uuid.uuid4().hex[:8]}"
    reg = Registry(url)
    m = reg.register(name, _model(tmp_path, "t")).id
    _gate_and_release(reg, m)
    row = reg.show(m).audit[1]["id"]
    reg.close()
    raw = sa.create_engine(url)
    switch_off = ("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update" if raw.dialect.name == "postgresql"
                  else "DROP TRIGGER audit_log_no_update")
    with raw.begin() as c:
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), c.begin_nested():
            c.execute(sa.text("UPDATE audit_log SET who = 'mallory'"))
        c.execute(sa.text(switch_off))
        c.execute(sa.text("UPDATE audit_log SET who = 'mallory' WHERE id = :i"), {"i": row})
    reg = Registry(url)
    problems = reg.verify()
    assert problems[0] == f"audit row {row} was rewritten (its content no longer matches its hash)"
    assert any("audit_log_no_update is" in p for p in problems[1:]), problems
    reg.close()
    for stmt in ("DELETE FROM audit_log", "TRUNCATE audit_log" if raw.dialect.name == "postgresql" else None):
        if stmt:
            with pytest.raises(sa.exc.DBAPIError, match="append-only"), raw.begin() as c:  # enforced again
                c.execute(sa.text(stmt))
    raw.dispose()
