"""Pinning tests for release/gates.py (issue 17): exact bounds, disjoint samples, gates-file validation."""

from __future__ import annotations

import json

import pytest

from mixtune.errors import ConfigError, DataError
from mixtune.release.gates import (
    CheckResult,
    GateDecision,
    GateSpec,
    append_decision,
    evaluate_gate,
    load_eval_records,
    load_gate_file,
    parse_specs,
    read_decisions,
)
from mixtune.release.stats import paired_bootstrap


def rec(sid, primary, layer="business", task="t1", family="calc", **metrics):
    return {"sample_id": sid, "layer": layer, "task_id": task, "family": family, "primary": primary,
            "metrics": metrics}


def _raises(exc_type, where, starts, fn, *args, **kwargs):
    with pytest.raises(exc_type) as info:
        fn(*args, **kwargs)
    assert info.value.where == where, info.value.where
    assert info.value.message.startswith(starts), info.value.message
    return info.value


def _gate(specs, cand, champ=None, **kw):
    return evaluate_gate("validate", specs, cand, champ, n_boot=200, confidence=0.9, seed=5, **kw)


# ------------------------------------------------------------------ absolute bounds
def test_min_and_max_are_inclusive_at_the_exact_boundary():
    cand = [rec("s1", 0.5), rec("s2", 0.5)]
    d = _gate([{"metric": "primary", "min": 0.5, "max": 0.5}], cand)
    assert d.status == "pass"
    lo, hi = d.checks
    assert (lo.kind, lo.threshold, lo.status, lo.value, lo.n, lo.reason) == ("min", 0.5, "pass", 0.5, 2, "mean >= 0.5")
    assert (hi.kind, hi.threshold, hi.status, hi.value, hi.n, hi.reason) == ("max", 0.5, "pass", 0.5, 2, "mean <= 0.5")
    assert lo.metric == hi.metric == "primary" and lo.scope == hi.scope == "overall"
    ones = _gate([{"metric": "primary", "min": 1.0}], [rec("s1", 1.0), rec("s2", 1.0)])
    assert ones.status == "pass"


def test_min_and_max_fail_just_outside():
    cand = [rec("s1", 0.25), rec("s2", 0.75)]
    d = _gate([{"metric": "primary", "min": 0.5001}, {"metric": "primary", "max": 0.4999}], cand)
    assert d.status == "fail"
    assert [(c.kind, c.status, c.reason) for c in d.checks] == [
        ("min", "fail", "mean < 0.5001"), ("max", "fail", "mean > 0.4999")]


def test_scope_selects_family_task_or_layer_and_a_missing_metric_fails_every_threshold():
    cand = [rec("s1", 1.0, family="calc", task="t1"), rec("s2", 0.0, family="concept", task="t2"),
            rec("s1", 0.5, layer="base", family="calc", task="t1")]
    for scope, mean, n in (("calc", 0.75, 2), ("t2", 0.0, 1), ("base", 0.5, 1), ("overall", 0.5, 3)):
        (c,) = _gate([{"metric": "primary", "scope": scope, "min": 0.0}], cand).checks
        assert (c.value, c.n) == (pytest.approx(mean), n), scope
    d = _gate([{"metric": "citation", "scope": "calc", "min": 0.1, "max": 0.9, "min_delta_vs_champion": 0.0},
               {"metric": "primary", "min": 0.0}], cand, cand)
    assert d.status == "fail"
    assert [(c.metric, c.scope, c.kind, c.threshold, c.status) for c in d.checks] == [
        ("citation", "calc", "min", 0.1, "fail"), ("citation", "calc", "max", 0.9, "fail"),
        ("citation", "calc", "delta", 0.0, "fail"), ("primary", "overall", "min", 0.0, "pass")]
    assert d.checks[0].reason == "no candidate samples with this metric in scope"


def test_named_metric_and_records_without_it_are_skipped():
    cand = [rec("s1", 0.0, acc=1.0), rec("s2", 0.0), rec("s3", 0.0, acc=0.5)]
    (c,) = _gate([{"metric": "acc", "min": 0.75}], cand).checks
    assert (c.value, c.n, c.status) == (0.75, 2, "pass")


