"""The staged rollout through real `mixtune serve` and `mixtune gateway` processes (issue 13)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from mixtune.data.build import assign_splits
from mixtune.data.generate import generate_samples
from mixtune.data.kpis import score as score_kpi
from mixtune.data.ontology import load_ontology
from mixtune.model.tiny import make_test_model
from mixtune.release.rollout import run_rollout
from mixtune.release.rollout_analysis import StepThresholds
from mixtune.release.store import ShadowStore
from mixtune.rules import RuleEngine, RuleSet

pytestmark = pytest.mark.integration
EX = Path(__file__).resolve().parents[1] / "examples" / "finance_risk"
ONTO = load_ontology(EX / "ontology.yaml")
ENGINE = RuleEngine(RuleSet.load(EX / "rules.yaml"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("rollout")
    samples = generate_samples(ONTO, n_per_task=10, seed=0, defect_rate=0.0)
    assign_splits(samples, 0.1, 0.2, seed=0, traffic_fraction=0.3)
    traffic = [s for s in samples if s.split == "traffic" and not s.chain_steps]
    # one tiny model for both arms: the rollout machinery, not model quality, is under test here
    model = make_test_model(d / "tiny", texts=[m.content for s in samples for m in s.messages])
    return d, samples, traffic, str(model)


def rollout(d, traffic, model, name, **kw):
    args = dict(traffic=traffic, session_samples=traffic, ontology=ONTO, engine=ENGINE, kpi_fn=score_kpi,
                out_dir=d / name, db_path=d / f"{name}.db", steps=[5.0, 50.0], requests_per_step=8,
                sessions_per_step=1, session_turns=2, feedback_noise=0.0, max_new_tokens=8, concurrency=4,
                thresholds=StepThresholds(min_pairs=4, n_boot=200), startup_timeout=120, shutdown_timeout=10,
                canary_timeout=10)
    args.update(kw)
    return run_rollout(model, model, **args)


def test_traffic_split_is_held_out_from_the_evaluation_split(setup):
    _, samples, traffic, _ = setup
    test_ids = {s.id for s in samples if s.split == "test"}
    assert traffic and not test_ids & {s.id for s in traffic}
    by_task = {s.task_id for s in traffic}
    assert len(by_task) > 5  # stratified per task


@pytest.mark.slow  # a second full rollout (two model servers): ~25 s idle, a minute on a loaded box
def test_rollout_ramps_through_real_processes_and_records_every_answer(setup):
    d, _, traffic, model = setup
    res = rollout(d, traffic, model, "ok")
    assert [s["share_pct"] for s in res.steps] == [5.0, 50.0]
    assert res.status in ("pass", "inconclusive") and not res.rollback, res.reason
    for s in res.steps:
        assert s["records_missing"] == 0 and s["client"]["failed"] == 0
        assert {"quality", "availability", "latency_p95", "feedback", "expert"} <= set(s["checks"])
        assert s["latency_ms"]["champion"]["n"] > 0 and s["gateway_exit"]["sigkill"] is False
    # the larger share routes more requests to the candidate; sessions posted feedback
    assert res.steps[1]["traffic"]["candidate"] >= res.steps[0]["traffic"]["candidate"]
    store = ShadowStore(f"sqlite:///{d / 'ok.db'}")
    rows = {r["request_id"]: r for r in store.load_records()}
    assert set(res.answered_ids) <= set(rows) and all(rows[i]["answered_by"] for i in res.answered_ids)
    assert store.load_feedback()
    store.close()
    assert all(p["code"] is not None for p in res.evidence["processes"].values())


def test_killing_the_candidate_mid_rollout_fails_rolls_back_and_loses_no_record(setup):
    d, _, traffic, model = setup
    killed = []

    def fault(step, procs):
        if step == 2:
            procs["candidate"].proc.send_signal(signal.SIGKILL)
            procs["candidate"].proc.wait()
            killed.append(step)

    res = rollout(d, traffic, model, "kill", fault=fault)
    assert killed == [2]
    assert res.steps[0]["status"] != "fail" and res.steps[0]["records_missing"] == 0
    assert res.status == "fail" and res.rollback
    assert "candidate server exited" in res.reason and "step 2" in res.reason
    store = ShadowStore(f"sqlite:///{d / 'kill.db'}")
    rows = {r["request_id"]: r for r in store.load_records()}
    store.close()
    assert res.answered_ids and set(res.answered_ids) <= set(rows)
    assert all(rows[i]["answered_by"] == "champion" or rows[i]["candidate_answer"] for i in res.answered_ids)
    after = [r for r in rows.values() if r.get("candidate_error")]
    assert after  # requests after the kill were answered by the champion, the candidate's failure recorded
