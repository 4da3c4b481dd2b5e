"""Mixing study: statistics on synthetic runs and the S1–S5 data recipes (no training here)."""

import random
import re

import pytest

from mixtune.bench import fixtures
from mixtune.bench import mixing as study_suite
from mixtune.bench import mixing_scenarios as scen
from mixtune.bench import mixing_study as study
from mixtune.data.ontology import load_ontology
from mixtune.data.validate import blocking, validate_stream
from mixtune.rules import RuleEngine, RuleSet

TASKS = ("a", "b", "c")


def fake_test(seed: int, level: dict[str, float], n: int = 40) -> dict[str, list[float]]:
    """Binary per-sample scores with exactly the given per-task accuracy, shuffled per seed."""
    rng = random.Random(seed)
    out = {}
    for t, p in level.items():
        k = round(p * n)
        out[t] = [1.0] * k + [0.0] * (n - k)
        rng.shuffle(out[t])
    return out


def fake_run(method: str, seed: int, level: dict[str, float], curve=None) -> dict:
    return {"method": method, "seed": seed, "test": fake_test(seed * 31 + len(method), level),
            "curve": curve or [[10, {"a": 0.1}], [20, {"a": 0.2}]]}


def test_strongest_baseline_is_best_worst_task_score_among_baselines_only():
    methods = {"uniform": {"worst_task_score": 0.30}, "static": {"worst_task_score": 0.35},
               "exp3": {"worst_task_score": 0.20}, "mixtune": {"worst_task_score": 0.90}}
    assert study.strongest_baseline(methods, ("natural", "uniform", "static", "exp3")) == "static"
    assert study.strongest_baseline({"mixtune": {"worst_task_score": 1.0}}, ("uniform",)) is None


def test_bootstrap_detects_a_worst_task_gain_and_ignores_gains_elsewhere():
    seeds = range(5)
    base = [fake_test(s, {"a": 0.3, "b": 0.8, "c": 0.8}) for s in seeds]
    # "better": +0.3 on the worst task a → worst-task delta ≈ +0.3 with a CI above 0
    better = [fake_test(100 + s, {"a": 0.6, "b": 0.8, "c": 0.8}) for s in seeds]
    r = study.paired_bootstrap_tasks(better, base, stat="worst", n_boot=500)
    assert 0.15 < r["delta"] < 0.45 and r["ci_low"] > 0 and r["ci_high"] > r["delta"] > r["ci_low"]
    # a gain on a task that is not the worst one leaves the worst-task delta ≈ 0 (CI covers 0) ...
    elsewhere = [{**b, "b": [1.0] * 40} for b in base]
    r2 = study.paired_bootstrap_tasks(elsewhere, base, stat="worst", n_boot=500)
    assert r2["delta"] == pytest.approx(0.0) and r2["ci_low"] <= 0 <= r2["ci_high"]
    # ... but shows in the mean-score statistic
    r3 = study.paired_bootstrap_tasks(elsewhere, base, stat="mean", n_boot=500)
    assert r3["ci_low"] > 0


def test_bootstrap_is_paired_and_resamples_seeds():
    base = [fake_test(s, {"a": 0.5, "b": 0.5}) for s in range(4)]
    same = [{t: list(v) for t, v in b.items()} for b in base]
    r = study.paired_bootstrap_tasks(same, base, n_boot=300)
    assert r["delta"] == r["ci_low"] == r["ci_high"] == 0.0  # paired: identical scores never differ
    # opposite effects on different seeds: the seed level of the bootstrap widens the CI across 0
    mixed = [{t: [1.0] * 40 for t in b} if i % 2 else {t: [0.0] * 40 for t in b} for i, b in enumerate(base)]
    r2 = study.paired_bootstrap_tasks(mixed, base, n_boot=500)
    assert r2["ci_low"] < 0 < r2["ci_high"]
    with pytest.raises(ValueError, match="same test samples"):
        study.paired_bootstrap_tasks([{"a": [1.0, 0.0]}], [{"a": [1.0]}])


