"""Blind A/B review of shadow pairs in the review store: sampling, blindness, the candidate/champion
mapping, the `mixtune shadow sample|report` round trip, and an old log's shadow_reviews table."""

from __future__ import annotations

import csv
import itertools
import json

import pytest
import sqlalchemy as sa
from browser.review_env import BACKENDS, close_store, open_store
from typer.testing import CliRunner

from mixtune.cli import app
from mixtune.release.shadow import canary_report
from mixtune.release.store import ShadowStore
from mixtune.review.app import create_app
from mixtune.review.pairs import enqueue_pairs, pair_id, pair_verdicts, stratified_sample, summary
from mixtune.review.reviewers import Reviewers, reviewers_file_entry
from mixtune.review.store import ReviewStore

GOOD = "流动性覆盖率为150.00%，符合监管要求。"


def _records(n: int, *, better: str = "candidate") -> list[dict]:
    other = "champion" if better == "candidate" else "candidate"
    return [{"request_id": f"r{i:03d}", "ts": 1000.0 + i, "source": "gateway", "routed_to": "champion",
             "task_id": ["concept", "compliance"][i % 2],
             "prompt": json.dumps([{"role": "user", "content": f"问题{i}"}], ensure_ascii=False),
             f"{better}_answer": GOOD + "并引用了依据。", f"{other}_answer": GOOD} for i in range(n)]


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    s = open_store(request.param, tmp_path)
    yield s
    close_store(s)


def test_stratified_sample_covers_rare_strata():
    recs = [{"request_id": f"r{i}", "ts": float(i), "task_id": "big", "routed_to": "champion",
             "candidate_answer": "x", "champion_answer": "x"} for i in range(200)]
    recs += [{"request_id": f"s{i}", "ts": 500.0 + i, "task_id": "rare", "routed_to": "candidate",
              "candidate_answer": "完全不同的回答", "champion_answer": "x"} for i in range(3)]
    picked = stratified_sample(recs, 10, seed=1)
    assert len(picked) == 10 and sum(r["task_id"] == "rare" for r in picked) >= 1
    assert picked == stratified_sample(recs, 10, seed=1)  # seeded


def test_pairs_are_blind_in_the_web_api_and_the_order_is_seeded(store):
    from fastapi.testclient import TestClient

    recs = _records(20)
    assert len(enqueue_pairs(store, recs, tag="t1", seed=3)) == 20
    assert enqueue_pairs(store, recs, tag="t1", seed=3) == []  # already queued: kept as it was
    orders = [store.item(pair_id("t1", r["request_id"])).meta["a_is"] for r in recs]
    assert {"candidate", "champion"} == set(orders)  # both orders occur: position says nothing
    reg = Reviewers.from_data({"reviewers": [reviewers_file_entry("alice", "tok-alice-0123456789", ["*"])]})
    with TestClient(create_app(store, reg)) as c:
        auth = {"Authorization": "Bearer tok-alice-0123456789"}
        r = c.get("/api/next?queue=pair", headers=auth)
        page = c.get("/queue/pair", headers=auth).text
    assert page.index("Answer A") < page.index("Answer B") and "btn-tie" in page
    assert "champion" not in page and "candidate" not in page
    body = r.json()
    assert r.status_code == 200 and body["item"]["kind"] == "pair" and body["verdicts"] == ["a", "b", "tie"]
    assert "a_is" not in body["item"]["meta"] and "champion" not in json.dumps(body)
    assert body["item"]["meta"]["request_id"].startswith("r")


def _legacy(votes: list[str], a_is: str) -> str:
    """The mapping release/review_pairs.py applied before the store: majority, a split vote is a tie."""
    b_is = "champion" if a_is == "candidate" else "candidate"
    score = sum({"a": 1, "b": -1, "tie": 0}[v] for v in votes)
    return a_is if score > 0 else b_is if score < 0 else "tie"


def test_verdicts_map_back_to_candidate_and_champion_as_before(store):
    cases = [(votes, a_is) for n in (1, 2) for votes in itertools.product(("a", "b", "tie"), repeat=n)
             for a_is in ("candidate", "champion")]
    recs = _records(len(cases))
    for (votes, a_is), r in zip(cases, recs):
        enqueue_pairs(store, [r], tag="t", a_is={r["request_id"]: a_is})
        for who, v in zip(("alice", "bob"), votes):
            store.add_verdict(pair_id("t", r["request_id"]), who, v)
    got = pair_verdicts(store, "t")
    for (votes, a_is), r in zip(cases, recs):
        assert got[r["request_id"]]["verdict"] == _legacy(list(votes), a_is), (votes, a_is)
    # dual validation on demand: with required=2 a single vote does not count yet
    assert set(pair_verdicts(store, "t", required=2)) == {r["request_id"] for (v, _), r in zip(cases, recs)
                                                          if len(v) == 2}
    # an adjudicator settles a split vote, whatever the majority rule would say
    split = next(r for (v, a), r in zip(cases, recs) if v == ("a", "b") and a == "candidate")
    store.add_verdict(pair_id("t", split["request_id"]), "judy", "a", role="adjudication")
    assert pair_verdicts(store, "t")[split["request_id"]]["verdict"] == "candidate"
    assert pair_verdicts(store, "other-log") == {}  # pairs of another shadow log stay apart


