"""Registry hardening (issue 14): unforgeable gate evidence, tamper-evident audit, clear errors."""

from __future__ import annotations

import json
import os
import sqlite3
import stat

import pytest
import typer
from typer.testing import CliRunner

from mixtune.commands import gate as gate_cmd
from mixtune.commands import registry as registry_cmd
from mixtune.errors import ConfigError
from mixtune.release.registry import Registry, RegistryError

VALIDATE_OK = {"gate": "validate", "status": "pass", "checks": []}
CANARY_OK = {"gate": "canary", "status": "pass", "checks": []}


def model_dir(root, name="m", content="w") -> str:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "adapter_model.safetensors").write_text(content)
    (d / "adapter_config.json").write_text("{}")
    (d / "README.md").write_text("not a weight file")
    return str(d)


def _app() -> typer.Typer:
    app = typer.Typer()
    gate_cmd.register(app)
    registry_cmd.register(app)
    return app


@pytest.fixture
def db(tmp_path):
    return f"sqlite:///{tmp_path / 'reg.db'}"


def cli(db, *args):
    return CliRunner().invoke(_app(), ["registry", *args, "--db", db])


# ---- item 1: forged evidence ---------------------------------------------------------------------

def test_forged_two_line_gates_file_cannot_release_anything(tmp_path, db):
    forged = tmp_path / "gates.jsonl"
    forged.write_text('{"gate":"validate","status":"pass"}\n{"gate":"canary","status":"pass"}\n')
    # the reproduction: /nonexistent/model is refused at register ...
    res = cli(db, "register", "fr", "/nonexistent/model")
    assert isinstance(res.exception, RegistryError) and "does not exist" in str(res.exception)
    assert json.loads(cli(db, "list", "--json").output) == []
    # ... and a real model cannot be walked to released by the forged file
    assert cli(db, "register", "fr", model_dir(tmp_path)).exit_code == 0
    res = cli(db, "promote", "1", "--why", "forged", "--evidence", str(forged))
    assert isinstance(res.exception, RegistryError)
    assert "not evidence" in str(res.exception) and "no registry signature" in str(res.exception)
    # the same holds for the Python API and for a decision claiming the right model id
    reg = Registry(db)
    for ev in ({**VALIDATE_OK, "meta": {"model_id": 1}},
               {**VALIDATE_OK, "binding": {"model_id": 1, "audit_id": 1}},
               {**VALIDATE_OK, "signature": "0" * 64}):
        with pytest.raises(RegistryError, match="not evidence"):
            reg.transition(1, "validated", who="mallory", why="forged", evidence=ev)
    assert reg.show(1).state == "trained" and reg.get_alias("fr", "champion") is None
    reg.close()


def test_tampered_or_foreign_or_misbound_evidence_is_refused(tmp_path, db):
    reg = Registry(db)
    a = reg.register("fr", model_dir(tmp_path, "a", "wa"))
    b = reg.register("fr", model_dir(tmp_path, "b", "wb"))
    failing = reg.record_gate(a.id, {**VALIDATE_OK, "status": "fail"})
    with pytest.raises(RegistryError, match="signature does not verify"):  # fail edited into pass
        reg.transition(a.id, "validated", who="m", why="x", evidence={**failing, "status": "pass"})
    unsigned = {k: v for k, v in failing.items() if k != "signature"}
    with pytest.raises(RegistryError, match="matches no recorded decision"):
        reg.transition(a.id, "validated", who="m", why="x", evidence={**unsigned, "status": "pass"})
    for_a = reg.record_gate(a.id, VALIDATE_OK)
    with pytest.raises(RegistryError, match=f"for model {a.id}, not {b.id}"):
        reg.transition(b.id, "validated", who="m", why="x", evidence=for_a)
    other = Registry(f"sqlite:///{tmp_path / 'other.db'}")  # another registry, another key
    o = other.register("fr", model_dir(tmp_path, "a", "wa"))
    assert o.id == a.id
    with pytest.raises(RegistryError, match="signature does not verify"):
        reg.transition(a.id, "validated", who="m", why="x", evidence=other.record_gate(o.id, VALIDATE_OK))
    other.close()
    # the genuine decision still works: recorded (the registry finds it by its audit id) even unsigned
    recorded_only = {k: v for k, v in for_a.items() if k != "signature"}
    assert reg.transition(a.id, "validated", who="ci", why="ok", evidence=recorded_only).state == "validated"
    reg.close()


