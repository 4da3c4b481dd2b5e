"""``mixtune registry``: list, show, register, promote, roll back and verify model versions.

Promotions that need a gate use the decision the registry recorded when ``mixtune gate
--model-id N --db ...`` ran (or a signed line of the ``gates.jsonl`` it wrote); a hand-written
"pass" is refused. Refusals (skipped gate, forged or stale evidence, unknown id) are user errors:
one line, non-zero exit. ``verify`` checks the audit hash chain and triggers.
"""

from __future__ import annotations

import getpass
import json
import os
from pathlib import Path
from typing import Any

import typer

from mixtune.errors import DataError

registry_app = typer.Typer(help="Model registry: versions, lifecycle states, champion alias, audit log.",
                           no_args_is_help=True)

DEFAULT_DB = "sqlite:///registry.db"
# Next state on the happy path, used when --to is left out.
NEXT_STATE = {"trained": "validated", "validated": "canary", "canary": "released"}


def _db_option() -> Any:
    return typer.Option(os.environ.get("MIXTUNE_REGISTRY_URL", DEFAULT_DB), "--db",
                        help="SQLAlchemy URL or SQLite file path (env MIXTUNE_REGISTRY_URL)")


def _who_option() -> Any:
    return typer.Option(None, "--who", help="who is acting (default: the current user)")


def _who(who: str | None) -> str:
    if who:
        return who
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "unknown"


def _open(db: str):
    from mixtune.release.registry import Registry  # why: fast --help (sqlalchemy)

    return Registry(db)


def pick_evidence(path: Path, gate: str | None, model_id: int) -> dict | None:
    """The newest decision in a gates.jsonl for ``gate`` (any gate if None) that is not tied to
    another model id. Returns None when the file has none. (The registry then accepts it only if
    it recorded that decision or it carries the registry's signature.)"""
    from mixtune.release.gates import read_decisions  # why: fast --help (numpy, yaml)

    for d in reversed(read_decisions(path)):
        if not isinstance(d, dict):
            continue
        binding = d.get("binding") if isinstance(d.get("binding"), dict) else {}
        meta = d.get("meta") if isinstance(d.get("meta"), dict) else {}
        claimed = binding.get("model_id", meta.get("model_id"))
        if (gate is None or d.get("gate") == gate) and (claimed is None or str(claimed) == str(model_id)):
            return d
    return None


def _print_models(records: list) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="registered models")
    for col in ("id", "name", "version", "state", "aliases", "created", "path"):
        table.add_column(col)
    for r in records:
        table.add_row(str(r.id), r.name, str(r.version), r.state, ",".join(r.aliases), r.created, r.path)
    Console().print(table)


