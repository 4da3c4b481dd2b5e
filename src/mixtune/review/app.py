"""``mixtune review serve``: the reviewers' web app and its JSON API (one FastAPI app).

Pages are rendered on the server with Jinja2 autoescaping, so hostile model output (``<script>``,
markup, megabytes of text) is shown as text; a Content-Security-Policy with a per-response
nonce blocks any script that would slip through anyway. The only JavaScript is the page's own
inline script (keyboard shortcuts, posting verdicts) — no Node build step.

Routes:

- ``GET /login`` and ``POST /api/login {token}`` (sets an HttpOnly, SameSite=Strict cookie)
- ``GET /`` progress per queue, agreement per reviewer, live rejection per task
- ``GET /queue/{data|output|pair|adjudication}`` the next item for the logged-in reviewer
- ``GET /api/next?queue=..&after=..``, ``POST /api/verdict``, ``GET /api/status`` for
  programmatic reviewers (``Authorization: Bearer <token>``), same checks as the pages.

POST bodies must be ``application/json``: a cross-site form cannot send that without a CORS
preflight, which this app never grants, so cookies alone cannot be replayed from another site.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from mixtune.errors import MixtuneError
from mixtune.review.queue import QUEUES, next_item, status_summary, submit
from mixtune.review.reviewers import AuthError, ForbiddenError, Reviewer, Reviewers
from mixtune.review.store import VERDICTS, Item, ReviewError, ReviewStore

COOKIE = "mixtune_review_token"
_TEMPLATES = Path(__file__).parent / "templates"


def highlight(text: str, findings: list[dict]) -> list[tuple[str, str]]:
    """Split ``text`` into ``(segment, rule ids)`` pieces; flagged pieces carry the ids covering them.

    Overlapping spans are merged at every boundary, so each character belongs to one piece.
    """
    spans = [(f["start"], f["end"], f.get("rule_id", "")) for f in findings if f["end"] > f["start"]]
    cuts = sorted({0, len(text), *(s for s, _, _ in spans), *(e for _, e, _ in spans)})
    out = []
    for a, b in zip(cuts, cuts[1:]):
        rules = sorted({r for s, e, r in spans if s <= a and b <= e})
        out.append((text[a:b], ", ".join(rules)))
    return out


def _item_json(it: Item) -> dict:
    return {"id": it.id, "seq": it.seq, "kind": it.kind, "task_id": it.task_id, "family": it.family,
            "prompt": it.prompt, "reference": it.reference, "output": it.output,
            "model_version": it.model_version, "data_version": it.data_version, "findings": it.findings,
            "meta": it.public_meta()}  # a pair's A/B assignment stays on the server: reviews are blind


def create_app(store: ReviewStore, reviewers: Reviewers, *, reasons: dict[str, list[str]] | None = None,
               required: int = 2, title: str = "mixtune review") -> FastAPI:
    """The review app over ``store``; ``reasons`` maps task id → reason codes (anomaly patterns)."""
    reasons = dict(reasons or {})
    env = Environment(loader=FileSystemLoader(_TEMPLATES), autoescape=select_autoescape(["html"]))
    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)

    def reasons_for(task_id: str) -> list[str]:
        return reasons.get(task_id) or ["other"]

    def reviewer_of(request: Request) -> Reviewer:
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else request.cookies.get(COOKIE)
        return reviewers.authenticate(token)

    def page(name: str, code: int = 200, **ctx: Any) -> HTMLResponse:
        nonce = secrets.token_urlsafe(16)
        html = env.get_template(name).render(title=title, nonce=nonce, queues=list(QUEUES), **ctx)
        return HTMLResponse(html, status_code=code, headers={
            "Content-Security-Policy": f"default-src 'none'; script-src 'nonce-{nonce}'; "
                                       f"style-src 'nonce-{nonce}'; connect-src 'self'; img-src 'self'; "
                                       f"form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})

    async def json_body(request: Request) -> dict:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise ReviewError("POST bodies must be application/json", status=415)
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise ReviewError("request body is not valid JSON", status=400) from None
        if not isinstance(body, dict):
            raise ReviewError("request body must be a JSON object", status=400)
        return body

    @app.exception_handler(MixtuneError)
    async def _user_error(request: Request, exc: MixtuneError):
        status = getattr(exc, "status", 400)
        if request.url.path.startswith("/api/"):
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            return JSONResponse({"error": exc.message, "status": status}, status_code=status, headers=headers)
        if isinstance(exc, AuthError):
            return RedirectResponse("/login", status_code=303)
        return page("error.html", status, message=exc.message, reviewer=None)

    # --- pages ----------------------------------------------------------------------------
    @app.get("/login", response_class=HTMLResponse)
    def login_page() -> Response:
        return page("login.html", reviewer=None)

    @app.get("/", response_class=HTMLResponse)
    def home(request: Request) -> Response:
        me = reviewer_of(request)
        return page("home.html", reviewer=me, status=status_summary(store, required))

    @app.get("/queue/{queue}", response_class=HTMLResponse)
    def queue_page(request: Request, queue: str, after: int = 0) -> Response:
        me = reviewer_of(request)
        it, remaining = next_item(store, me, queue, required=required, after=after)
        prog = status_summary(store, required)["queues"]
        qname = "adjudication" if queue == "adjudication" else queue
        ctx: dict[str, Any] = dict(reviewer=me, queue=queue, item=it, remaining=remaining, progress=prog[qname])
        if it is not None:
            ctx.update(segments=highlight(it.output, it.findings), reasons=reasons_for(it.task_id),
                       verdicts=VERDICTS[it.kind], idem=secrets.token_urlsafe(12),
                       earlier=[v for v in store.verdicts_of(item_id=it.id)] if queue == "adjudication" else [])
        return page("item.html", **ctx)

    # --- JSON API -------------------------------------------------------------------------
    @app.post("/api/login")
    async def api_login(request: Request) -> Response:
        body = await json_body(request)
        me = reviewers.authenticate(str(body.get("token") or ""))
        resp = JSONResponse({"reviewer": me.id, "kind": me.kind, "adjudicator": me.adjudicator})
        resp.set_cookie(COOKIE, str(body["token"]), httponly=True, samesite="strict", max_age=12 * 3600)
        return resp

    @app.post("/api/logout")
    async def api_logout() -> Response:
        resp = JSONResponse({"ok": True})
        resp.delete_cookie(COOKIE)
        return resp

    @app.get("/api/next")
    def api_next(request: Request, queue: str = "output", after: int = 0) -> Response:
        me = reviewer_of(request)
        it, remaining = next_item(store, me, queue, required=required, after=after)
        return JSONResponse({"reviewer": me.id, "queue": queue, "remaining": remaining,
                             "item": _item_json(it) if it else None,
                             "reasons": reasons_for(it.task_id) if it else [],
                             "verdicts": list(VERDICTS[it.kind]) if it else []})

    @app.post("/api/verdict")
    async def api_verdict(request: Request) -> Response:
        me = reviewer_of(request)
        body = await json_body(request)
        item_id, verdict = body.get("item_id"), body.get("verdict")
        if not isinstance(item_id, str) or not isinstance(verdict, str):
            raise ReviewError("'item_id' and 'verdict' must be strings", status=422)
        # database work runs in the thread pool, like the sync routes, so one slow commit never stalls the loop
        row, created, st = await run_in_threadpool(
            submit, store, reviewers, me, item_id, verdict, reason=str(body.get("reason") or ""),
                                  note=str(body.get("note") or ""),
                                  idem_key=str(body.get("idempotency_key") or ""), reasons=reasons,
                                  required=required)
        return JSONResponse({"recorded": created, "verdict": row.__dict__,
                             "state": {"state": st.state, "decision": st.decision, "reviewers": st.reviewers,
                                       "adjudicator": st.adjudicator}},
                            status_code=201 if created else 200)

    @app.get("/api/status")
    def api_status(request: Request) -> Response:
        me = reviewer_of(request)
        return JSONResponse({"reviewer": me.id, **status_summary(store, required)})

    app.state.store, app.state.reviewers = store, reviewers
    return app


def load_reasons(ontology: str | Path | None) -> dict[str, list[str]]:
    """Task id → reason codes: the ontology's anomaly patterns (``other`` where a task lists none)."""
    if ontology is None:
        return {}
    from mixtune.data.ontology import load_ontology  # why: torch (via config), only with an ontology

    onto = load_ontology(ontology)
    return {tid: list(t.anomalies) or ["other"] for tid, t in onto.tasks.items()}


__all__ = ["COOKIE", "ForbiddenError", "create_app", "highlight", "load_reasons"]