def test_weights_changed_after_the_gate_are_not_released(tmp_path, db):
    reg = Registry(db)
    path = model_dir(tmp_path)
    m = reg.register("fr", path)
    ev = reg.record_gate(m.id, VALIDATE_OK)
    (tmp_path / "m" / "adapter_model.safetensors").write_text("swapped after evaluation")
    with pytest.raises(RegistryError, match="not the ones the 'validate' gate evaluated"):
        reg.transition(m.id, "validated", who="ci", why="x", evidence=ev)
    with pytest.raises(RegistryError, match="changed since it was registered"):
        reg.record_gate(m.id, VALIDATE_OK)
    (tmp_path / "m" / "adapter_model.safetensors").write_text("w")  # the evaluated bytes are back
    assert reg.transition(m.id, "validated", who="ci", why="x", evidence=ev).state == "validated"
    os.remove(tmp_path / "m" / "adapter_model.safetensors")
    os.remove(tmp_path / "m" / "adapter_config.json")
    with pytest.raises(RegistryError, match="no weight files"):
        reg.register("fr", path)
    reg.close()


def test_key_file_is_private_and_env_key_signs(tmp_path, monkeypatch):
    monkeypatch.delenv("MIXTUNE_REGISTRY_KEY", raising=False)
    reg = Registry(str(tmp_path / "k.db"))
    keyfile = tmp_path / "k.db.key"
    assert stat.S_IMODE(keyfile.stat().st_mode) == 0o600 and len(keyfile.read_text().strip()) == 64
    m = reg.register("fr", model_dir(tmp_path))
    signed = reg.record_gate(m.id, VALIDATE_OK)
    reg.close()
    keyfile.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by other users"):
        Registry(str(tmp_path / "k.db"))
    keyfile.chmod(0o600)
    monkeypatch.setenv("MIXTUNE_REGISTRY_KEY", "from-the-environment")
    reg = Registry(str(tmp_path / "k.db"))  # a different key: the file's signatures no longer verify ...
    with pytest.raises(RegistryError, match="signature does not verify"):
        reg.transition(m.id, "validated", who="ci", why="x", evidence={**signed, "meta": {"edited": 1}})
    # ... but the unchanged decision is the one the registry recorded, so it still counts
    assert reg.transition(m.id, "validated", who="ci", why="x", evidence=signed).state == "validated"
    reg.close()


def test_gate_cli_records_the_decision_and_promote_uses_it(tmp_path, db):
    records = tmp_path / "cand.jsonl"
    records.write_text("".join(json.dumps({"sample_id": f"s{i}", "task_id": "t", "family": "f", "layer": "l",
                                           "metrics": {}, "primary": 1.0}) + "\n" for i in range(20)))
    spec = tmp_path / "gates.yaml"
    spec.write_text("bootstrap_samples: 100\nvalidate:\n  - metric: primary\n    min: 0.5\n")
    assert cli(db, "register", "fr", model_dir(tmp_path)).exit_code == 0
    out = tmp_path / "gates.jsonl"
    res = CliRunner().invoke(_app(), ["gate", "--name", "validate", "--candidate", str(records), "--spec",
                                      str(spec), "--out", str(out), "--model-id", "1", "--db", db])
    assert res.exit_code == 0, res.output
    line = json.loads(out.read_text())
    assert line["binding"]["model_id"] == 1 and len(line["signature"]) == 64
    assert cli(db, "promote", "1", "--why", "gate passed").exit_code == 0  # the recorded decision
    shown = json.loads(cli(db, "show", "1", "--json").output)
    assert shown["state"] == "validated" and shown["audit"][-1]["evidence"]["binding"]["audit_id"] == 2


# ---- item 3: tamper-evident audit -----------------------------------------------------------------