@registry_app.command("list")
def list_cmd(
    db: str = _db_option(),
    name: str | None = typer.Option(None, "--name", help="only versions of this model"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """List registered model versions."""
    records = _open(db).list(name)
    if as_json:
        typer.echo(json.dumps([r.__dict__ for r in records], ensure_ascii=False, indent=2))
    else:
        _print_models(records)


@registry_app.command("show")
def show_cmd(
    model_id: int = typer.Argument(..., help="model id"),
    db: str = _db_option(),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of tables"),
) -> None:
    """Show one model version with its audit trail."""
    from rich.console import Console
    from rich.table import Table

    rec = _open(db).show(model_id)
    if as_json:
        typer.echo(json.dumps(rec.__dict__, ensure_ascii=False, indent=2))
        return
    _print_models([rec])
    table = Table(title=f"audit trail of model {rec.id}")
    for col in ("#", "when", "action", "from", "to", "who", "why", "evidence"):
        table.add_column(col)
    for a in rec.audit:
        ev = a["evidence"] or {}
        summary = f"gate {ev['gate']}: {ev.get('status')}" if "gate" in ev else json.dumps(ev, ensure_ascii=False)
        table.add_row(str(a["id"]), a["when"], a["action"], a["from_state"] or "", a["to_state"] or "",
                      a["who"], a["why"], summary if ev else "")
    Console().print(table)


@registry_app.command("register")
def register_cmd(
    name: str = typer.Argument(..., help="model name, e.g. finance-risk"),
    path: str = typer.Argument(..., help="model or adapter directory"),
    db: str = _db_option(),
    metrics: Path | None = typer.Option(None, "--metrics", help="JSON file of summary metrics to store"),
    who: str | None = _who_option(),
) -> None:
    """Register a new version in state 'trained'."""
    data = None
    if metrics is not None:
        try:
            data = json.loads(metrics.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"cannot read metrics JSON: {e}", str(metrics)) from None
    rec = _open(db).register(name, path, data, who=_who(who))
    typer.echo(f"registered {rec.name} v{rec.version} as model {rec.id} (trained)")


@registry_app.command("promote")
def promote_cmd(
    model_id: int = typer.Argument(..., help="model id"),
    db: str = _db_option(),
    to: str | None = typer.Option(None, "--to", help="target state (default: the next one on the path)"),
    evidence: Path | None = typer.Option(
        None, "--evidence", help="gates.jsonl written by `mixtune gate --model-id` (default: the decision the "
        "registry recorded for this model)"),
    why: str = typer.Option(..., "--why", help="reason, kept in the audit log"),
    who: str | None = _who_option(),
) -> None:
    """Move a model to its next state; validated/released need a passing gate decision recorded by
    this registry for these exact weights (see `mixtune gate --model-id`)."""
    from mixtune.release.registry import REQUIRED_GATE, RegistryError  # why: fast --help (sqlalchemy)

    reg = _open(db)
    current = reg.show(model_id).state
    target = to or NEXT_STATE.get(current)
    if target is None:
        raise RegistryError(f"model {model_id} is {current!r}; there is no next state (use --to)")
    decision = None
    if evidence is not None:
        gate = REQUIRED_GATE.get(target)
        decision = pick_evidence(evidence, gate, model_id)
        if decision is None and gate is not None:
            raise RegistryError(f"{evidence} holds no {gate!r} gate decision for model {model_id}")
    rec = reg.transition(model_id, target, who=_who(who), why=why, evidence=decision)
    extra = " (now champion)" if "champion" in rec.aliases else ""
    typer.echo(f"model {rec.id} ({rec.name} v{rec.version}): {current} -> {rec.state}{extra}")


@registry_app.command("rollback")
def rollback_cmd(
    name: str = typer.Argument(..., help="model name whose champion is rolled back"),
    db: str = _db_option(),
    why: str = typer.Option(..., "--why", help="reason, kept in the audit log"),
    who: str | None = _who_option(),
) -> None:
    """Retire the current champion and restore the previous one."""
    reg = _open(db)
    old = reg.get_alias(name, "champion")
    # compare-and-set: if someone releases or rolls back after we looked, nothing happens
    rec = reg.rollback(name, who=_who(who), why=why, expected_champion=old.id if old else None)
    typer.echo(f"{name}: champion model {old.id if old else '?'} rolled back; "
               f"model {rec.id} (v{rec.version}) is champion again")


@registry_app.command("alias")
def alias_cmd(
    name: str = typer.Argument(..., help="model name"),
    alias: str = typer.Argument(..., help="alias, e.g. challenger"),
    model_id: int = typer.Argument(..., help="model id the alias should point at"),
    db: str = _db_option(),
    why: str = typer.Option("", "--why", help="reason, kept in the audit log"),
    who: str | None = _who_option(),
) -> None:
    """Point an alias (not 'champion', which moves only by release/rollback) at a model."""
    _open(db).set_alias(name, alias, model_id, who=_who(who), why=why)
    typer.echo(f"{name}@{alias} -> model {model_id}")


@registry_app.command("verify")
def verify_cmd(db: str = _db_option()) -> None:
    """Check the audit log: hash chain, append-only triggers, states and aliases vs. history.

    Exit 0 when intact, 1 naming the first bad row otherwise."""
    reg = _open(db)
    problems = reg.verify()
    rows, head = reg.audit_head()
    if problems:
        typer.echo(f"registry audit FAILED: {problems[0]}", err=True)
        for p in problems[1:]:
            typer.echo(f"  also: {p}", err=True)
        raise typer.Exit(1)
    typer.echo(f"registry audit OK: {rows} rows, hash chain intact, append-only triggers in place; "
               f"head {head} (record it elsewhere to detect a rewritten tail)")


def register(app: typer.Typer) -> None:
    """Add ``mixtune registry ...`` to the CLI."""
    app.add_typer(registry_app, name="registry")
