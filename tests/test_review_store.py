"""Review store and queue logic on SQLite and (with MIXTUNE_TEST_PG_URL) PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from browser.review_env import BACKENDS, REASONS, add_outputs, close_store, open_store, registry
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from mixtune.review.queue import agreement, cohen_kappa, next_item, progress, rejection_rates, states, submit
from mixtune.review.reviewers import AuthError, ForbiddenError, Reviewers
from mixtune.review.store import ReviewError, ReviewStore


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    s = open_store(request.param, tmp_path)
    yield s
    close_store(s)


def test_sqlite_store_runs_in_wal_mode(tmp_path):
    s = ReviewStore(tmp_path / "r.db")
    with s.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    s.close()


def test_verdicts_are_append_only_even_through_sql(store):
    add_outputs(store, 1)
    store.add_verdict("calc_lcr-m1-0", "alice", "approve")
    for stmt in (f"UPDATE {store.verdicts.name} SET verdict = 'reject'", f"DELETE FROM {store.verdicts.name}"):
        with pytest.raises(DBAPIError, match="append-only"):
            with store.engine.begin() as c:
                c.execute(text(stmt))
    assert [v.verdict for v in store.verdicts_of()] == ["approve"]


def test_double_submit_is_idempotent_and_a_changed_verdict_is_refused(store):
    add_outputs(store, 1)
    v1, created1 = store.add_verdict("calc_lcr-m1-0", "alice", "reject", reason="算术错误", idem_key="k1")
    v2, created2 = store.add_verdict("calc_lcr-m1-0", "alice", "reject", reason="算术错误", idem_key="k1")
    assert created1 and not created2 and v2.seq == v1.seq
    with pytest.raises(ReviewError, match="already gave 'reject'") as e:
        store.add_verdict("calc_lcr-m1-0", "alice", "approve", idem_key="k2")
    assert e.value.status == 409
    assert len(store.verdicts_of()) == 1


def test_two_reviewers_on_one_item_are_both_recorded(store):
    add_outputs(store, 1)
    store.add_verdict("calc_lcr-m1-0", "alice", "approve")
    store.add_verdict("calc_lcr-m1-0", "bob", "reject", reason="算术错误")
    rows = store.verdicts_of(item_id="calc_lcr-m1-0")
    assert [(v.reviewer, v.verdict) for v in rows] == [("alice", "approve"), ("bob", "reject")]
    assert all(v.version == "m1" and v.task_id == "calc_lcr" for v in rows)


def test_verdict_for_a_retired_model_version_is_refused(store):
    add_outputs(store, 1, version="m1")
    add_outputs(store, 1, version="m2")
    store.retire_model_version("m1")
    with pytest.raises(ReviewError, match="model version 'm1'.*no longer registered") as e:
        store.add_verdict("calc_lcr-m1-0", "alice", "approve")
    assert e.value.status == 410
    store.add_verdict("calc_lcr-m2-0", "alice", "approve")  # the active version is still reviewable
    reg = registry()
    it, remaining = next_item(store, reg.by_id["alice"], "output")
    assert it is None and remaining == 0  # the retired output left the queue


def test_enqueue_validates_spans_and_is_idempotent(store):
    store.register_model_version("m1")
    with pytest.raises(ReviewError, match="outside the output"):
        store.enqueue("x", "output", "calc_lcr", output="abc", model_version="m1",
                      findings=[{"start": 2, "end": 9, "rule_id": "r"}])
    with pytest.raises(ReviewError, match="model_version"):
        store.enqueue("y", "output", "calc_lcr", output="abc")
    assert store.enqueue("z", "sample", "calc_lcr", output="abc", data_version="d1")
    assert not store.enqueue("z", "sample", "calc_lcr", output="changed")
    assert store.item("z").output == "abc"


def test_dual_validation_dispute_goes_to_the_adjudicator(store):
    reg = registry()
    alice, bob, judy, carol = (reg.by_id[r] for r in ("alice", "bob", "judy", "carol"))
    ids = add_outputs(store, 2)
    # item 0: both approve -> decided; item 1: disagree -> disputed
    submit(store, reg, alice, ids[0], "approve")
    _, _, st = submit(store, reg, bob, ids[0], "approve")
    assert (st.state, st.decision) == ("decided", "approve")
    submit(store, reg, alice, ids[1], "approve")
    _, _, st = submit(store, reg, bob, ids[1], "reject", reason="算术错误", reasons=REASONS)
    assert st.state == "disputed"
    it, n = next_item(store, judy, "adjudication")
    assert it.id == ids[1] and n == 1
    with pytest.raises(ForbiddenError, match="not an adjudicator"):
        next_item(store, carol, "adjudication")
    _, _, st = submit(store, reg, judy, ids[1], "reject", reason="小数位不符", reasons=REASONS)
    assert (st.state, st.decision, st.adjudicator) == ("adjudicated", "reject", "judy")
    assert next_item(store, judy, "adjudication") == (None, 0)
    assert [v.role for v in store.verdicts_of(item_id=ids[1])] == ["review", "review", "adjudication"]
    with pytest.raises(ReviewError, match="already decided"):  # a third reviewer adds nothing
        submit(store, reg, judy, ids[0], "approve")
    assert progress(store)["adjudication"] == {"done": 1, "total": 1}


def test_unqualified_reviewer_and_bad_reason_are_refused(store):
    reg = registry()
    ids = add_outputs(store, 1)
    with pytest.raises(ForbiddenError, match="not qualified for task family 'calc'"):
        submit(store, reg, reg.by_id["carol"], ids[0], "approve")
    with pytest.raises(ReviewError, match="needs a reason code"):
        submit(store, reg, reg.by_id["alice"], ids[0], "reject", reasons=REASONS)
    with pytest.raises(ReviewError, match="not an anomaly pattern"):
        submit(store, reg, reg.by_id["alice"], ids[0], "reject", reason="made up", reasons=REASONS)
    assert store.verdicts_of() == []
    assert next_item(store, reg.by_id["carol"], "output") == (None, 0)


def test_tokens_authenticate_by_hash():
    reg = registry()
    assert reg.authenticate("tok-bob-0123456789").id == "bob"
    for bad in (None, "", "tok-bob-012345678"):
        with pytest.raises(AuthError):
            reg.authenticate(bad)
    with pytest.raises(Exception, match="plain 'token'"):
        Reviewers.from_data({"reviewers": [{"id": "x", "token": "secret"}]})


def test_queue_order_and_kappa(store):
    reg = registry()
    alice, bob = reg.by_id["alice"], reg.by_id["bob"]
    ids = add_outputs(store, 4)
    submit(store, reg, bob, ids[2], "approve")
    it, n = next_item(store, alice, "output")
    assert it.id == ids[2] and n == 4  # the half-reviewed item first
    it, _ = next_item(store, alice, "output", after=it.seq)
    assert it.id == ids[0]  # "next" moves past, wrapping to the oldest
    labels = {ids[0]: ("approve", "approve"), ids[1]: ("reject", "reject"), ids[2]: ("approve", "approve"),
              ids[3]: ("approve", "reject")}
    for iid, (a, b) in labels.items():
        submit(store, reg, alice, iid, a, reason="算术错误" if a == "reject" else "")
        if iid != ids[2]:
            submit(store, reg, bob, iid, b, reason="算术错误" if b == "reject" else "")
    ag = agreement(store)
    # pairs (a, b): (ap, ap) (re, re) (ap, ap) (ap, re): po = .75, pe = .75*.5 + .25*.5 = .5, kappa = .5
    assert ag["alice"]["n"] == 4 and ag["alice"]["agreement"] == 0.75
    assert ag["alice"]["kappa"] == pytest.approx(0.5)
    assert ag["bob"]["kappa"] == pytest.approx(0.5)
    st = states(store)
    assert sorted(s.state for s in st.values()) == ["decided", "decided", "decided", "disputed"]


def test_cohen_kappa_edge_cases():
    assert cohen_kappa([]) is None
    assert cohen_kappa([("a", "a")] * 3) == 1.0
    assert cohen_kappa([("a", "b"), ("b", "a")]) == pytest.approx(-1.0)


def test_rejection_rates_are_windowed_and_shrunk(store):
    ids = add_outputs(store, 6, task="calc_lcr") + add_outputs(store, 1, task="concept_term", family="concept")
    for i, iid in enumerate(ids[:6]):  # oldest two approve, the recent four reject
        store.add_verdict(iid, "sim", "reject" if i >= 2 else "approve", reviewer_kind="simulated", reason="x")
    rates = rejection_rates(store, window=4, prior=0.2, strength=2.0, tasks=["calc_lcr", "calc_car"])
    assert rates["calc_lcr"] == (pytest.approx((4 + 2 * 0.2) / (4 + 2)), 4)
    assert rates["calc_car"] == (0.2, 0)
    assert "concept_term" not in rates  # no verdict, not asked for
    wide = store.rejection_rates(window=50, prior=0.2, strength=0.0)
    assert wide["calc_lcr"] == (pytest.approx(4 / 6), 6)
    assert store.verdicts_of()[0].reviewer_kind == "simulated"


_WORKER = textwrap.dedent("""
    import sys
    from mixtune.review.store import ReviewStore
    url, prefix, me = sys.argv[1:4]
    s = ReviewStore(url, prefix=prefix)
    for i in range(int(sys.argv[4])):
        s.add_verdict(f"calc_lcr-m1-{i}", me, "approve")
        s.add_verdict(f"calc_lcr-m1-{i}", "twice", "approve", idem_key=f"k{i}")  # same submit from both
    print("ok")
