"""Live rejection in stage 2 through the review store (decisions on training data: test_review_training.py)."""

from __future__ import annotations

import json

import pytest

from mixtune.config import PipelineConfig
from mixtune.model.tiny import make_test_model
from mixtune.review import LiveRejection, ReviewStore
from mixtune.train.stage2 import train_stage2

pytestmark = pytest.mark.integration

QUICK = {"batch_size": 8, "precision": "fp32", "warmup_steps": 0, "eval_every": 2, "checkpoint_every": 1000,
         "steps": 6, "context_orchestration": False, "eval_samples_per_task": 2}


def _stage2(tmp_path, review_outputs, k=2):
    from helpers.synth import corpus, make_samples

    samples = make_samples(twins=False)
    base = make_test_model(tmp_path / "base", corpus(samples))
    cfg = PipelineConfig.model_validate({"stage2": QUICK})
    log = tmp_path / "mixing_log.jsonl"
    train_stage2(cfg, samples, str(base), tmp_path / "stage2", business_value={}, groups={}, families={},
                 chains=[], rejection={"calc_lcr": 0.9}, mixing_log=log, progress=False,
                 review_outputs=review_outputs, review_k=k, review_max_new_tokens=6)
    return [json.loads(x) for x in log.read_text().splitlines()]


def test_each_cycle_sends_k_outputs_per_task_and_feeds_back_the_rates(tmp_path):
    calls = []

    def review(cycle, version, outputs):
        calls.append((cycle, version, outputs))
        # A reviewer who rejects more of calc_lcr as training goes on: the input must follow it live.
        return {t: (0.2 * cycle if t == "calc_lcr" else 0.0, 2 * cycle) for t in outputs}

    log = _stage2(tmp_path, review)
    assert [c for c, _, _ in calls] == [1, 2, 3]
    assert len({v for _, v, _ in calls}) == 3 and all("@step" in v for _, v, _ in calls)
    for _, _, outputs in calls:
        assert set(outputs) == {"calc_lcr", "concept_spread", "pii_mask"}
        for items in outputs.values():
            assert len(items) == 2
            for o in items:
                assert o["prompt"] and o["reference"] and o["sample_id"] and isinstance(o["output"], str)
    # The fixed rejection passed in ({"calc_lcr": 0.9}) is replaced by the live one, cycle by cycle.
    assert [r["rejection"]["calc_lcr"] for r in log] == pytest.approx([0.2, 0.4, 0.6])
    assert [r["heat"]["calc_lcr"]["rejection"] for r in log] == pytest.approx([0.2, 0.4, 0.6])
    assert [r["rejection_verdicts"]["calc_lcr"] for r in log] == [2, 4, 6]


def test_without_live_review_the_fixed_rate_is_used(tmp_path):
    log = _stage2(tmp_path, None)
    assert all(r["rejection"]["calc_lcr"] == 0.9 and "rejection_verdicts" not in r for r in log)


def test_simulated_reviewer_answers_through_the_store(tmp_path):
    store = tmp_path / "review.db"
    with LiveRejection(store, k=2, seed=0) as live:
        log = _stage2(tmp_path, live.cycle)
    verdicts = ReviewStore(store).verdicts_of(kinds=("output",))
    assert verdicts and all(v.reviewer_kind == "simulated" for v in verdicts)
    assert len({v.item_id for v in verdicts}) == 3 * 2 * 3  # 3 cycles x 3 tasks x k=2
    counts = [r["rejection_verdicts"]["calc_lcr"] for r in log]
    assert counts == [2, 4, 6]  # the window fills: the shrunk rate moves with every cycle
    assert len({round(r["rejection"]["calc_lcr"], 6) for r in log}) > 1
