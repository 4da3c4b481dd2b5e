"""Perturbed twins (four kinds, zh + en, seeded) and the difficulty scorer."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from mixtune.data.difficulty import DIMS, DifficultyScorer
from mixtune.data.generate import generate_samples
from mixtune.data.ontology import load_ontology
from mixtune.data.perturb import KINDS, make_twin, perturb_samples
from mixtune.data.schema import Message, Sample
from mixtune.data.validate import blocking, validate_stream

ROOT = Path(__file__).resolve().parents[1] / "examples" / "finance_risk"


@pytest.fixture(scope="module")
def onto():
    return load_ontology(ROOT / "ontology.yaml")


@pytest.fixture(scope="module")
def samples(onto):
    return generate_samples(onto, n_per_task=12, seed=5)


def _en() -> Sample:
    instr, inp = "Please calculate the liquidity coverage ratio, rounded to two decimals.", "HQLA: 300.00\nOutflow: 200.00"
    return Sample(task_id="calc_lcr", language="en", instruction=instr, input=inp, output="LCR=150.00%",
                  messages=[Message(role="user", content=f"{instr}\n{inp}"),
                            Message(role="assistant", content="LCR=150.00%")]).with_id()


def test_each_kind_changes_the_prompt_not_the_answer(samples):
    calc = next(s for s in samples if s.task_id == "calc_lcr" and "保留两位小数" in s.instruction)
    for parent in (calc, _en()):
        for kind in KINDS:
            twin = make_twin(parent, kind, seed=0)
            assert twin is not None, (kind, parent.language)
            assert twin.perturbation_type == kind and twin.parent_id == parent.id and twin.split == "train"
            assert twin.output == parent.output and twin.messages[1:] == parent.messages[1:]
            assert twin.gold == parent.gold and twin.id != parent.id
            assert twin.messages[0].content == f"{twin.instruction}\n{twin.input}"
            if kind == "distractor_fact":
                assert twin.instruction == parent.instruction and twin.input.startswith(parent.input)
                assert len(twin.input.splitlines()) == len(parent.input.splitlines()) + 1
            else:
                assert twin.input == parent.input and twin.instruction != parent.instruction
    assert "保留两位小数" not in make_twin(calc, "weakened_format", 0).instruction
    assert "rounded to two decimals" not in make_twin(_en(), "weakened_format", 0).instruction
    hedged = make_twin(calc, "probabilistic_wording", 0).instruction
    assert any(w in hedged for w in ("或许", "可能", "大概", "大致", "试着", "尝试", "也许"))


def test_twins_are_seeded_and_all_kinds_occur(samples):
    a = perturb_samples(samples, 0.5, seed=1)
    b = perturb_samples(samples, 0.5, seed=1)
    c = perturb_samples(samples, 0.5, seed=2)
    assert [t.id for t in a] == [t.id for t in b] and [t.id for t in a] != [t.id for t in c]
    assert len(a) == round(len(samples) * 0.5)
    assert set(Counter(t.perturbation_type for t in a)) == set(KINDS)
    with pytest.raises(ValueError):
        perturb_samples(samples, 1.5, seed=0)


def test_twins_keep_a_valid_gold(onto, samples):
    """A twin's (unchanged) answer still passes every rule against the perturbed input."""
    from mixtune.rules import RuleEngine, RuleSet

    engine = RuleEngine(RuleSet.load(ROOT / "rules.yaml"))
    twins = perturb_samples(samples, 1.0, seed=3)
    rules_for = {t.id: t.rule_ids for t in onto.tasks.values()}
    for twin, fails in validate_stream(twins, engine, rules_for):
        assert not blocking(fails), (twin.perturbation_type, twin.messages[0].content, fails)


def test_difficulty_dimensions_levels_and_weights(onto, samples):
    scorer = DifficultyScorer()
    by_task = {s.task_id: s for s in samples}
    scored = {}
    for tid in ("concept_term", "calc_lcr", "chain_lcr_solvency"):
        t = onto.tasks[tid]
        s = scorer.apply(by_task[tid].model_copy(), t.difficulty.model_dump(), len(t.rule_ids))
        dims = json.loads(s.difficulty_dims)
        assert set(dims) == set(DIMS) and all(0 <= v <= 1 for v in dims.values())
        assert 1 <= s.level <= 5 and s.level == 1 + sum(s.difficulty_score >= x for x in scorer.thresholds)
        scored[tid] = s
    assert scored["concept_term"].difficulty_score < scored["calc_lcr"].difficulty_score
    assert scored["calc_lcr"].level < scored["chain_lcr_solvency"].level
    # evidence matters, not only the prior: the chain has more steps than its first step alone
    no_prior = DifficultyScorer(prior_weight=0.0)
    assert (no_prior.dimensions(by_task["chain_lcr_solvency"])["steps"]
            > no_prior.dimensions(by_task["calc_lcr"])["steps"])
    steps_only = DifficultyScorer(weights={"breadth": 0, "steps": 1, "constraints": 0, "ambiguity": 0})
    dims = json.loads(scored["chain_lcr_solvency"].difficulty_dims)
    assert steps_only.score(dims)[0] == pytest.approx(dims["steps"], abs=1e-4)
    other = DifficultyScorer()
    other.load_state_dict(steps_only.state_dict())
    assert other.score(dims) == steps_only.score(dims)
    assert DifficultyScorer(thresholds=(0.9, 0.92, 0.94, 0.96)).score(dims)[1] == 1
    with pytest.raises(ValueError, match="increasing"):
        DifficultyScorer(thresholds=(0.5, 0.4, 0.6, 0.7))
    with pytest.raises(ValueError, match="unknown difficulty dimension"):
        DifficultyScorer(weights={"depth": 1.0})