def _released_registry(tmp_path, db) -> None:
    reg = Registry(db)
    for n in range(2):
        m = reg.register("fr", model_dir(tmp_path, f"m{n}", f"w{n}"))
        reg.transition(m.id, "validated", who="ci", why="v", evidence=reg.record_gate(m.id, VALIDATE_OK))
        reg.transition(m.id, "canary", who="ci", why="c")
        reg.transition(m.id, "released", who="ci", why="r", evidence=reg.record_gate(m.id, CANARY_OK))
    assert reg.verify() == []
    reg.close()


def _raw(tmp_path, *statements):
    """Tamper as an attacker with file access would: drop the triggers, edit, (maybe) recreate."""
    con = sqlite3.connect(tmp_path / "reg.db")
    with con:
        for st in statements:
            con.execute(st)
    con.close()


DROP = ("DROP TRIGGER audit_log_no_update", "DROP TRIGGER audit_log_no_delete")


@pytest.mark.parametrize("edit,first_bad", [
    ("UPDATE audit_log SET who = 'mallory' WHERE id = 5", "audit row 5 was rewritten"),
    ("UPDATE audit_log SET why = 'routine' WHERE id = 9", "audit row 9 was rewritten"),
    ("DELETE FROM audit_log WHERE id = 4", "audit row 5 does not follow row 3"),
    ("DELETE FROM audit_log WHERE id >= 13", "model 2 is 'released' but its audit trail ends at 'canary'"),
])
def test_verify_names_the_first_bad_row(tmp_path, db, edit, first_bad):
    _released_registry(tmp_path, db)
    _raw(tmp_path, *DROP, edit)
    res = cli(db, "verify")
    assert res.exit_code == 1
    assert f"registry audit FAILED: {first_bad}" in res.output  # CliRunner mixes stderr into output
    assert "also: trigger audit_log_no_update is missing" in res.output  # dropped to tamper: reported too


def test_dropped_trigger_is_reported_and_recreated_on_open(tmp_path, db):
    _released_registry(tmp_path, db)
    _raw(tmp_path, "DROP TRIGGER audit_log_no_delete")
    reg = Registry(db)
    assert reg.verify() == ["trigger audit_log_no_delete is missing (found when the registry was opened; "
                            "recreated)"]
    reg.close()
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):  # enforced again
        _raw(tmp_path, "DELETE FROM audit_log")
    _raw(tmp_path, "DROP TRIGGER audit_log_no_update",  # a neutered trigger with the right name
         "CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log BEGIN SELECT 1; END")
    res = cli(db, "verify")
    assert res.exit_code == 1 and "trigger audit_log_no_update was altered" in res.output
    assert cli(db, "verify").exit_code == 0  # repaired by that open; the chain itself is intact


def test_legacy_audit_log_is_sealed_once_on_upgrade(tmp_path, db):
    _released_registry(tmp_path, db)
    legacy = [f"CREATE TRIGGER IF NOT EXISTS audit_log_no_{op} BEFORE {op} ON audit_log "
              "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END" for op in ("update", "delete")]
    # a registry written before the hash chain: no hashes, the old trigger DDL
    _raw(tmp_path, *DROP, "UPDATE audit_log SET prev_hash = NULL, row_hash = NULL", *legacy)
    reg = Registry(db)
    assert reg.verify() == [] and reg.audit_count() == 14
    reg.close()
    _raw(tmp_path, *DROP, "UPDATE audit_log SET who = 'mallory' WHERE id = 3")
    reg = Registry(db)
    assert reg.verify()[0] == "audit row 3 was rewritten (its content no longer matches its hash)"
    reg.close()


# ---- item 4: concurrent register -------------------------------------------------------------------

def test_register_conflict_is_a_clear_registry_error(tmp_path, db, monkeypatch):
    reg = Registry(db)
    reg.register("fr", model_dir(tmp_path))
    # what a concurrent writer that took the same version number first looks like to this one
    monkeypatch.setattr(Registry, "_next_version", staticmethod(lambda s, name: 1))
    with pytest.raises(RegistryError, match="concurrently .*nothing was written, retry"):
        reg.register("fr", model_dir(tmp_path, "m2"))
    assert [m.version for m in reg.list()] == [1] and reg.verify() == []
    reg.close()