def test_steps_to_target_ratio_against_uniform():
    uni = {"method": "uniform", "seed": 0, "test": {"a": [0.5]},
           "curve": [[10, {"a": 0.1, "b": 0.9}], [20, {"a": 0.3, "b": 0.9}], [30, {"a": 0.4, "b": 0.9}]]}
    fast = {"method": "m", "seed": 0, "test": {"a": [0.5]},
            "curve": [[10, {"a": 0.45, "b": 0.9}], [20, {"a": 0.5, "b": 0.9}], [30, {"a": 0.5, "b": 0.9}]]}
    never = {"method": "n", "seed": 0, "test": {"a": [0.5]}, "curve": [[10, {"a": 0.1}], [30, {"a": 0.2}]]}
    u = study.summarise([uni], {0: uni}, 30)
    assert u["steps_to_target_ratio"] == 1.0 and u["per_seed"][0]["target"] == 0.4
    assert study.summarise([fast], {0: uni}, 30)["steps_to_target_ratio"] == pytest.approx(10 / 30)
    n = study.summarise([never], {0: uni}, 30)  # never reached: counted as the full budget
    assert n["steps_to_target_ratio"] == 1.0 and n["reached"] == "0/1"


def test_scenario_result_keys_and_default_vs_strongest():
    runs = []
    for s in range(3):
        runs += [fake_run("uniform", s, {"a": 0.3, "b": 0.7, "c": 0.7}),
                 fake_run("static", s, {"a": 0.4, "b": 0.7, "c": 0.7}),
                 fake_run("mixtune", s, {"a": 0.7, "b": 0.7, "c": 0.7})]
    res = study.scenario_result(runs, ["uniform", "static", "mixtune"], ("uniform", "static"), "mixtune", 20,
                                n_boot=300)
    assert res["strongest_baseline"] == "static"
    for m in res["methods"].values():
        assert {"mean_score", "worst_task_score", "steps_to_target_ratio", "per_seed"} <= set(m)
        assert [p["seed"] for p in m["per_seed"]] == [0, 1, 2]
    c = res["default_vs_strongest"]
    assert {"delta", "ci_low", "ci_high"} <= set(c) and c["ci_low"] > 0 and c["n_seeds"] == 3


def test_methods_per_scenario_follow_the_issue():
    full = study_suite.PLANS["full"]
    s1, s4 = study_suite.methods_for(full, "S1"), study_suite.methods_for(full, "S4", "confirmation")
    assert set(study_suite.BASELINES) <= set(s4) and study_suite.DEFAULT in s4
    assert set(s4) == {*study_suite.BASELINES, study_suite.DEFAULT, study_suite.REFERENCE}
    # the variants are compared on the tuning seeds only
    assert "mixtune_no_curriculum" not in study_suite.methods_for(full, "S1", "confirmation")
    assert {"mixtune_no_curriculum", "mixtune_no_modulation", "mixtune_heat_only", "heat_decay_only", "heat_cv_only",
            "heat_rejection_only"} <= set(s1)
    assert full.s2_steps >= 400 and full.n_val >= 24 and full.n_test >= 40
    assert len(full.tuning_seeds) >= 5 and len(full.confirm_seeds) >= 5
    assert not set(full.tuning_seeds) & set(full.confirm_seeds)  # never tune on confirmation seeds
    assert set(full.tuning_scenarios) == {"S1", "S2", "S3"} and set(full.confirm_scenarios) == set(scen.SCENARIOS)
    # natural/temperature train only where sizes differ (S2, S5); elsewhere they reuse uniform's run
    extra = int(study_suite.DEFAULT != study_suite.REFERENCE)  # the reference controller, confirmation half
    n_runs = 5 * (13 + 11 + 11) + 5 * (5 + 7 + 5 + 5 + 7 + 5 * extra)
    assert study_suite.estimate_s(full, 20.0, 0.0) == pytest.approx(n_runs * 20.0 / 2)


