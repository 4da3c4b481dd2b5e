"""Evaluation gates: thresholds, paired deltas vs champion, gates YAML and the gate CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
import yaml
from typer.testing import CliRunner

from mixtune.commands import gate as gate_cmd
from mixtune.config import GatesConfig
from mixtune.errors import ConfigError, DataError
from mixtune.release.gates import (
    GateSpec,
    append_decision,
    evaluate_gate,
    load_eval_records,
    load_gate_file,
    read_decisions,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "finance_risk" / "gates.yaml"
TASKS = [("calc_lcr", "calculation"), ("concept_term", "concept"), ("compliance_exposure", "compliance")]


def make_records(scores: np.ndarray, model: str = "m") -> list[dict]:
    """One business and one base record per sample; ``scores`` is the per-sample primary."""
    recs = []
    for i, s in enumerate(scores):
        task, family = TASKS[i % len(TASKS)]
        head = {"model": model, "sample_id": f"s{i}", "task_id": task, "family": family, "group": "logic"}
        recs.append({**head, "layer": "business", "primary": float(s),
                     "metrics": {"numeric_accuracy": float(s), "format_compliance": 1.0}})
        recs.append({**head, "layer": "base", "primary": 0.8, "metrics": {"format_compliance": 0.8}})
    return recs


@pytest.fixture
def champion_scores() -> np.ndarray:
    return np.random.default_rng(0).random(240)


def _delta_gate(cand, champ, thr=0.0, **kw):
    spec = [{"metric": "numeric_accuracy", "scope": "overall", "min_delta_vs_champion": thr}]
    return evaluate_gate("validate", spec, cand, champ, n_boot=300, seed=0, **kw)


def test_better_candidate_passes_worse_fails_noise_inconclusive(champion_scores):
    rng = np.random.default_rng(1)
    champ = make_records(champion_scores)
    better = make_records(np.clip(champion_scores + 0.1 + rng.normal(0, 0.05, 240), 0, 1))
    worse = make_records(np.clip(champion_scores - 0.1 + rng.normal(0, 0.05, 240), 0, 1))
    noise = make_records(np.clip(champion_scores + rng.normal(0, 0.05, 240), 0, 1))
    ok, bad, unsure = _delta_gate(better, champ), _delta_gate(worse, champ), _delta_gate(noise, champ)
    assert ok.status == "pass" and ok.checks[0].lo > 0
    assert bad.status == "fail" and bad.checks[0].hi < 0
    assert unsure.status == "inconclusive" and unsure.checks[0].lo < 0 < unsure.checks[0].hi
    assert ok.checks[0].n == 240  # paired on (sample, layer); base records lack the metric


def test_lower_is_better_flips_the_improvement(champion_scores):
    champ = make_records(champion_scores)
    lower = make_records(np.clip(champion_scores - 0.1, 0, 1))
    spec = [GateSpec(metric="numeric_accuracy", min_delta_vs_champion=0.02, greater_is_better=False)]
    assert evaluate_gate("validate", spec, lower, champ, n_boot=200).status == "pass"
    spec = [GateSpec(metric="numeric_accuracy", min_delta_vs_champion=0.02, greater_is_better=True)]
    assert evaluate_gate("validate", spec, lower, champ, n_boot=200).status == "fail"


def test_absolute_thresholds_and_scopes(champion_scores):
    recs = make_records(np.full(240, 0.5))
    for rec in recs:
        if rec["family"] == "calculation" and rec["layer"] == "business":
            rec["primary"] = 0.9
    d = evaluate_gate("validate", [
        {"metric": "primary", "scope": "calculation", "min": 0.85},
        {"metric": "primary", "scope": "concept_term", "max": 0.4},
        {"metric": "format_compliance", "scope": "base", "min": 0.75, "max": 0.85},
    ], recs)
    statuses = [(c.scope, c.kind, c.status) for c in d.checks]
    assert statuses[0] == ("calculation", "min", "pass")
    # calculation scope covers 80 business (0.9) + 80 base (0.8) records
    assert d.checks[0].value == pytest.approx(0.85) and d.checks[0].n == 160
    assert statuses[1] == ("concept_term", "max", "fail")
    assert statuses[2:] == [("base", "min", "pass"), ("base", "max", "pass")]
    assert d.status == "fail"


def test_missing_champion_and_unknown_scope(champion_scores):
    cand = make_records(champion_scores)
    assert _delta_gate(cand, None).status == "inconclusive"
    assert _delta_gate(cand, None, pass_without_champion=True).status == "pass"
    typo = evaluate_gate("validate", [{"metric": "primary", "scope": "calculaton", "min": 0.0}], cand)
    assert typo.status == "fail" and "no candidate samples" in typo.checks[0].reason
    with pytest.raises(ConfigError, match="no checks"):
        evaluate_gate("canary", [], cand)
    with pytest.raises(ConfigError, match="unknown key 'minimum'"):
        evaluate_gate("canary", [{"metric": "primary", "minimum": 0.5}], cand)


def ifeval_records(passed: list[bool], model: str = "m", family: str = "ifeval") -> list[dict]:
    """IFEval records as the runner writes them: prompt-level loose verdicts ``passed``."""
    return [{"model": model, "sample_id": f"{family}:{1000 + i}", "task_id": family, "family": family,
             "group": "general", "layer": "base", "primary": float(ok),
             "metrics": {"ifeval_prompt_strict": float(ok), "ifeval_prompt_loose": float(ok),
                         "ifeval_inst_strict": float(ok), "ifeval_inst_loose": float(ok)}}
            for i, ok in enumerate(passed)]


IFEVAL_BOUND = [{"metric": "ifeval_prompt_loose", "scope": "ifeval", "min_delta_vs_champion": -0.05}]


def test_ifeval_bound_fails_on_a_drop_beyond_it_and_passes_without_one():
    """The pipeline_smollm2 check: stage 2 >= champion - 0.05 on IFEval prompt-level loose."""
    base = ifeval_records([True] * 30 + [False] * 10)
    same = ifeval_records([True] * 30 + [False] * 10)
    better = ifeval_records([True] * 36 + [False] * 4)
    dropped = ifeval_records([True] * 15 + [False] * 25)  # 15 of the 30 prompts base followed are lost
    slipped = ifeval_records([True] * 29 + [False] * 11)  # one prompt lost: the interval straddles -0.05
    run = lambda cand: evaluate_gate("validate", IFEVAL_BOUND, cand, base, n_boot=500, seed=0)  # noqa: E731
    ok, up, bad, unsure = run(same), run(better), run(dropped), run(slipped)
    assert ok.status == "pass" and ok.checks[0].value == 0.0 and ok.checks[0].n == 40
    assert up.status == "pass" and up.checks[0].lo > -0.05
    assert bad.status == "fail" and bad.checks[0].value == pytest.approx(-15 / 40) and bad.checks[0].hi < -0.05
    assert unsure.status == "inconclusive" and unsure.checks[0].lo < -0.05 < unsure.checks[0].hi
    # the Chinese set is its own scope: the English bound does not see it
    zh_only = ifeval_records([False] * 40, family="ifeval_zh")
    assert run(same + zh_only).checks[0].n == 40


def test_ifeval_records_stay_out_of_overall_and_layer_scopes(champion_scores):
    domain = make_records(champion_scores[:30])
    cand = domain + ifeval_records([False] * 40)  # IFEval primary 0 must not drag the domain score down
    champ = domain + ifeval_records([True] * 40)
    d = evaluate_gate("validate", [{"metric": "primary", "scope": "overall", "min": 0.0},
                                   {"metric": "primary", "scope": "base", "min": 0.0},
                                   {"metric": "primary", "scope": "overall", "min_delta_vs_champion": -0.01}],
                      cand, champ, n_boot=200)
    overall, base_layer, delta = d.checks
    assert overall.n == 60 and overall.value == pytest.approx(sum(r["primary"] for r in domain) / 60)
    assert base_layer.n == 30 and base_layer.value == pytest.approx(0.8)
    assert delta.status == "pass" and delta.value == 0.0  # the IFEval drop is not a domain drop
    # an IFEval metric outside the IFEval scopes finds nothing, and the reason says where to look
    miss = evaluate_gate("validate", [{"metric": "ifeval_prompt_loose", "scope": "overall", "min": 0.0}], cand)
    assert miss.status == "fail" and "scope ifeval or ifeval_zh" in miss.checks[0].reason
    by_family = evaluate_gate("validate", [{"metric": "primary", "scope": "ifeval", "max": 0.0}], cand)
    assert by_family.status == "pass" and by_family.checks[0].n == 40


def test_bad_records_are_data_errors(tmp_path):
    recs = make_records(np.array([0.5, 0.5]))
    recs[0]["primary"] = "high"
    with pytest.raises(DataError, match="not a finite number"):
        evaluate_gate("validate", [{"metric": "primary", "min": 0.1}], recs)
    dup = make_records(np.array([0.5])) * 2
    with pytest.raises(DataError, match="duplicate"):
        evaluate_gate("validate", [{"metric": "primary", "min": 0.1}], dup)
    p = tmp_path / "eval.jsonl"
    p.write_text(json.dumps(recs[1]) + "\n{oops\n")
    with pytest.raises(DataError, match=r"eval.jsonl:2"):
        load_eval_records(p)
    both = make_records(np.array([0.1]), "a") + make_records(np.array([0.9]), "b")
    p.write_text("".join(json.dumps(r) + "\n" for r in both))
    with pytest.raises(DataError, match="several models"):
        load_eval_records(p)
    assert {r["model"] for r in load_eval_records(p, "b")} == {"b"}


def test_gate_files_strict_and_compatible_with_pipeline_config(tmp_path):
    gf = load_gate_file(EXAMPLE)
    assert gf.gates["validate"] and gf.gates["canary"]
    # The same YAML is valid inline under `gates:` of the pipeline config.
    cfg = GatesConfig.model_validate(yaml.safe_load(EXAMPLE.read_text()))
    assert [s.metric for s in cfg.validate_] == [s.metric for s in gf.gates["validate"]]
    inline = tmp_path / "pipeline.yaml"
    inline.write_text(yaml.safe_dump({"name": "x", "gates": yaml.safe_load(EXAMPLE.read_text())}))
    assert load_gate_file(inline).gates == gf.gates
    bad = tmp_path / "gates.yaml"
    bad.write_text("validate:\n  - metric: primary\n    min: 0.5\n    treshold: 1\n")
    with pytest.raises(ConfigError, match=r"gates.yaml:validate\[0\]: unknown key 'treshold'"):
        load_gate_file(bad)
    bad.write_text("valdiate: []\n")
    with pytest.raises(ConfigError, match="gates.yaml:valdiate"):
        load_gate_file(bad)
    bad.write_text("canary:\n  - metric: primary\n    min: high\n")
    with pytest.raises(ConfigError, match=r"canary\[0\].min"):
        load_gate_file(bad)


def test_decisions_append_as_json_lines(tmp_path, champion_scores):
    out = tmp_path / "run" / "gates.jsonl"
    cand = make_records(champion_scores)
    append_decision(out, _delta_gate(cand, None))
    append_decision(out, _delta_gate(cand, cand))
    rows = read_decisions(out)
    assert [r["status"] for r in rows] == ["inconclusive", "inconclusive"]
    assert rows[1]["checks"][0]["kind"] == "delta" and rows[1]["meta"]["has_champion"] is True


def _app() -> typer.Typer:
    app = typer.Typer()
    gate_cmd.register(app)
    app.command("noop")(lambda: None)  # a second command keeps `gate` a named sub-command
    return app


def test_gate_cli_exit_codes(tmp_path, champion_scores):
    rng = np.random.default_rng(3)
    files = {}
    for label, scores in {
        "champ": champion_scores,
        "better": np.clip(champion_scores + 0.1, 0, 1),
        "worse": np.clip(champion_scores - 0.1, 0, 1),
        "noise": np.clip(champion_scores + rng.normal(0, 0.05, 240), 0, 1),
    }.items():
        files[label] = tmp_path / f"{label}.jsonl"
        files[label].write_text("".join(json.dumps(r) + "\n" for r in make_records(scores, label)))
    spec = tmp_path / "gates.yaml"
    spec.write_text("bootstrap_samples: 200\ncanary:\n  - metric: primary\n    min_delta_vs_champion: 0.0\n")
    out = tmp_path / "gates.jsonl"
    runner = CliRunner()
    codes = {}
    for label in ("better", "worse", "noise"):
        res = runner.invoke(_app(), ["gate", "--name", "canary", "--candidate", str(files[label]),
                                     "--champion", str(files["champ"]), "--spec", str(spec), "--out", str(out)])
        codes[label] = res.exit_code
    assert codes == {"better": 0, "worse": 1, "noise": 3}
    assert [d["status"] for d in read_decisions(out)] == ["pass", "fail", "inconclusive"]
    res = runner.invoke(_app(), ["gate", "--name", "validate", "--candidate", str(files["better"]),
                                 "--spec", str(spec), "--out", str(out)])
    assert isinstance(res.exception, ConfigError) and "no checks" in str(res.exception)