# ------------------------------------------------------------------ delta vs champion
def test_disjoint_samples_are_inconclusive_not_a_crash():
    cand = [rec("s1", 1.0), rec("s2", 1.0)]
    champ = [rec("s3", 0.0), rec("s4", 0.0)]
    d = _gate([{"metric": "primary", "min_delta_vs_champion": 0.0}], cand, champ)
    (c,) = d.checks
    assert d.status == "inconclusive"
    assert (c.kind, c.status, c.threshold, c.value, c.lo, c.hi, c.n) == ("delta", "inconclusive", 0.0, None, None, None, 0)
    assert c.reason == "no samples scored by both models"
    assert (c.metric, c.scope) == ("primary", "overall")


def test_delta_uses_only_paired_samples_and_the_given_bootstrap_settings():
    cand = [rec(f"s{i}", (i % 4) / 4) for i in range(40)] + [rec("extra", 0.0)]
    champ = [rec(f"s{i}", (i % 3) / 4) for i in range(40)] + [rec("other", 1.0)]
    d = evaluate_gate("canary", [{"metric": "primary", "min_delta_vs_champion": -0.5}], cand, champ,
                      n_boot=150, confidence=0.8, seed=11, meta={"run": "r1"})
    (c,) = d.checks
    ids = sorted(f"s{i}" for i in range(40))  # pairs are taken in sorted (sample id, layer) order
    bs = paired_bootstrap([int(s[1:]) % 4 / 4 for s in ids], [int(s[1:]) % 3 / 4 for s in ids],
                          n_boot=150, confidence=0.8, seed=11)
    assert (c.value, c.lo, c.hi, c.n) == (bs.delta, bs.lo, bs.hi, 40)
    assert c.status == "pass" and c.reason == "80% CI above -0.5"
    assert d.gate == "canary" and d.status == "pass"
    assert d.meta == {"n_boot": 150, "confidence": 0.8, "seed": 11, "has_champion": True, "run": "r1"}


def test_delta_interval_exactly_on_threshold_is_inconclusive():
    # Every paired difference is exactly 0.25, so the interval is [0.25, 0.25].
    cand = [rec(f"s{i}", 0.75) for i in range(8)]
    champ = [rec(f"s{i}", 0.5) for i in range(8)]
    at = _gate([{"metric": "primary", "min_delta_vs_champion": 0.25}], cand, champ).checks[0]
    assert (at.status, at.lo, at.hi, at.reason) == ("inconclusive", 0.25, 0.25, "90% CI straddles +0.25")
    below = _gate([{"metric": "primary", "min_delta_vs_champion": 0.3}], cand, champ).checks[0]
    assert (below.status, below.reason) == ("fail", "90% CI below +0.3")
    above = _gate([{"metric": "primary", "min_delta_vs_champion": 0.2}], cand, champ).checks[0]
    assert (above.status, above.reason) == ("pass", "90% CI above +0.2")


def test_lower_is_better_flips_the_comparison():
    cand = [rec(f"s{i}", 0.25) for i in range(8)]
    champ = [rec(f"s{i}", 0.5) for i in range(8)]
    spec = {"metric": "primary", "min_delta_vs_champion": 0.2, "greater_is_better": False}
    c = _gate([spec], cand, champ).checks[0]
    assert (c.status, c.value) == ("pass", 0.25)


def test_no_champion_is_inconclusive_unless_first_release():
    spec = [{"metric": "primary", "min_delta_vs_champion": 0.0}]
    for flag, status in ((False, "inconclusive"), (True, "pass")):
        d = _gate(spec, [rec("s1", 1.0)], None, pass_without_champion=flag)
        (c,) = d.checks
        assert (c.kind, c.threshold, c.status, c.value, c.n) == ("delta", 0.0, status, None, 0)
        assert (c.metric, c.scope, c.reason) == ("primary", "overall", "no champion to compare against")
        assert d.status == status and d.meta["has_champion"] is False
    plain = evaluate_gate("validate", spec, [rec("s1", 1.0)])  # production default bootstrap settings
    assert (plain.meta["n_boot"], plain.meta["confidence"], plain.meta["seed"]) == (1000, 0.95, 0)


def test_fail_beats_inconclusive_beats_pass():
    cand = [rec("s1", 0.5)]
    inc = {"metric": "primary", "min_delta_vs_champion": 0.0}
    assert _gate([{"metric": "primary", "min": 0.0}, inc], cand).status == "inconclusive"
    assert _gate([inc, {"metric": "primary", "max": 0.1}], cand).status == "fail"


