"""Checks the registry runs on its own records: is gate evidence genuine and bound to the model
being promoted, and is the audit trail intact (hash chain, triggers, state vs. history)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from mixtune.errors import MixtuneError
from mixtune.release import registry_integrity as integ


class RegistryError(MixtuneError):
    """A refused registry operation: unknown model, skipped gate, missing or forged evidence."""


def _recorded(s: Session, audit, model_id: int, gate: str) -> tuple[dict, str]:
    rows = s.scalars(select(audit).where(audit.model_id == model_id, audit.action == "gate")
                     .order_by(audit.id.desc())).all()
    for a in rows:
        if (a.evidence or {}).get("gate") == gate:
            return dict(a.evidence), f"audit row {a.id}"
    raise RegistryError(f"model {model_id} needs a passing {gate!r} gate decision recorded by this registry "
                        f"as evidence (run `mixtune gate --name {gate} --model-id {model_id} --db <registry>` "
                        "first)")


def check_evidence(s: Session, audit, row, to_state: str, gate: str, evidence: dict[str, Any] | None,
                   key: bytes | None, digest_now: str) -> dict[str, Any]:
    """Return the genuine evidence for moving ``row`` to ``to_state`` or raise RegistryError.

    Genuine means: recorded by this registry for this model (``binding.audit_id`` names an audit
    row with exactly this content) or signed with the registry key; then it must be a passing
    decision of ``gate`` bound to this model id, path and weights hash — and the weights on disk
    must still have that hash.
    """
    mid = row.id
    if evidence is None:
        ev, _source = _recorded(s, audit, mid, gate)
    else:
        if not isinstance(evidence, dict):
            raise RegistryError(f"moving model {mid} to {to_state!r} needs a {gate!r} gate decision object")
        if evidence.get("gate") != gate:
            raise RegistryError(f"moving model {mid} to {to_state!r} needs a {gate!r} gate decision, "
                                f"got one for gate {evidence.get('gate')!r}")
        ev = {k: v for k, v in evidence.items() if k != "signature"}
        if not integ.signature_ok(key, evidence):
            aid = (ev.get("binding") or {}).get("audit_id") if isinstance(ev.get("binding"), dict) else None
            stored = s.get(audit, aid) if isinstance(aid, int) and not isinstance(aid, bool) else None
            if stored is None or stored.action != "gate" or integ.canonical(stored.evidence) != integ.canonical(ev):
                why = ("its signature does not verify with this registry's key" if "signature" in evidence
                       else "it carries no registry signature and matches no recorded decision")
                raise RegistryError(f"the {gate!r} gate decision offered for model {mid} is not evidence: {why}. "
                                    f"Only decisions recorded by this registry (`mixtune gate --model-id {mid} "
                                    "--db <registry>`) count")
    if ev.get("status") != "pass":
        raise RegistryError(f"the {gate!r} gate decision is {ev.get('status')!r}, not 'pass'; "
                            f"model {mid} stays where it is")
    b = ev.get("binding") if isinstance(ev.get("binding"), dict) else {}
    if b.get("model_id") != mid:
        raise RegistryError(f"the {gate!r} gate decision is for model {b.get('model_id')}, not {mid}")
    if b.get("path") != row.path:
        raise RegistryError(f"the {gate!r} gate decision was made for {b.get('path')!r}, but model {mid} is "
                            f"{row.path!r}")
    if not row.weights_sha256 or b.get("weights_sha256") != row.weights_sha256 or digest_now != row.weights_sha256:
        raise RegistryError(f"model {mid}: the weights at {row.path} are not the ones the {gate!r} gate evaluated "
                            "(weights hash differs); register and gate them again")
    return ev


def verify_audit(conn: Connection, audit, model, alias, fields: Callable[[Any], dict]) -> list[str]:
    """Problems in the audit trail, in row order: chain links and hashes, the append-only trigger
    actually refusing an UPDATE, and each model's state / alias agreeing with its last audit row
    (which also catches deleted rows at the tail of the chain)."""
    problems: list[str] = []
    rows = conn.execute(select(audit).order_by(audit.id)).all()
    conn.rollback()
    prev, prev_id = integ.GENESIS, None
    for r in rows:
        if r.prev_hash != prev:
            after = f"row {prev_id}" if prev_id is not None else "the start of the log"
            problems.append(f"audit row {r.id} does not follow {after} (a row was deleted, inserted or "
                            "rewritten just before it)")
        elif r.row_hash != integ.row_hash(r.prev_hash, fields(r)):
            problems.append(f"audit row {r.id} was rewritten (its content no longer matches its hash)")
        prev, prev_id = r.row_hash, r.id
    if rows:
        t = conn.begin()
        try:
            conn.execute(update(audit).where(audit.id == rows[0].id).values(who=audit.who))
            problems.append("the audit_log trigger did not refuse an UPDATE (append-only is not enforced)")
        except DBAPIError as e:
            if integ.APPEND_ONLY not in str(e):
                problems.append(f"probing the audit_log trigger failed: {str(e.orig).strip()[:200]}")
        finally:
            t.rollback()
    last_state: dict[int, str] = {}
    last_alias: dict[tuple[str, str], int] = {}
    for r in rows:
        ev = r.evidence if isinstance(r.evidence, dict) else {}
        if r.action in ("register", "transition", "rollback") and r.to_state:
            last_state[r.model_id] = r.to_state
        elif r.action == "alias":
            last_alias[(ev.get("model_name"), ev.get("alias"))] = r.model_id
    for m in conn.execute(select(model.id, model.state).order_by(model.id)).all():
        if last_state.get(m.id) != m.state:
            problems.append(f"model {m.id} is {m.state!r} but its audit trail ends at {last_state.get(m.id)!r} "
                            "(audit rows deleted or the state edited)")
    for a in conn.execute(select(alias.name, alias.alias, alias.model_id)).all():
        if last_alias.get((a.name, a.alias)) != a.model_id:
            problems.append(f"alias {a.name}@{a.alias} points at model {a.model_id} but the audit trail says "
                            f"{last_alias.get((a.name, a.alias))} (audit rows deleted or the alias edited)")
    conn.rollback()
    return problems
