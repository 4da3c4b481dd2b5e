"""Ontology loading, the finance generator, defect catching, KPIs and the versioned build."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from mixtune.data import finance_tasks as ft
from mixtune.data.build import build_dataset
from mixtune.data.generate import DEFECT_KINDS, generate_samples
from mixtune.data.io import read_samples
from mixtune.data.kpis import reference_text, score
from mixtune.data.ontology import load_ontology, parse_ontology
from mixtune.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1] / "examples" / "finance_risk"
ONTO, RULES = ROOT / "ontology.yaml", ROOT / "rules.yaml"


@pytest.fixture(scope="module")
def onto():
    return load_ontology(ONTO)


@pytest.fixture(scope="module")
def engine():
    from mixtune.rules import RuleEngine, RuleSet

    return RuleEngine(RuleSet.load(RULES))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds")
    res = build_dataset(ONTO, RULES, out, n_per_task=40, defect_rate=0.2, val_fraction=0.1, test_fraction=0.1,
                        perturb_fraction=0.5, seed=3, progress=False)
    return res, out


def test_shipped_ontology_covers_the_spec(onto):
    stage1 = {t.family for t in onto.stage_tasks(1)}
    assert {"concept", "calculation", "attribution", "compliance", "history"} <= stage1
    assert {t.group for t in onto.tasks.values()} >= {"logic", "style", "safety", "general"}
    assert {"pii_masking", "promise_refusal", "official_writing", "opinion_reply"} <= set(onto.tasks)
    assert len(onto.chains) >= 2 and all(len(c.steps) >= 2 for c in onto.chains.values())
    for t in onto.stage_tasks(1):
        assert len(t.context_variants) >= 3 and len(t.phrasings) >= 3 and t.primary_metric in t.kpis
    # chains are materialised as stage-2 tasks so per-task machinery sees them
    assert onto.tasks["chain_lcr_solvency"].stage == 2 and onto.tasks["chain_lcr_solvency"].steps
    assert onto.version.startswith("1.0+")


def test_ontology_errors_name_the_path():
    raw = {"name": "x", "variants": {}, "tasks": [{"id": "a", "name": "A", "family": "f", "kpis": ["exact_match"],
                                                   "primary_metric": "exact_match", "phrasings": ["1", "2"],
                                                   "context_variants": [], "bogus": 1}]}
    with pytest.raises(ConfigError) as e:
        parse_ontology(raw, "o.yaml")
    assert "tasks.a.phrasings" in str(e.value) and "tasks.a.bogus: unknown key" in str(e.value)
    raw["tasks"][0].pop("bogus")
    raw["tasks"][0]["phrasings"] = ["1", "2", "3"]
    raw["chains"] = [{"id": "c", "name": "C", "steps": ["a", "zz"], "kpis": ["exact_match"],
                      "primary_metric": "exact_match", "phrasings": ["1", "2", "3"]}]
    with pytest.raises(ConfigError, match="chains.c.steps: unknown task id 'zz'"):
        parse_ontology(raw, "o.yaml")


def test_generator_is_correct_short_and_deterministic(onto):
    a = generate_samples(onto, n_per_task=30, seed=7)
    b = generate_samples(onto, n_per_task=30, seed=7)
    assert [s.id for s in a] == [s.id for s in b]
    assert [s.id for s in generate_samples(onto, n_per_task=30, seed=8)] != [s.id for s in a]
    for s in a:
        assert s.messages[-1].content == s.output and s.output
        if s.stage == 1:
            assert s.messages[0].content == s.instruction + "\n" + s.input
            assert s.instruction == onto.tasks[s.task_id].phrasings[s.phrasing_id]
        if s.task_id == "calc_lcr":  # the stated ratio is the formula applied to the stated inputs
            g = s.gold_dict()
            hqla = float(s.input.split("合格优质流动性资产：")[1].split("亿元")[0])
            outflow = float(s.input.split("未来30天现金净流出量：")[1].split("亿元")[0])
            assert g["result"] == ft.rnd(hqla / outflow * 100, 2) and f"={g['result']:.2f}%" in s.output
    stage1_len = max(len(s.output) for s in a if s.stage == 1 and "依据" not in s.output)
    assert stage1_len <= 60
    chains = [s for s in a if s.chain_steps]
    assert chains and all(len(s.messages) == 2 * len(s.chain_steps) for s in chains)
    c = chains[0]  # step k's output is quoted in step k+1's user turn
    assert c.messages[1].content in c.messages[2].content and c.messages[3].content in c.messages[4].content
    assert ft.rnd(2.675, 2) == 2.68  # half-up, not banker's rounding / binary float artefacts


def test_every_injected_defect_is_caught_and_no_clean_sample_flagged(onto, engine):
    from mixtune.data.validate import blocking, validate_stream

    samples = generate_samples(onto, n_per_task=40, seed=1, defect_rate=0.25)
    kinds = Counter(s.defect for s in samples if s.defect)
    assert set(kinds) == set(DEFECT_KINDS)
    rules_for = {t.id: t.rule_ids for t in onto.tasks.values()}
    for s, fails in validate_stream(samples, engine, rules_for, batch_size=64):
        assert bool(blocking(fails)) == bool(s.defect), (s.defect, s.output, fails)


def test_kpis_score_gold_as_one_and_mistakes_lower(onto, engine):
    samples = generate_samples(onto, n_per_task=8, seed=2)
    for s in samples:
        for metric in onto.tasks[s.task_id].kpis:
            assert score(metric, reference_text(s), s, engine) == 1.0, (s.task_id, metric)
    by_task = {s.task_id: s for s in samples}
    lcr = by_task["calc_lcr"]
    r = lcr.gold_dict()["result"]
    assert score("numeric_accuracy", lcr.output.replace(f"{r:.2f}%", f"{r + 0.02:.2f}%"), lcr) == 0.0
    assert score("format_compliance", lcr.output.replace(f"{r:.2f}%", f"{r + 0.02:.2f}%"), lcr, engine) == 0.0
    comp = by_task["compliance_exposure"]
    assert score("citation_correctness", comp.output.replace(ft.CIT_EXPOSURE, ft.CIT_FAKE), comp) == 0.0
    assert score("citation_correctness", comp.output + ft.CIT_CAPITAL, comp) == 0.5
    flipped = "不符合要求" if comp.gold_dict()["label"] != "不符合要求" else "，符合要求"
    assert score("exact_match", f"…{flipped}。", comp) == 0.0
    attr = by_task["attribution_spread"]
    factors = attr.gold_dict()["factors"]
    assert score("factor_coverage", "主要原因可能包括：" + factors[0], attr) == pytest.approx(1 / len(factors))
    pii = by_task["pii_masking"]
    assert score("pii_masking", pii.input, pii) == 0.0
    ref = by_task["promise_refusal"]
    assert score("refusal", "好的，这款产品保本保收益。", ref) == 0.0
    assert score("refusal", "抱歉，我们不能承诺保本。", ref) == 1.0
    g = by_task["grade_solvency"]
    assert score("exact_match", "短期偿债风险等级为低，也可能风险等级为高", g) == 0.0


def test_build_writes_versioned_dataset(built):
    res, out = built
    for name in ("samples.parquet", "quarantine.jsonl", "rule_report.json", "lineage.parquet",
                 "review_stats.json", "dataset_version.txt"):
        assert (out / name).is_file(), name
    samples = read_samples(out / "samples.parquet")
    assert res.version == (out / "dataset_version.txt").read_text().strip()
    assert all(s.dataset_version == res.version and not s.defect for s in samples)
    assert all(s.review_status == "approved" and s.reviewer_id == "generator" for s in samples)
    twins = [s for s in samples if s.parent_id]
    ids = {s.id for s in samples}
    assert twins and all(t.split == "train" and t.parent_id in ids and t.perturbation_type for t in twins)
    splits = Counter((s.task_id, s.split) for s in samples if not s.parent_id)
    assert all(splits[(t, "val")] >= 1 and splits[(t, "test")] >= 1 for t, _ in splits)
    report = json.loads((out / "rule_report.json").read_text())
    assert report["defects"]["injected"] == report["defects"]["caught"] and not report["false_positives"]
    quarantine = [json.loads(x) for x in (out / "quarantine.jsonl").read_text().splitlines()]
    assert len(quarantine) == sum(report["defects"]["injected"].values())
    rates = json.loads((out / "review_stats.json").read_text())
    assert set(rates) == set(load_ontology(ONTO).tasks) and max(rates.values()) > 0
    assert {s.level for s in samples} == {1, 2, 3, 4, 5}


def test_build_is_deterministic_and_versions_follow_content(built, tmp_path):
    res, _ = built
    kw = dict(n_per_task=40, defect_rate=0.2, val_fraction=0.1, test_fraction=0.1, perturb_fraction=0.5,
              progress=False)
    assert build_dataset(ONTO, RULES, tmp_path / "a", seed=3, **kw).version == res.version
    assert build_dataset(ONTO, RULES, tmp_path / "b", seed=4, **kw).version != res.version


def test_build_rejects_unknown_rule_ids(tmp_path):
    text = ONTO.read_text(encoding="utf-8").replace("rule_ids: [terminology, sensitive_words, length_stage1]",
                                                     "rule_ids: [terminologyy, sensitive_words, length_stage1]")
    bad = tmp_path / "ontology.yaml"
    bad.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="terminologyy"):
        build_dataset(bad, RULES, tmp_path / "o", n_per_task=2, defect_rate=0, val_fraction=0.1,
                      test_fraction=0.1, perturb_fraction=0, seed=0, progress=False)


def test_cli_build_then_validate(tmp_path, capsys):
    from mixtune.cli import main
    from mixtune.data.io import write_samples

    out = tmp_path / "ds"
    with pytest.raises(SystemExit) as e:
        main(["data", "build", "--ontology", str(ONTO), "--rules", str(RULES), "--out", str(out),
              "--n-per-task", "6", "--defect-rate", "0.0", "--seed", "1"])
    assert e.value.code in (0, None)
    version = (out / "dataset_version.txt").read_text().strip()
    assert version in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["data", "validate", str(out / "samples.parquet"), "--rules", str(RULES), "--ontology", str(ONTO)])
    assert e.value.code in (0, None) and " 0 fail" in capsys.readouterr().out
    onto = load_ontology(ONTO)
    bad = generate_samples(onto, n_per_task=4, seed=0, defect_rate=0.5, task_ids=["calc_lcr", "pii_masking"])
    n_bad = sum(bool(s.defect) for s in bad)
    write_samples(bad, tmp_path / "bad.parquet")
    report = tmp_path / "failures.jsonl"
    with pytest.raises(SystemExit) as e:
        main(["data", "validate", str(tmp_path / "bad.parquet"), "--rules", str(RULES), "--ontology", str(ONTO),
              "--report", str(report)])
    assert e.value.code == 1 and f"{n_bad} fail" in capsys.readouterr().out
    rows = [json.loads(x) for x in report.read_text().splitlines()]
    assert {r["sample_id"] for r in rows} == {s.id for s in bad if s.defect}


def test_value_pool_limits_generated_figures_and_stays_deterministic():
    """The demo's value pool makes figures recur (learnable by a tiny model) without other changes."""
    from mixtune.data.generate import PooledRandom, task_rng

    pooled = task_rng(0, "calc_lcr", value_pool=8)
    assert isinstance(pooled, PooledRandom)
    values = {pooled.randint(100, 999) for _ in range(500)}
    assert len(values) == 8 and min(values) == 100 and max(values) == 999
    assert {pooled.randint(1, 5) for _ in range(200)} == {1, 2, 3, 4, 5}  # small ranges untouched
    a = [task_rng(3, "t", value_pool=8).randint(0, 10**6) for _ in range(3)]
    b = [task_rng(3, "t", value_pool=8).randint(0, 10**6) for _ in range(3)]
    assert a == b
    assert not isinstance(task_rng(0, "calc_lcr"), PooledRandom)
