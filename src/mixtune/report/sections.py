"""HTML sections of ``report.html`` that a person reads first: decision, deltas, rollout, answers.

Everything is a table or highlighted text built from the run's files; no JSON is dumped, and
every string that came from data or a model is HTML-escaped.
"""

from __future__ import annotations

import html
import random
from collections import defaultdict

MODELS = ("base", "stage1", "stage2")
STATUS_CLASS = {"pass": "ok", "released": "ok", "fail": "bad", "rolled back": "bad", "rejected": "bad"}


def esc(v) -> str:
    """Escape anything for HTML (numbers formatted compactly)."""
    if isinstance(v, float):
        return f"{v:.3f}"
    return html.escape("" if v is None else str(v))


def table(header: list[str], rows: list[list], cls: str = "") -> str:
    """A plain table; cells are escaped unless they are already-built HTML (``Raw``)."""
    def cell(v):
        return v.html if isinstance(v, Raw) else esc(v)

    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table class='{cls}'><tr>{head}</tr>{body}</table>"


class Raw:
    """Pre-escaped HTML for a table cell."""

    def __init__(self, html_text: str):
        self.html = html_text


def badge(status: str) -> Raw:
    return Raw(f"<span class='badge {STATUS_CLASS.get(status, 'meh')}'>{esc(status)}</span>")


def _interval(d, lo, hi) -> str:
    if d is None:
        return "–"
    return f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" if lo is not None and hi is not None else f"{d:+.3f}"


# -- decision -------------------------------------------------------------------------------------
def decision(gates: list[dict], registry: dict | None) -> tuple[str, str]:
    """``(headline, why)``: released / rolled back / rejected / inconclusive, and the reason."""
    state = ((registry or {}).get("model") or {}).get("state")
    rank = {"pass": 0, "inconclusive": 1, "fail": 2}
    # the pipeline releases only when every canary check passed: the least favourable one decides
    canaries = [g for g in gates if g.get("gate") == "canary"]
    canary = max(canaries, key=lambda g: rank.get(g.get("status"), 1), default=None)
    validate = next((g for g in gates if g.get("gate") == "validate"), None)
    if state == "released":
        return "released", (canary or {}).get("meta", {}).get("reason") or "every gate passed"
    if canary and canary.get("status") == "fail":
        meta = canary.get("meta") or {}
        return "rolled back", meta.get("reason") or _failed_checks(canary)
    if validate and validate.get("status") == "fail":
        return "rejected", "validate gate: " + _failed_checks(validate)
    if canary and canary.get("status") == "inconclusive":
        return "inconclusive", (canary.get("meta") or {}).get("reason") or _failed_checks(canary, "inconclusive")
    if not gates:
        return "not decided", "no gate has run yet"
    return state or "inconclusive", "no release decision was reached"


def _failed_checks(g: dict, status: str = "fail") -> str:
    bad = [f"{c.get('metric')} ({c.get('scope')}): {c.get('reason') or c.get('status')}"
           for c in g.get("checks", []) if c.get("status") == status]
    return "; ".join(bad) or g.get("status", "")


def decision_section(gates: list[dict], registry: dict | None) -> str:
    head, why = decision(gates, registry)
    model = (registry or {}).get("model") or {}
    who = f"model {model.get('name', '')} v{model.get('version', '')} (id {model.get('id', '')}) is " \
          f"<b>{esc(model.get('state', '?'))}</b> in the registry" if model else "no registry entry"
    return (f"<div class='decision {STATUS_CLASS.get(head, 'meh')}'><div class='head'>Decision: {esc(head)}</div>"
            f"<div>{esc(why)}</div><div class='small'>{who}</div></div>")