@pytest.fixture(scope="module")
def onto():
    cfg = fixtures.demo_config()
    return load_ontology(cfg.resolve(cfg.data.ontology))


_BUILT: dict = {}


def _build(name, onto):
    if name not in _BUILT:  # generation is the slow part; the tests only read the result
        _BUILT[name] = scen.build_scenario(name, onto, 3, n_train=40, n_val=6, n_test=8, value_pool=8)
    return _BUILT[name]


def _held(data):
    return {s.id for s in data.samples if s.split != "train"}


def test_size_based_methods_reuse_uniform_only_when_sizes_are_equal(tmp_path):
    plan = study_suite.PLANS["quick"]
    s1 = study_suite.prepare_scenario(tmp_path, plan, 0, "S1")
    s2 = study_suite.prepare_scenario(tmp_path, plan, 0, "S2")
    assert study_suite.same_as_uniform("natural", s1, plan, 0)
    assert study_suite.same_as_uniform("temperature", s1, plan, 0)
    assert not study_suite.same_as_uniform("natural", s2, plan, 0)
    assert not study_suite.same_as_uniform("temperature", s2, plan, 0)


def test_scenarios_share_held_out_data_and_differ_in_training_data(onto):
    s1, s2, s5 = _build("S1", onto), _build("S2", onto), _build("S5", onto)
    assert _held(s1) == _held(s2) == _held(s5)
    assert set(s1.sizes.values()) == {40}
    assert {t for t, n in s2.sizes.items() if n == 4} == set(scen.SMALL_TASKS)
    stage1 = {t.id for t in onto.tasks.values() if t.stage == 1}
    assert all(s5.sizes[t] == 4 for t in stage1) and all(s5.sizes[t] == 40 for t in s5.sizes if t not in stage1)
    # stage 1 trains on S1's stage-1 training data and twins only: nothing held out leaks into it
    s1_train = scen.stage1_samples(s1, 3, 0.3)
    assert not {s.id for s in s1_train} & _held(s1) and any(s.parent_id for s in s1_train)


def test_s3_makes_calculation_and_chains_harder(onto):
    s1, s3 = _build("S1", onto), _build("S3", onto)

    def figures(data, task):
        return {x for s in data.samples if s.task_id == task for x in re.findall(r"\d+(?:\.\d+)?", s.input)}

    for task in scen.HARD_TASKS:
        assert not {s.id for s in s3.samples if s.task_id == task} & {s.id for s in s1.samples}
    # 48 instead of 8 values per range: many more distinct figures, so more input → result pairs to learn
    assert len(figures(s3, "calc_lcr")) > 2 * len(figures(s1, "calc_lcr"))
    assert len(figures(s3, "chain_car_adequacy")) > 2 * len(figures(s1, "chain_car_adequacy"))
    assert {s.id for s in s3.samples if s.task_id == "concept_term"} == {
        s.id for s in s1.samples if s.task_id == "concept_term"}


def test_s4_noise_is_rule_clean_wrong_and_reported_as_rejection(onto):
    s1, s4 = _build("S1", onto), _build("S4", onto)
    assert s4.rejection[scen.NOISY_TASK] == scen.NOISY_SHARE and sum(s4.rejection.values()) == scen.NOISY_SHARE
    noisy = [s for s in s4.samples if s.defect == "undetected_wrong_answer"]
    assert len(noisy) == round(40 * scen.NOISY_SHARE) and {s.task_id for s in noisy} == {scen.NOISY_TASK}
    clean = {s.input: s.output for s in s1.samples if s.task_id == scen.NOISY_TASK}
    assert all(s.output != clean[s.input] for s in noisy)  # the answer no longer fits the question
    cfg = fixtures.demo_config()
    engine = RuleEngine(RuleSet.load(cfg.resolve(cfg.data.rules)))
    fails = [f for _, f in validate_stream(noisy, engine, {t.id: t.rule_ids for t in onto.tasks.values()})]
    assert not any(blocking(f) for f in fails)  # the rules do not catch them: only reviewers do
    assert _held(s1) == _held(s4)