@pytest.mark.parametrize("fmt", ["labelstudio", "argilla", "csv"])
def test_shadow_sample_review_import_and_report_decide_with_the_experts(tmp_path, fmt):
    db, rstore = f"sqlite:///{tmp_path / 's.db'}", str(tmp_path / "review.db")
    ShadowStore(db).insert_records(_records(30))
    out = tmp_path / f"review.{'csv' if fmt == 'csv' else 'json'}"
    run = CliRunner()
    res = run.invoke(app, ["shadow", "sample", "--db", db, "--store", rstore, "--n", "20", "--out", str(out),
                           "--format", fmt, "--seed", "3"])
    assert res.exit_code == 0 and "queued 20 pair(s)" in res.output, res.output
    text = out.read_text(encoding="utf-8")
    assert "candidate" not in text and "champion" not in text  # blind: the mapping is not in the file

    def better(a, b):
        return "A" if "引用" in a else "B"

    if fmt == "labelstudio":
        tasks = json.loads(text)
        for t in tasks:
            t["annotations"] = [{"completed_by": 7, "result": [{"from_name": "verdict", "type": "choices",
                                 "value": {"choices": [better(t["data"]["answer_a"], t["data"]["answer_b"])]}}]}]
        out.write_text(json.dumps(tasks, ensure_ascii=False), encoding="utf-8")
    elif fmt == "argilla":
        recs = json.loads(text)
        for r in recs:
            r["responses"] = {"verdict": [{"value": better(r["fields"]["answer_a"], r["fields"]["answer_b"]),
                                           "user_id": "expert1"}]}
        out.write_text(json.dumps(recs, ensure_ascii=False), encoding="utf-8")
    else:
        items = list(csv.DictReader(out.open(encoding="utf-8", newline="")))
        for it in items:
            it["verdict"], it["reviewer"] = better(it["answer_a"], it["answer_b"]), "expert1"
        with out.open("w", encoding="gbk", newline="") as fh:  # as Excel saves it on Chinese Windows
            w = csv.DictWriter(fh, fieldnames=list(items[0]))
            w.writeheader()
            w.writerows(items)
    res = run.invoke(app, ["shadow", "sample", "--db", db, "--store", rstore, "--import", str(out)])
    assert res.exit_code == 0 and "judged pairs 20" in res.output and "candidate 20" in res.output, res.output
    res = run.invoke(app, ["shadow", "sample", "--db", db, "--store", rstore, "--n", "50"])
    assert "queued 10 pair(s)" in res.output  # the next sample takes only pairs not queued yet
    gates = tmp_path / "gates.jsonl"
    res = run.invoke(app, ["shadow", "report", "--db", db, "--store", rstore, "--gates-out", str(gates),
                           "--n-boot", "300"])
    decision = json.loads(gates.read_text(encoding="utf-8").splitlines()[-1])
    assert decision["meta"]["signals"]["expert"]["n"] == 20 and decision["status"] == "pass", res.output
    assert decision["meta"]["expert_verdicts"] == 20
    # without the store the experts are simply absent (no rules, no judge: nothing to decide on)
    d = canary_report(ShadowStore(db), n_boot=300)
    assert d.meta["expert_verdicts"] == 0 and "expert" not in d.meta["signals"]


def test_an_old_logs_shadow_reviews_table_moves_into_the_store_once(tmp_path):
    db = f"sqlite:///{tmp_path / 's.db'}"
    shadow = ShadowStore(db)
    shadow.insert_records(_records(4))
    with shadow.engine.begin() as c:  # the table older versions kept verdicts in
        c.exec_driver_sql("CREATE TABLE shadow_reviews (request_id VARCHAR(80) PRIMARY KEY, a_is VARCHAR(16) "
                          "NOT NULL, exported_ts FLOAT NOT NULL, verdict VARCHAR(16), reviewer VARCHAR(120), "
                          "comment TEXT, verdict_ts FLOAT)")
        c.execute(sa.text("INSERT INTO shadow_reviews VALUES (:r, :a, 1.0, :v, :who, NULL, 2.0)"),
                  [{"r": "r000", "a": "champion", "v": "candidate", "who": "e1,e2"},
                   {"r": "r001", "a": "candidate", "v": "tie", "who": "e1"},
                   {"r": "r002", "a": "candidate", "v": None, "who": None}])
    rstore = str(tmp_path / "review.db")
    for _ in range(2):  # idempotent
        res = CliRunner().invoke(app, ["shadow", "report", "--db", db, "--store", rstore,
                                       "--gates-out", str(tmp_path / "g.jsonl"), "--n-boot", "50"])
        assert res.exit_code in (0, 1, 3), res.output
    rs = ReviewStore(rstore)
    tag = ShadowStore(db).secret("review_pairs")[:10]
    got = pair_verdicts(rs, tag)
    assert {k: v["verdict"] for k, v in got.items()} == {"r000": "candidate", "r001": "tie"}
    assert got["r000"]["reviewers"] == ["e1", "e2"] and summary(got)["votes"] == 3
    assert rs.item(pair_id(tag, "r000")).meta["a_is"] == "champion"  # the order the experts saw is kept
