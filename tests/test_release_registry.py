"""Model registry: gated transitions, champion alias, rollback, append-only audit, transactions, CLI."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
import typer
from typer.testing import CliRunner

from mixtune.commands import gate as gate_cmd
from mixtune.commands import registry as registry_cmd
from mixtune.errors import MixtuneError
from mixtune.release.registry import Registry, RegistryError

VALIDATE_OK = {"gate": "validate", "status": "pass", "checks": []}
CANARY_OK = {"gate": "canary", "status": "pass", "checks": []}
_N = iter(range(10**6))


def model_dir(root, name: str | None = None) -> str:
    """A fake model folder with unique weights (the registry hashes them)."""
    d = root / "models" / (name or f"m{next(_N)}")
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.safetensors").write_bytes(f"weights of {d}".encode())
    return str(d)


@pytest.fixture
def reg(tmp_path):
    r = Registry(f"sqlite:///{tmp_path / 'reg.db'}")
    r.root = tmp_path
    yield r
    r.close()


def gated(reg: Registry, model_id: int, to_state: str, decision: dict | None = None):
    """Record a passing gate decision (like `mixtune gate --model-id`) and transition with it."""
    gate = {"validated": VALIDATE_OK, "released": CANARY_OK}.get(to_state)
    ev = reg.record_gate(model_id, decision or gate, who="ci") if gate else None
    return reg.transition(model_id, to_state, who="ci", why=to_state, evidence=ev)


def release(reg: Registry, name: str = "fr", path: str | None = None) -> int:
    m = reg.register(name, path or model_dir(reg.root))
    for state in ("validated", "canary", "released"):
        gated(reg, m.id, state)
    return m.id


def test_lifecycle_versions_and_champion_alias(reg):
    a = reg.register("fr", model_dir(reg.root), metrics={"primary": 0.5})
    assert (a.version, a.state, a.metrics) == (1, "trained", {"primary": 0.5})
    assert len(a.weights_sha256) == 64
    assert reg.register("other", model_dir(reg.root)).version == 1
    assert reg.register("fr", model_dir(reg.root)).version == 2
    gated(reg, a.id, "validated")
    gated(reg, a.id, "canary")
    rec = gated(reg, a.id, "released")
    assert rec.state == "released" and rec.aliases == ["champion"]
    assert reg.get_alias("fr", "champion").id == a.id
    assert reg.get_alias("other", "champion") is None
    assert [m.version for m in reg.list("fr")] == [1, 2] and len(reg.list()) == 3


@pytest.mark.parametrize("path,target,recorded,message", [
    ([], "canary", None, "cannot move to 'canary'"),
    ([], "released", CANARY_OK, "cannot move to 'released'"),
    ([], "validated", None, "needs a passing 'validate' gate decision recorded by this registry"),
    ([], "validated", CANARY_OK, "needs a passing 'validate' gate decision recorded"),
    ([], "validated", {**VALIDATE_OK, "status": "inconclusive"}, "'inconclusive', not 'pass'"),
    (["validated", "canary"], "released", None, "needs a passing 'canary' gate decision"),
    (["validated", "canary"], "released", {**CANARY_OK, "status": "fail"}, "'fail', not 'pass'"),
    (["rejected"], "validated", VALIDATE_OK, "none: it is final"),
    ([], "shipped", None, "unknown state"),
])
def test_refused_transitions_change_nothing(reg, path, target, recorded, message):
    m = reg.register("fr", model_dir(reg.root))
    for state in path:
        gated(reg, m.id, state)
    if recorded is not None:
        reg.record_gate(m.id, recorded)
    before_state, before_audit = reg.show(m.id).state, reg.audit_count()
    with pytest.raises(RegistryError, match=message):
        reg.transition(m.id, target, who="ci", why="try")  # evidence: the newest recorded decision
    assert reg.show(m.id).state == before_state
    assert reg.audit_count() == before_audit


def test_unknown_model_id(reg):
    with pytest.raises(RegistryError, match="unknown model id 42"):
        reg.transition(42, "validated", who="x", why="y", evidence=VALIDATE_OK)
    with pytest.raises(RegistryError, match="unknown model id 42"):
        reg.show(42)


def test_rollback_restores_previous_champion_and_is_audited(reg):
    first = release(reg)
    second = release(reg)
    third = release(reg)
    assert reg.get_alias("fr", "champion").id == third
    restored = reg.rollback("fr", who="oncall", why="latency regression")
    assert restored.id == second and reg.get_alias("fr", "champion").id == second
    assert reg.show(third).state == "rolled_back"
    trail = reg.show(third).audit
    assert trail[-1]["action"] == "rollback" and trail[-1]["who"] == "oncall"
    assert trail[-1]["evidence"] == {"rolled_back_model_id": third, "restored_model_id": second}
    assert reg.show(second).audit[-1]["evidence"]["previous_model_id"] == third
    # A second rollback skips the rolled-back version and goes one further back.
    assert reg.rollback("fr", who="oncall", why="still bad").id == first
    with pytest.raises(RegistryError, match="no earlier released champion"):
        reg.rollback("fr", who="oncall", why="again")
    with pytest.raises(RegistryError, match="no champion"):
        reg.rollback("nothing", who="oncall", why="x")


def test_aliases_challenger_and_guarded_champion(reg):
    champ = release(reg)
    cand = reg.register("fr", model_dir(reg.root))
    reg.set_alias("fr", "challenger", cand.id, who="ci", why="shadow")
    assert reg.get_alias("fr", "challenger").id == cand.id
    with pytest.raises(RegistryError, match="moves only by releasing"):
        reg.set_alias("fr", "champion", cand.id)
    with pytest.raises(RegistryError, match="belongs to 'fr'"):
        reg.set_alias("other", "challenger", cand.id)
    for state in ("validated", "canary", "released"):
        gated(reg, cand.id, state)
    assert reg.get_alias("fr", "champion").id == cand.id
    assert reg.get_alias("fr", "challenger") is None
    assert reg.show(champ).state == "released"  # superseded, still a rollback target


def test_audit_log_only_grows_and_database_refuses_edits(reg, tmp_path):
    counts = [reg.audit_count()]
    m = reg.register("fr", model_dir(reg.root))
    counts.append(reg.audit_count())
    for state in ("validated", "canary", "released"):
        gated(reg, m.id, state)
        counts.append(reg.audit_count())
    assert all(b > a for a, b in zip(counts, counts[1:]))
    ids = [a["id"] for a in reg.show(m.id).audit]
    assert ids == sorted(ids)
    engine = sa.create_engine(reg.url)
    for stmt in ("UPDATE audit_log SET who = 'mallory'", "DELETE FROM audit_log"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as c:
            c.execute(sa.text(stmt))
    engine.dispose()
    assert reg.audit_count() == counts[-1]


def test_failure_mid_transition_rolls_back_everything(reg, monkeypatch):
    old = release(reg)
    m = reg.register("fr", model_dir(reg.root))
    gated(reg, m.id, "validated")
    gated(reg, m.id, "canary")
    ev = reg.record_gate(m.id, CANARY_OK)
    before = reg.audit_count()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    # The state update and its audit row are flushed before the alias moves; the failure must undo them.
    monkeypatch.setattr(Registry, "_move_alias", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        reg.transition(m.id, "released", who="ci", why="c", evidence=ev)
    assert reg.show(m.id).state == "canary"
    assert reg.audit_count() == before
    assert reg.get_alias("fr", "champion").id == old


def test_bare_sqlite_path_and_bad_url(tmp_path):
    r = Registry(str(tmp_path / "plain.db"))
    assert r.register("fr", model_dir(tmp_path)).id == 1
    r.close()
    with pytest.raises(MixtuneError, match="cannot open registry database"):
        Registry("nosuchdialect://x")


def _app() -> typer.Typer:
    app = typer.Typer()
    gate_cmd.register(app)
    registry_cmd.register(app)
    return app


def test_registry_cli_end_to_end(tmp_path):
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    runner = CliRunner()

    def run(*args):
        return runner.invoke(_app(), ["registry", *args, "--db", db])

    assert run("register", "fr", model_dir(tmp_path)).exit_code == 0
    res = run("promote", "1", "--why", "skip", "--to", "canary")
    assert isinstance(res.exception, RegistryError) and "cannot move to 'canary'" in str(res.exception)
    res = run("promote", "1", "--why", "no evidence")
    assert isinstance(res.exception, RegistryError) and "needs a passing 'validate'" in str(res.exception)
    # what `mixtune gate --model-id 1 --db ...` appends: the registry's recorded, signed decisions
    reg = Registry(db)
    gates = tmp_path / "gates.jsonl"
    lines = [reg.record_gate(1, {**VALIDATE_OK, "status": "fail"}), reg.record_gate(1, VALIDATE_OK),
             {**CANARY_OK, "meta": {"model_id": 7}}, reg.record_gate(1, CANARY_OK)]
    reg.close()
    gates.write_text("".join(json.dumps(d) + "\n" for d in lines))
    for _ in range(3):  # trained -> validated -> canary -> released, evidence picked per gate
        res = run("promote", "1", "--why", "ok", "--evidence", str(gates), "--who", "alice")
        assert res.exit_code == 0, res.output
    assert "now champion" in res.output
    listed = json.loads(run("list", "--json").output)
    assert listed[0]["state"] == "released" and listed[0]["aliases"] == ["champion"]
    shown = json.loads(run("show", "1", "--json").output)
    assert [a["to_state"] for a in shown["audit"] if a["action"] == "transition"] == ["validated", "canary", "released"]
    stored = {k: v for k, v in lines[-1].items() if k != "signature"}
    assert shown["audit"][-2]["evidence"] == stored and shown["audit"][-2]["who"] == "alice"
    assert "audit trail" in run("show", "1").output
    res = run("show", "9")
    assert isinstance(res.exception, RegistryError) and "unknown model id 9" in str(res.exception)
    res = run("rollback", "fr", "--why", "bad")
    assert isinstance(res.exception, RegistryError) and "no earlier released champion" in str(res.exception)
    res = run("verify")
    assert res.exit_code == 0 and "registry audit OK" in res.output
