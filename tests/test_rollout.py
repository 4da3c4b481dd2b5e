"""The staged rollout through real `mixtune serve` and `mixtune gateway` processes (issue 13)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from mixtune.data.build import assign_splits
from mixtune.data.generate import generate_samples
from mixtune.data.kpis import score as score_kpi
from mixtune.data.ontology import load_ontology
from mixtune.model.tiny import make_test_model
from mixtune.release.rollout import gate_decisions, run_rollout
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
    model = make_test_model(d / "tiny")
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


@pytest.mark.slow  # the pipeline-level kill test below covers this in the default tier
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
    assert res.steps[1]["checks"]["processes"]["status"] == "fail"
    steps, final = gate_decisions(res, {"model_id": 7})
    assert [d.gate for d in steps] == ["rollout_step", "rollout_step"] and final.gate == "canary"
    assert final.status == "fail" and final.meta["rollback"] and final.meta["model_id"] == 7
    assert any(c.metric == "processes" and c.status == "fail" for c in final.checks)
    store = ShadowStore(f"sqlite:///{d / 'kill.db'}")
    rows = {r["request_id"]: r for r in store.load_records()}
    store.close()
    assert res.answered_ids and set(res.answered_ids) <= set(rows)
    assert all(rows[i]["answered_by"] == "champion" or rows[i]["candidate_answer"] for i in res.answered_ids)
    after = [r for r in rows.values() if r.get("candidate_error")]
    assert after  # requests after the kill were answered by the champion, the candidate's failure recorded


def _pipeline_run(tmp_path, samples, model, candidate_path=None):
    """A run directory whose eval step is done, a released champion in the registry; returns (cfg, rd, champ id)."""
    import shutil

    from mixtune.config import load_config
    from mixtune.data.io import write_samples
    from mixtune.release.registry import Registry
    from mixtune.rundir import RunDir

    cfg = load_config(EX / "pipeline.yaml", [
        f"output_dir={tmp_path}", "name=t", f"registry.url=sqlite:///{tmp_path / 'reg.db'}",
        "gates.validate=[{metric: primary, min: 0.0}]", "gates.canary=[]", "gates.rollout.steps=[5, 50]",
        "gates.rollout.requests_per_step=6", "gates.rollout.sessions_per_step=1", "gates.rollout.session_turns=2",
        "gates.rollout.max_new_tokens=8", "gates.rollout.startup_timeout=120", "gates.rollout.canary_timeout=10",
        "gates.rollout.shutdown_timeout=10", "gates.bootstrap_samples=200"])
    rd = RunDir(cfg)
    write_samples(samples, rd.sub("data") / "samples.parquet")
    recs = [{"model": "m", "sample_id": f"s{i}", "task_id": "calc_lcr", "family": "calculation", "group": "logic",
             "layer": "business", "metrics": {"numeric_accuracy": 1.0}, "primary": 1.0} for i in range(5)]
    for name in ("base", "stage2"):
        (rd.sub("eval") / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    (rd.path / "eval" / "summary.json").write_text(json.dumps({"stage2": {"calculation": 1.0}}))
    if candidate_path is None:
        shutil.copytree(model, rd.path / "stage2" / "model")
    else:
        (rd.path / "stage2" / "model").mkdir(parents=True)
        (rd.path / "stage2" / "model" / "config.json").write_text("{not json")  # cannot be served
    reg = Registry(f"sqlite:///{tmp_path / 'reg.db'}")
    champ = reg.register("finance-risk", model, metrics={"eval_records": str(rd.path / "eval" / "base.jsonl")})
    for state, gate in (("validated", "validate"), ("canary", None), ("released", "canary")):
        ev = {"gate": gate, "status": "pass", "meta": {"model_id": champ.id}} if gate else None
        reg.transition(champ.id, state, who="test", why="the serving champion", evidence=ev)
    reg.close()
    return cfg, rd, champ.id


@pytest.mark.parametrize("fault", ["kill", pytest.param("broken", marks=pytest.mark.slow)])
def test_pipeline_canary_rolls_back_a_failing_candidate_and_keeps_the_champion(setup, tmp_path, monkeypatch, fault):
    """`mixtune run`'s gate step: the candidate server is killed mid-rollout (or cannot start) → `fail`,
    rollback (model rejected, the champion alias stays), the reason named, no answered request lost."""
    import functools

    import mixtune.release.rollout as rollout_mod
    from mixtune.release.pipeline_steps import step_gates_and_registry
    from mixtune.release.registry import Registry

    _, samples, _, model = setup
    cfg, rd, champ_id = _pipeline_run(tmp_path, samples, model, candidate_path="broken" if fault == "broken" else None)

    def kill_in_step_2(step, procs):
        if step == 2:
            procs["candidate"].proc.send_signal(signal.SIGKILL)
            procs["candidate"].proc.wait()

    monkeypatch.setattr(rollout_mod, "run_rollout", functools.partial(rollout_mod.run_rollout, fault=kill_in_step_2))
    out = step_gates_and_registry(cfg, rd)
    assert out["gates"]["canary"] == "fail" and out["state"] == "rejected"
    reg = Registry(f"sqlite:///{tmp_path / 'reg.db'}")
    assert reg.get_alias("finance-risk", "champion").id == champ_id  # rolled back: the champion stays
    reg.close()
    gates = [json.loads(x) for x in (rd.path / "gates.jsonl").read_text().splitlines()]
    final = gates[-1]
    assert final["gate"] == "canary" and final["meta"]["rollback"] is True
    assert all(p["code"] is not None for p in final["meta"]["processes"].values())  # every process stopped
    if fault == "broken":
        assert "candidate server failed to start" in final["meta"]["reason"]
        return
    assert "candidate server exited" in final["meta"]["reason"] and "step 2" in final["meta"]["reason"]
    steps = [g for g in gates if g["gate"] == "rollout_step"]
    assert [g["status"] for g in steps][1] == "fail" and all(g["meta"]["records_missing"] == 0 for g in steps)
    store = ShadowStore(f"sqlite:///{rd.path / 'shadow.db'}")
    rows = store.load_records()
    store.close()
    answered = [r for r in rows if r["answered_by"]]
    assert len(answered) == final["meta"]["answered"] > 0  # every answered request is in shadow.db, with its arm
    assert all(r["routed_to"] in ("champion", "candidate") for r in rows)


@pytest.mark.parametrize("override,expected", [("gates.rollout.steps=[50, 5]", "steps must be increasing"),
                                                ("gates.rollout.analysis.bogus=1", "gates.rollout.analysis.bogus")])
def test_rollout_config_errors_name_the_key(override, expected):
    from mixtune.config import load_config
    from mixtune.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        load_config(EX / "pipeline.yaml", [override])
    assert expected in str(e.value) and "gates.rollout" in str(e.value)


def test_step_analysis_fails_on_a_worse_candidate_and_waits_with_too_few_pairs():
    from mixtune.release.rollout_analysis import RolloutAnalyzer

    def rec(i, cand, champ, c_err=None):
        return {"request_id": f"r{i}", "answered_by": "champion", "routed_to": "champion", "champion_answer": champ,
                "candidate_answer": None if c_err else cand, "candidate_error": c_err, "champion_error": None,
                "champion_latency_ms": 10.0, "candidate_latency_ms": 12.0}

    quality = lambda r, side: 1.0 if r[f"{side}_answer"] == "good" else 0.0  # noqa: E731
    few = RolloutAnalyzer(quality, StepThresholds(min_pairs=6, n_boot=200)).analyse(1, 5, [rec(0, "good", "good")], [])
    assert few["status"] == "inconclusive" and "only 1 scored pairs" in few["reason"]
    worse = RolloutAnalyzer(quality, StepThresholds(min_pairs=6, n_boot=200))
    step = worse.analyse(1, 25, [rec(i, "bad", "good") for i in range(40)], [])
    assert step["status"] == "fail" and step["checks"]["quality"]["status"] == "fail"
    down = RolloutAnalyzer(quality, StepThresholds(min_pairs=2, n_boot=200))
    step = down.analyse(1, 5, [rec(i, "good", "good", c_err="connection refused" if i % 2 else None)
                               for i in range(10)], [])
    assert step["checks"]["availability"]["status"] == "fail" and "error rate 50%" in step["reason"]


def test_gates_yaml_expresses_the_rollout_steps_and_analyses(tmp_path):
    from mixtune.errors import ConfigError
    from mixtune.release.gates import load_gate_file

    gf = load_gate_file(EX / "gates.yaml")
    assert gf.rollout.steps == [5.0, 25.0, 50.0] and gf.rollout.analysis.max_error_rate == 0.05
    bad = tmp_path / "gates.yaml"
    bad.write_text("rollout:\n  analysis: {max_eror_rate: 0.1}\n")
    with pytest.raises(ConfigError, match=r"gates.yaml:rollout.analysis.max_eror_rate"):
        load_gate_file(bad)


@pytest.mark.slow  # waits out canary timeouts and a SIGKILL: ~40 s idle
def test_a_hung_candidate_fails_the_step_and_is_killed_after_sigterm(setup):
    d, _, traffic, model = setup

    def fault(step, procs):
        if step == 1:
            procs["candidate"].proc.send_signal(signal.SIGSTOP)  # alive but answering nothing

    res = rollout(d, traffic, model, "hang", fault=fault, steps=[25.0], requests_per_step=6, sessions_per_step=0,
                  canary_timeout=3, shutdown_timeout=3)
    assert res.status == "fail" and res.rollback and "hung" in res.reason
    assert res.evidence["processes"]["candidate"]["sigkill"] is True  # SIGTERM ignored while stopped
    assert res.steps[0]["records_missing"] == 0 and res.steps[0]["client"]["failed"] == 0  # champion answered


def test_latency_check_compares_what_each_arm_answered_not_its_mirrors():
    from mixtune.release.rollout_analysis import RolloutAnalyzer

    def rec(i, arm, c_ms, h_ms):
        return {"request_id": f"r{i}", "answered_by": arm, "routed_to": arm, "champion_answer": "a",
                "candidate_answer": "a", "candidate_error": None, "champion_error": None,
                "champion_latency_ms": h_ms, "candidate_latency_ms": c_ms}

    th = StepThresholds(min_pairs=2, n_boot=200, max_latency_p95_ratio=2.0, latency_slack_ms=0)
    # slow mirrored candidate calls (queued behind the mirror workers) do not count against it
    mirrored = [rec(i, "champion", 900.0, 100.0) for i in range(10)] + [rec(10 + i, "candidate", 150.0, 900.0)
                                                                        for i in range(5)]
    step = RolloutAnalyzer(lambda r, s: 1.0, th).analyse(1, 25, mirrored, [])
    assert step["checks"]["latency_p95"]["status"] == "pass"
    slow = [rec(i, "champion", 900.0, 100.0) for i in range(10)] + [rec(10 + i, "candidate", 900.0, 100.0)
                                                                    for i in range(5)]
    step = RolloutAnalyzer(lambda r, s: 1.0, th).analyse(1, 25, slow, [])
    assert step["status"] == "fail" and "latency_p95" in step["reason"]
    few = RolloutAnalyzer(lambda r, s: 1.0, th).analyse(1, 5, slow[:12], [])
    assert few["checks"]["latency_p95"]["status"] == "pass" and "too few" in few["checks"]["latency_p95"]["reason"]
