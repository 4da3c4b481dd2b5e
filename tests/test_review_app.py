"""The review web app and JSON API: auth, refusals, escaping, the simulated reviewer over HTTP."""

from __future__ import annotations

import re

import pytest
import yaml
from browser.review_env import (
    BACKENDS,
    REASONS,
    TOKENS,
    add_outputs,
    close_store,
    open_store,
    registry,
    write_reviewers,
)
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from mixtune.cli import app as cli_app
from mixtune.release.server import ServerThread
from mixtune.review.app import create_app, highlight, load_reasons
from mixtune.review.reviewers import Reviewers, hash_token
from mixtune.review.simulated import judge, run_simulated_reviewer, sample_outputs_for_review
from mixtune.review.store import ReviewStore


def _bearer(who: str) -> dict:
    return {"Authorization": f"Bearer {TOKENS[who]}"}


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    s = open_store(request.param, tmp_path)
    yield s
    close_store(s)


@pytest.fixture
def client(store):
    with TestClient(create_app(store, registry(), reasons=REASONS)) as c:
        yield c


def test_missing_or_unknown_token_is_401(client, store):
    add_outputs(store, 1)
    assert client.get("/api/next").status_code == 401
    r = client.get("/api/next", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and r.json()["error"] == "unknown reviewer token"
    r = client.post("/api/verdict", json={"item_id": "calc_lcr-m1-0", "verdict": "approve"})
    assert r.status_code == 401 and store.verdicts_of() == []
    page = client.get("/queue/output", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/login"


def test_unqualified_is_403_and_bad_body_is_refused(client, store):
    add_outputs(store, 1)
    r = client.post("/api/verdict", headers=_bearer("carol"), json={"item_id": "calc_lcr-m1-0", "verdict": "approve"})
    assert r.status_code == 403 and "not qualified for task family 'calc'" in r.json()["error"]
    r = client.post("/api/verdict", headers=_bearer("alice"), data={"item_id": "calc_lcr-m1-0", "verdict": "approve"})
    assert r.status_code == 415  # a cross-site form post cannot be JSON
    r = client.post("/api/verdict", headers=_bearer("alice"), json={"item_id": "calc_lcr-m1-0", "verdict": "maybe"})
    assert r.status_code == 422 and "not one of" in r.json()["error"]
    assert store.verdicts_of() == []


def test_double_submit_two_reviewers_and_retired_version_over_http(client, store):
    add_outputs(store, 1)
    body = {"item_id": "calc_lcr-m1-0", "verdict": "reject", "reason": "算术错误", "idempotency_key": "k"}
    first = client.post("/api/verdict", headers=_bearer("alice"), json=body)
    again = client.post("/api/verdict", headers=_bearer("alice"), json=body)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["verdict"]["seq"] == again.json()["verdict"]["seq"] and not again.json()["recorded"]
    changed = client.post("/api/verdict", headers=_bearer("alice"), json={**body, "verdict": "approve"})
    assert changed.status_code == 409
    second = client.post("/api/verdict", headers=_bearer("bob"), json={**body, "verdict": "approve"})
    assert second.status_code == 201 and second.json()["state"]["state"] == "disputed"
    assert [(v.reviewer, v.verdict) for v in store.verdicts_of()] == [("alice", "reject"), ("bob", "approve")]
    add_outputs(store, 1, version="m2")
    store.retire_model_version("m2")
    r = client.post("/api/verdict", headers=_bearer("alice"), json={"item_id": "calc_lcr-m2-0", "verdict": "approve"})
    assert r.status_code == 410 and "no longer registered" in r.json()["error"]
    home = client.get("/", headers=_bearer("judy"))
    assert home.status_code == 200 and 'data-reviewer="alice"' in home.text and 'data-task="calc_lcr"' in home.text
    assert client.get("/queue/adjudication", headers=_bearer("alice")).status_code == 403
    st = client.get("/api/status", headers=_bearer("judy")).json()
    assert st["queues"]["adjudication"] == {"waiting": 1, "total": 1}
    assert st["rejection"]["calc_lcr"]["n"] == 2


def test_hostile_output_is_escaped_and_scripts_are_blocked(client, store):
    store.register_model_version("m1")
    hostile = "<script>alert('x')</script><img src=x onerror=alert(1)><b>bold</b>" + "长" * 100_000
    store.enqueue("evil", "output", "calc_lcr", prompt="<iframe src=//evil>", reference="</div><h1>ref</h1>",
                  output=hostile, family="calc", model_version="m1",
                  findings=[{"start": 0, "end": 8, "rule_id": "<r>", "severity": "error", "reason": "<i>why</i>"}])
    assert client.post("/api/login", json={"token": TOKENS["alice"]}).status_code == 200  # cookie login
    page = client.get("/queue/output")
    html = page.text
    assert page.status_code == 200
    assert "</mark>alert(&#39;x&#39;)&lt;/script&gt;" in html and "<script>alert" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "<img" not in html
    assert "&lt;iframe src=//evil&gt;" in html and "&lt;/div&gt;&lt;h1&gt;ref&lt;/h1&gt;" in html
    assert "<mark title=\"&lt;r&gt;\">&lt;script&gt;</mark>" in html  # the finding's span, escaped too
    assert "&lt;i&gt;why&lt;/i&gt;" in html
    assert html.count("长") >= 100_000  # long text is all there (the box scrolls)
    csp = page.headers["content-security-policy"]
    assert "script-src 'nonce-" in csp and "unsafe-inline" not in csp
    assert html.count("<script nonce=") == 1  # only the page's own script


def test_highlight_merges_overlapping_spans():
    segs = highlight("abcdefgh", [{"start": 1, "end": 4, "rule_id": "x"}, {"start": 3, "end": 6, "rule_id": "y"}])
    assert segs == [("a", ""), ("bc", "x"), ("d", "x, y"), ("ef", "y"), ("gh", "")]
    assert "".join(s for s, _ in segs) == "abcdefgh"


def test_judge_uses_findings_and_reference_numbers_with_noise_and_bias():
    import random

    good = {"output": "LCR = 120.50%", "reference": "LCR = 120.50%", "findings": []}
    wrong = {"output": "LCR = 99.00%", "reference": "LCR = 120.50%", "findings": []}
    flagged = {**good, "findings": [{"rule_id": "numeric_consistency", "severity": "error"}]}
    rng = random.Random(0)
    assert judge(good, ["算术错误"], rng).verdict == "approve"
    j = judge(wrong, ["算术错误"], rng)
    assert (j.verdict, j.reason) == ("reject", "算术错误") and "120.50" in j.note
    assert judge(flagged, [], rng).verdict == "reject"
    assert judge(good, [], rng, noise=1.0).verdict == "reject"
    assert judge(good, [], rng, bias=1.0).verdict == "reject"
    assert judge(wrong, [], rng, bias=-1.0).verdict == "approve"


def test_simulated_reviewer_answers_through_http_and_moves_rates(store):
    outputs = {"calc_lcr": [{"prompt": f"p{i}", "output": f"LCR = {100 + i}%", "reference": "LCR = 100%"}
                            for i in range(6)],
               "concept_term": [{"prompt": "q", "output": "流动性覆盖率是…", "reference": "流动性覆盖率是…"}]}
    ids = sample_outputs_for_review(store, outputs, k=3, model_version="m1",
                                    families={"calc_lcr": "calc", "concept_term": "concept"})
    assert len(ids) == 4 and store.active_model_versions() == {"m1"}
    before = store.rejection_rates(tasks=["calc_lcr"], prior=0.1, strength=2.0)
    with ServerThread(create_app(store, registry(), reasons=REASONS)) as srv:
        counts = run_simulated_reviewer(srv.url, TOKENS["sim"], latency=0.001, seed=1)
        assert counts["approve"] + counts["reject"] == 4 and counts["refused"] == 0
        assert run_simulated_reviewer(srv.url, TOKENS["sim"]) == {"approve": 0, "reject": 0, "refused": 0}
    rows = store.verdicts_of()
    assert len(rows) == 4 and {v.reviewer_kind for v in rows} == {"simulated"}
    assert all(v.note.startswith("simulated:") for v in rows)
    after = store.rejection_rates(tasks=["calc_lcr"], prior=0.1, strength=2.0)
    assert before["calc_lcr"] == (0.1, 0) and after["calc_lcr"][1] == 3 and after["calc_lcr"] != before["calc_lcr"]
    # the next cycle's model retires m1: its leftovers leave the queue, new outputs enter
    sample_outputs_for_review(store, outputs, k=1, model_version="m2")
    assert store.active_model_versions() == {"m2"}


def test_load_reasons_from_the_shipped_ontology():
    reasons = load_reasons("examples/finance_risk/ontology.yaml")
    assert reasons["calc_lcr"] == ["算术错误", "小数位不符", "分子分母颠倒"]


def test_cli_status_token_and_serve_help(tmp_path):
    store = ReviewStore(tmp_path / "review.db")
    add_outputs(store, 2)
    store.add_verdict("calc_lcr-m1-0", "alice", "approve")
    store.add_verdict("calc_lcr-m1-0", "bob", "approve")
    runner = CliRunner()
    r = runner.invoke(cli_app, ["review", "status", "--store", str(tmp_path / "review.db")])
    assert r.exit_code == 0, r.output
    assert "output" in r.output and "alice" in r.output and "calc_lcr" in r.output
    # output queue: total 2, pending 1, in review 0, disputed 0, decided 1
    assert re.search(r"│ output\s*│ 2\s*│ 1\s*│ 0\s*│ 0\s*│ 1\s*│", r.output), r.output
    r = runner.invoke(cli_app, ["review", "status", "--store", str(tmp_path / "missing.db")])
    assert r.exit_code != 0 and "no review store here" in str(r.exception)
    assert not (tmp_path / "missing.db").exists()
    r = runner.invoke(cli_app, ["review", "token", "dora", "-q", "calc", "--adjudicator"])
    assert r.exit_code == 0
    token = r.output.split("it is not stored): ")[1].split()[0]
    entry = yaml.safe_load(r.output.split("reviewers file entry:\n", 1)[1])["reviewers"][0]
    assert entry["token_sha256"] == hash_token(token) and token not in r.output.split("entry:")[1]
    assert Reviewers.from_data({"reviewers": [entry]}).authenticate(token).adjudicator
    r = runner.invoke(cli_app, ["review", "serve", "--help"])
    assert r.exit_code == 0 and "--reviewers" in r.output
    bad = write_reviewers(tmp_path / "rv.yaml")
    bad.write_text("reviewers: [{id: x, token: plain}]", encoding="utf-8")
    r = runner.invoke(cli_app, ["review", "serve", "--reviewers", str(bad), "--store", str(tmp_path / "s.db")])
    assert r.exit_code != 0 and "plain 'token'" in str(r.exception or r.output)


def test_live_rejection_changes_across_cycles_through_the_simulated_reviewer(tmp_path):
    from mixtune.review.simulated import LiveRejection

    def outputs(right: int) -> dict:  # `right` of 4 answers state the reference's number
        return {"calc_lcr": [{"prompt": f"p{i}", "reference": "LCR = 125.00%",
                              "output": "LCR = 125.00%" if i < right else f"LCR = {90 + i}.00%"} for i in range(4)],
                "concept_term": [{"prompt": "q", "reference": "定义", "output": "定义"}]}

    with LiveRejection(tmp_path / "review.db", k=4, window=4, prior=0.1, strength=1.0, noise=0.0) as live:
        r0 = live.cycle(0, "ckpt-10", outputs(right=0))
        r1 = live.cycle(1, "ckpt-20", outputs(right=4))
        store = live.store
        assert r0["calc_lcr"] == (pytest.approx((4 + 0.1) / 5), 4)
        assert r1["calc_lcr"] == (pytest.approx(0.1 / 5), 4)  # the window holds only the newer verdicts
        assert r0["concept_term"][1] == 1 and r0["concept_term"][0] < 0.1
        rows = store.verdicts_of()
        assert len(rows) == 10 and {v.reviewer_kind for v in rows} == {"simulated"}
        assert {v.version for v in rows} == {"ckpt-10", "ckpt-20"}
        assert store.active_model_versions() == {"ckpt-20"}