def test_candidate_records_are_validated():
    spec = [{"metric": "primary", "min": 0.0}]
    _raises(DataError, "candidate sample s1", "metric 'primary' is not a finite number (nan)",
            _gate, spec, [rec("s1", float("nan"))])
    _raises(DataError, "candidate sample s1", "metric 'primary' is not a finite number (True)",
            _gate, spec, [rec("s1", True)])
    e = _raises(DataError, None, "duplicate record for sample 's1' layer 'business' in candidate records",
                _gate, spec, [rec("s1", 0.0), rec("s1", 1.0)])
    assert str(e) == e.message
    no_layer = {"sample_id": "s1", "primary": 0.5}
    _raises(DataError, None, "duplicate record for sample 's1' layer '' in candidate records",
            _gate, spec, [no_layer, dict(no_layer)])
    _raises(DataError, "champion sample s1", "metric 'primary' is not a finite number",
            _gate, [{"metric": "primary", "min_delta_vs_champion": 0.0}], [rec("s1", 0.0)],
            [rec("s1", "x")])
    _raises(ConfigError, None, "gate 'validate' has no checks configured", _gate, [], [rec("s1", 0.0)])


# ------------------------------------------------------------------ specs
@pytest.mark.parametrize("raw,where,starts", [
    ("x", "gate validate[0]", "a gate check must be a mapping"),
    ({"metric": "m", "min": 0, "colour": 1}, "gate validate[0]", "unknown key 'colour' (allowed: greater_is_better,"),
    ({"min": 0}, "gate validate[0]", "'metric' is required and must be a string"),
    ({"metric": "", "min": 0}, "gate validate[0]", "'metric' is required"),
    ({"metric": 3, "min": 0}, "gate validate[0]", "'metric' is required"),
    ({"metric": "m", "scope": 1, "min": 0}, "gate validate[0].scope", "'scope' must be a string"),
    ({"metric": "m", "min": True}, "gate validate[0].min", "must be a finite number (got True)"),
    ({"metric": "m", "max": "1"}, "gate validate[0].max", "must be a finite number (got '1')"),
    ({"metric": "m", "min_delta_vs_champion": float("nan")}, "gate validate[0].min_delta_vs_champion",
     "must be a finite number (got nan)"),
    ({"metric": "m", "min": 0, "greater_is_better": "yes"}, "gate validate[0].greater_is_better",
     "must be true or false"),
    ({"metric": "m"}, "gate validate[0]", "a check needs at least one of min, max, min_delta_vs_champion"),
    ({"metric": "m", "min": 0.6, "max": 0.5}, "gate validate[0]", "min 0.6 is above max 0.5"),
])
def test_spec_validation(raw, where, starts):
    _raises(ConfigError, where, starts, evaluate_gate, "validate", [raw], [rec("s1", 0.0)])


def test_spec_edge_values_are_accepted():
    (s,) = parse_specs([{"metric": "m", "min": 0.5, "max": 0.5}])
    assert s == GateSpec("m", "overall", 0.5, 0.5, None, True)
    assert parse_specs([s]) == [s]
    for bad in ("abc", b"abc", {"metric": "m"}, 3):
        _raises(ConfigError, "gate", "gate checks must be a list", parse_specs, bad)
    assert parse_specs((x for x in [{"metric": "m", "max": 1}]), "g")[0].max == 1


# ------------------------------------------------------------------ gates files
def _file(tmp_path, text):
    p = tmp_path / "gates.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_gate_file_defaults_and_values(tmp_path):
    gf = load_gate_file(_file(tmp_path, "validate:\n  - {metric: primary, min: 0.5}\n"))
    assert gf.bootstrap_samples == 1000 and gf.confidence == 0.95
    assert gf.gates == {"validate": [GateSpec("primary", min=0.5)], "canary": []}
    gf = load_gate_file(_file(tmp_path, "gates:\n  bootstrap_samples: 100\n  confidence: 0.51\n"))
    assert (gf.bootstrap_samples, gf.confidence) == (100, 0.51)
    assert isinstance(gf.confidence, float)
    gf = load_gate_file(_file(tmp_path, "bootstrap_samples: 101\nconfidence: 0.99\n# ünïcode\n"))
    assert (gf.bootstrap_samples, gf.confidence) == (101, 0.99)
    assert load_gate_file(_file(tmp_path, "")).gates == {"validate": [], "canary": []}