""")


def test_concurrent_reviewers_in_two_processes(store, tmp_path):
    n = 15
    add_outputs(store, n)
    url = store.url
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, url, store.prefix, who, str(n)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for who in ("alice", "bob")]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    rows = store.verdicts_of()
    by = {}
    for v in rows:
        by.setdefault(v.reviewer, []).append(v.item_id)
    assert len(by["alice"]) == n and len(by["bob"]) == n
    assert sorted(by["twice"]) == sorted(set(by["twice"])) and len(by["twice"]) == n  # no duplicate
    assert all(s.state == "decided" for s in states(store).values())


def test_samples_enter_the_data_queue_and_decisions_name_both_reviewers(store):
    from mixtune.data.schema import Message, Sample
    from mixtune.review.samples import enqueue_samples, sample_decisions

    answer = "LCR = 125.00%，保证收益"
    good = Sample(task_id="calc_lcr", family="calc", messages=[Message(role="user", content="算 LCR"),
                                                               Message(role="assistant", content=answer)],
                  rule_results='[{"rule_id": "sensitive_words", "severity": "error", "reason": "承诺", '
                               '"span": [12, 16]}, {"rule_id": "x", "severity": "warning", "span": [0, 999]}]'
                  ).with_id()
    other = Sample(task_id="calc_lcr", family="calc", messages=[Message(role="user", content="算 CAR"),
                                                                Message(role="assistant", content="12%")]).with_id()
    assert enqueue_samples(store, [good, other], data_version="d7") == 2
    assert enqueue_samples(store, [good], data_version="d7") == 0
    it = store.item(good.id)
    assert (it.kind, it.output, it.version) == ("sample", answer, "d7")
    assert [(f["start"], f["end"]) for f in it.findings] == [(12, 16), (0, 0)]  # bad span kept, span-less
    reg = registry()
    it, _ = next_item(store, reg.by_id["alice"], "data")
    assert it.id == good.id
    for who in ("alice", "bob"):
        submit(store, reg, reg.by_id[who], good.id, "approve")
    submit(store, reg, reg.by_id["alice"], other.id, "needs_fix", reason="算术错误")
    got = sample_decisions(store)
    assert list(got) == [good.id]
    assert got[good.id].decision == "approve" and got[good.id].reviewers == ("alice", "bob")