# -- deltas per layer -----------------------------------------------------------------------------
def bootstrap(diffs: list[float], n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of paired differences with a 95% percentile-bootstrap interval (seeded)."""
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    return sum(diffs) / n, means[int(0.025 * n_boot)], means[int(0.975 * n_boot) - 1]


def deltas_section(records: dict[str, list[dict]], champion: str, candidate: str = "stage2") -> str:
    """Candidate − champion per evaluation layer: paired by sample id, primary score, 95% interval."""
    if candidate not in records or champion not in records:
        return ""
    idx = {m: {(r["layer"], r["sample_id"]): r["primary"] for r in recs} for m, recs in records.items()}
    rows = []
    for layer in ("base", "business", "experience"):
        keys = [k for k in idx[candidate] if k[0] == layer and k in idx[champion]]
        if not keys:
            continue
        diffs = [idx[candidate][k] - idx[champion][k] for k in keys]
        d, lo, hi = bootstrap(diffs)
        mean_c = sum(idx[candidate][k] for k in keys) / len(keys)
        mean_h = sum(idx[champion][k] for k in keys) / len(keys)
        verdict = "better" if lo > 0 else "worse" if hi < 0 else "no clear change"
        rows.append([layer, len(keys), mean_h, mean_c, _interval(d, lo, hi), verdict])
    return (f"<h3>Candidate ({esc(candidate)}) vs {esc(champion)}, per layer</h3>"
            + table(["layer", "paired items", champion, candidate, "delta [95% interval]", "reading"], rows))


# -- rollout --------------------------------------------------------------------------------------
def rollout_section(gates: list[dict]) -> str:
    steps = [g for g in gates if g.get("gate") == "rollout_step"]
    if not steps:
        return ""
    rows, check_rows = [], []
    for g in steps:
        m = g.get("meta") or {}
        t, lat, fb, an = m.get("traffic", {}), m.get("latency_ms", {}), m.get("feedback", {}), m.get("analysis", {})
        q = an.get("quality", {})
        rows.append([m.get("step"), f"{m.get('share_pct', 0):g}%", badge(g.get("status", "")),
                     t.get("requests"), t.get("champion"), t.get("candidate"), t.get("canary_fallbacks"),
                     _ms(lat.get("champion")), _ms(lat.get("candidate")),
                     _fb(fb.get("champion")), _fb(fb.get("candidate")),
                     _interval(q.get("delta"), q.get("lo"), q.get("hi")), m.get("records_missing"), m.get("reason")])
        for name, c in an.items():
            check_rows.append([m.get("step"), name, badge(c.get("status", "")), c.get("reason")])
    header = ["step", "canary share", "decision", "requests", "answered by champion", "answered by candidate",
              "canary fallbacks", "champion latency p50 / p95 ms", "candidate latency p50 / p95 ms",
              "champion thumbs-down", "candidate thumbs-down", "quality delta [interval]", "records missing", "why"]
    final = next((g for g in reversed(gates) if g.get("gate") == "canary"), None)
    note = ""
    if final is not None:
        meta = final.get("meta") or {}
        note = (f"<p>Outcome: {badge(final.get('status', '')).html} {esc(meta.get('reason', ''))}."
                + (" — <b>rolled back</b>: no traffic goes to the candidate and the registry keeps the champion."
                   if meta.get("rollback") else "") + f" Traffic source: {esc(meta.get('traffic_source', '?'))}.</p>")
    return ("<h2>Staged rollout</h2>" + note + table(header, rows, "wide")
            + "<h3>Analyses per step</h3>" + table(["step", "check", "status", "evidence"], check_rows)
            + "<p class='small'>The expert sample is a simulated, rule-based reviewer, not a person.</p>")


def _ms(p: dict | None) -> str:
    return f"{p['p50']:.0f} / {p['p95']:.0f}" if p and p.get("n") else "–"


def _fb(f: dict | None) -> str:
    return f"{f['thumbs_down_rate']:.0%} of {f['n']}" if f and f.get("n") else "–"


# -- gates and registry ---------------------------------------------------------------------------
def gates_section(gates: list[dict]) -> str:
    rows = []
    for g in gates:
        if g.get("gate") == "rollout_step":
            continue  # shown in the rollout section
        for c in g.get("checks", []) or [{}]:
            rows.append([g.get("gate"), badge(g.get("status", "")), c.get("metric"), c.get("scope"), c.get("kind"),
                         c.get("threshold"), _interval(c.get("value"), c.get("lo"), c.get("hi")),
                         badge(c.get("status", "")) if c else "", c.get("reason")])
    return "<h2>Gates</h2>" + table(["gate", "decision", "metric", "scope", "kind", "threshold",
                                     "value [interval]", "check", "reason"], rows)


def registry_section(reg: dict | None) -> str:
    if not reg:
        return ""
    m = reg.get("model") or {}
    rows = [[k, m.get(k)] for k in ("id", "name", "version", "state", "path", "created") if k in m]
    return "<h2>Registry</h2>" + table(["field", "value"], rows) + f"<p class='small'>registry: {esc(reg.get('url'))}</p>"


# -- conversations and answers --------------------------------------------------------------------
def conversations_table(matrix: dict) -> str:
    conv = {m: (matrix.get(m) or {}).get("_conversations") for m in matrix}
    conv = {m: c for m, c in conv.items() if c}
    if not conv:
        return ""
    turns = max(len(c["score_by_turn"]) for c in conv.values())
    rows = [[m, c["sessions"], c["success_rate"], c["abandon_rate"]]
            + [c["score_by_turn"][i] if i < len(c["score_by_turn"]) else "–" for i in range(turns)]
            for m, c in conv.items()]
    return table(["model", "sessions", "success", "abandoned"] + [f"turn {i + 1}" for i in range(turns)], rows)


def highlight(text: str, findings: list[dict]) -> str:
    """``text`` escaped, with each finding's span marked (the rule id as its tooltip)."""
    spans = sorted((f["span"][0], f["span"][1], f["rule_id"]) for f in findings if f.get("span"))
    out, pos = [], 0
    for s, e, rule in spans:
        if s < pos or e > len(text):
            continue  # overlapping or stale span: leave the text unmarked there
        out.append(esc(text[pos:s]) + f"<mark title='{esc(rule)}'>{esc(text[s:e])}</mark>")
        pos = e
    return "".join(out) + esc(text[pos:])


def answers_section(records: dict[str, list[dict]], per_family: int = 2) -> str:
    """Answers of base / stage 1 / stage 2 side by side for a few prompts per family, findings marked."""
    models = [m for m in MODELS if m in records]
    if not models:
        return ""
    base_layer = {m: {r["sample_id"]: r for r in records[m] if r["layer"] == "base"} for m in models}
    business = {m: {r["sample_id"]: r for r in records[m] if r["layer"] == "business"} for m in models}
    by_family: dict[str, list[str]] = defaultdict(list)
    for sid, r in sorted(business[models[-1]].items()):
        if all(sid in business[m] for m in models) and len(by_family[r["family"]]) < per_family:
            by_family[r["family"]].append(sid)
    rows = []
    for fam in sorted(by_family):
        for sid in by_family[fam]:
            ref = business[models[-1]][sid]
            cells = []
            for m in models:
                r, b = business[m][sid], base_layer[m].get(sid, {})
                finds = b.get("findings") or []
                marks = "".join(f"<li class='{esc(f.get('severity'))}'>{esc(f.get('rule_id'))}: {esc(f.get('reason'))}</li>"
                                for f in finds)
                cells.append(Raw(f"<div class='ans'>{highlight(r.get('prediction') or '', finds)}</div>"
                                 f"<div class='small'>score {r['primary']:.2f}</div>"
                                 + (f"<ul class='finds'>{marks}</ul>" if marks else "")))
            rows.append([fam, Raw(f"<div class='ans'>{esc(ref.get('prompt'))}</div>"),
                         Raw(f"<div class='ans'>{esc(ref.get('reference'))}</div>"), *cells])
    return ("<h2>Answers side by side</h2><p class='small'>Marked text: a rule finding (hover for the rule); "
            "listed below each answer with its reason.</p>"
            + table(["family", "prompt", "reference", *models], rows, "answers"))