@pytest.mark.parametrize("text,key,starts", [
    ("bootstrap_samples: 99\n", "bootstrap_samples", "must be an integer >= 100 (got 99)"),
    ("bootstrap_samples: true\n", "bootstrap_samples", "must be an integer >= 100 (got True)"),
    ("bootstrap_samples: 500.0\n", "bootstrap_samples", "must be an integer >= 100"),
    ("bootstrap_samples: '500'\n", "bootstrap_samples", "must be an integer >= 100"),
    ("confidence: 0.5\n", "confidence", "must be a number in (0.5, 1) (got 0.5)"),
    ("confidence: 1\n", "confidence", "must be a number in (0.5, 1) (got 1)"),
    ("confidence: 1.5\n", "confidence", "must be a number in (0.5, 1)"),
    ("confidence: true\n", "confidence", "must be a number in (0.5, 1) (got True)"),
    ("confidence: high\n", "confidence", "must be a number in (0.5, 1) (got 'high')"),
])
def test_gate_file_settings_validation(tmp_path, text, key, starts):
    p = _file(tmp_path, text)
    _raises(ConfigError, f"{p}:{key}", starts, load_gate_file, p)


def test_gate_file_structure_errors(tmp_path):
    p = _file(tmp_path, "validate: [\n")
    _raises(ConfigError, str(p), "not valid YAML:", load_gate_file, p)
    _raises(ConfigError, str(tmp_path / "nope.yaml"), "gates file not found", load_gate_file, tmp_path / "nope.yaml")
    p = _file(tmp_path, "- 1\n")
    _raises(ConfigError, str(p), "a gates file must be a mapping", load_gate_file, p)
    p = _file(tmp_path, "gates: [1]\n")
    _raises(ConfigError, f"{p}:gates", "a gates file must be a mapping", load_gate_file, p)
    p = _file(tmp_path, "validate: []\nshadow: 1\n")
    _raises(ConfigError, f"{p}:shadow", "unknown key (allowed: bootstrap_samples, canary, confidence, rollout, validate)",
            load_gate_file, p)
    p = _file(tmp_path, "gates:\n  canary:\n    - {metric: m}\n")
    _raises(ConfigError, f"{p}:gates:canary[0]", "a check needs at least one", load_gate_file, p)


# ------------------------------------------------------------------ records and decisions
def test_load_eval_records_selects_one_model(tmp_path):
    p = tmp_path / "eval.jsonl"
    rows = [{"sample_id": "a", "model": "m1"}, {"sample_id": "b", "model": "m2"}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    assert load_eval_records(p, "m2") == [rows[1]]
    _raises(DataError, str(p), "file holds several models (m1, m2); choose one", load_eval_records, p)
    _raises(DataError, str(p), "no records for model 'm3' (found: m1, m2)", load_eval_records, p, "m3")
    q = tmp_path / "one.jsonl"
    q.write_text(json.dumps({"sample_id": "a"}) + "\n" + json.dumps({"x": 1}) + "\n", encoding="utf-8")
    _raises(DataError, f"{q}:2", "record must be an object with a 'sample_id'", load_eval_records, q)
    q.write_text(json.dumps({"sample_id": "a"}) + "\n", encoding="utf-8")
    assert load_eval_records(q) == [{"sample_id": "a"}]
    _raises(DataError, str(q), "no records for model 'm' (found: none)", load_eval_records, q, "m")
    _raises(DataError, str(tmp_path / "missing.jsonl"), "evaluation results file not found",
            load_eval_records, tmp_path / "missing.jsonl")


def test_decisions_append_and_read_back(tmp_path):
    path = tmp_path / "deep" / "run" / "gates.jsonl"
    d1 = GateDecision("validate", "pass", [CheckResult("m", "overall", "min", 0.5, "pass", value=0.6)],
                      meta={"note": "énergie"})
    append_decision(path, d1)
    append_decision(path, GateDecision("canary", "fail", []))
    raw = path.read_text(encoding="utf-8")
    assert "énergie" in raw and raw.endswith("\n") and raw.count("\n") == 2
    assert raw.index('"checks"') < raw.index('"gate"')  # keys sorted
    got = read_decisions(path)
    assert [g["gate"] for g in got] == ["validate", "canary"] and got[0] == d1.to_dict()
    path.write_text(raw + "\n   \n{bad\n", encoding="utf-8")
    _raises(DataError, f"{path}:5", "invalid JSON:", read_decisions, path)
    _raises(DataError, str(tmp_path / "none.jsonl"), "gate decisions file not found", read_decisions,
            tmp_path / "none.jsonl")
