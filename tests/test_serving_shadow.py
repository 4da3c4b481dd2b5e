"""Offline replay and the canary A/B report (CLI exit codes); blind expert review: test_review_pairs.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mixtune.cli import app
from mixtune.release.gateway import default_masker
from mixtune.release.shadow import canary_report, judge_pairs, load_traffic, replay_traffic
from mixtune.release.store import ShadowStore

RULES = Path(__file__).resolve().parents[1] / "examples" / "finance_risk" / "rules.yaml"
GOOD = "流动性覆盖率为150.00%，符合监管要求。"
BAD = "本产品保本保收益，稳赚不赔，流动覆盖率高。"


class Fake:
    def __init__(self, prefix, fail_on=None):
        self.prefix, self.fail_on, self.calls = prefix, fail_on, 0

    def generate(self, conversations, *, max_new_tokens, temperature=0.0, top_p=1.0, stop=None, seed=None):
        self.calls += 1
        if self.fail_on and any(self.fail_on in c[-1]["content"] for c in conversations):
            raise RuntimeError("candidate crashed")
        return [f"{self.prefix}: {c[-1]['content']}" for c in conversations]


def test_replay_records_pairs_masks_pii_and_resumes(tmp_path):
    lines = [{"messages": [{"role": "user", "content": f"问题{i} 电话13812345678"}], "user": f"u{i}",
              "task_id": "concept"} for i in range(4)]
    lines.append({"messages": [{"role": "user", "content": "boom"}], "request_id": "r-boom"})
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines), encoding="utf-8")
    traffic = load_traffic(tmp_path / "t.jsonl")
    store = ShadowStore(f"sqlite:///{tmp_path / 's.db'}")
    cand = Fake("cand", fail_on="boom")
    stats = replay_traffic(traffic, Fake("champ"), cand, store, mask=default_masker(), batch_size=2)
    assert stats == {"total": 5, "skipped": 0, "recorded": 5, "champion_errors": 0, "candidate_errors": 1}
    rows = {r["request_id"]: r for r in store.load_records()}
    assert rows["r-boom"]["candidate_answer"] is None and "crashed" in rows["r-boom"]["candidate_error"]
    assert rows["r-boom"]["champion_answer"] == "champ: boom"
    other = [r for k, r in rows.items() if k != "r-boom"]
    assert all(r["candidate_answer"].startswith("cand: 问题") and "138****5678" in r["candidate_answer"] for r in other)
    assert not any("13812345678" in (r["prompt"] + r["champion_answer"]) for r in other)
    again = replay_traffic(load_traffic(tmp_path / "t.jsonl"), Fake("champ"), cand, store, mask=default_masker())
    assert again["skipped"] == 5 and again["recorded"] == 0 and cand.calls == 3  # nothing re-asked


def test_bad_traffic_line_names_file_and_line(tmp_path):
    from mixtune.errors import DataError

    (tmp_path / "t.jsonl").write_text('{"messages": [{"role": "user", "content": "ok"}]}\n{"messages": []}\n')
    with pytest.raises(DataError, match=r"t\.jsonl:2"):
        load_traffic(tmp_path / "t.jsonl")


def _pairs(store, n, cand_good: float, champ_good: float, *, offset=0):
    """n pairs where each side's answer is rule-clean with the given frequency (deterministic)."""
    rows = []
    for i in range(n):
        c = GOOD if (i * 7919 % 100) / 100 < cand_good else BAD
        h = GOOD if (i * 104729 % 100) / 100 < champ_good else BAD
        rows.append({"request_id": f"r{offset + i:04d}", "ts": 1000.0 + offset + i, "source": "gateway",
                     "routed_to": "champion", "answered_by": "champion", "task_id": ["concept", "compliance"][i % 2],
                     "prompt": json.dumps([{"role": "user", "content": "流动性覆盖率是多少？"}], ensure_ascii=False),
                     "champion_answer": h, "candidate_answer": c})
    store.insert_records(rows)


@pytest.mark.parametrize("cand_good,champ_good,code,status", [(0.95, 0.4, 0, "pass"), (0.3, 0.9, 1, "fail"),
                                                              (0.7, 0.7, 3, "inconclusive")])
def test_report_cli_decides_the_canary_gate(tmp_path, cand_good, champ_good, code, status):
    db = f"sqlite:///{tmp_path / 's.db'}"
    store = ShadowStore(db)
    _pairs(store, 80, cand_good, champ_good)
    if status == "inconclusive":  # same quality, same answers: no evidence either way
        rows = store.load_records()
        for r in rows:
            r["candidate_answer"] = r["champion_answer"]
        store.insert_records(rows)
    gates = tmp_path / "gates.jsonl"
    res = CliRunner().invoke(app, ["shadow", "report", "--db", db, "--rules", str(RULES), "--gates-out", str(gates),
                                   "--n-boot", "300"])
    assert res.exit_code == code, res.output
    decision = json.loads(gates.read_text(encoding="utf-8").splitlines()[-1])
    assert decision["gate"] == "canary" and decision["status"] == status
    rules = decision["meta"]["signals"]["rules"]
    assert (rules["delta"] > 0) == (cand_good > champ_good) or status == "inconclusive"
    assert any("sequential" in c["reason"] for c in decision["checks"])


def test_candidate_that_fails_to_answer_fails_availability(tmp_path):
    store = ShadowStore(f"sqlite:///{tmp_path / 's.db'}")
    _pairs(store, 60, 1.0, 1.0)
    rows = store.load_records()
    for r in rows[::3]:
        r["candidate_answer"], r["candidate_error"] = None, "HTTP 500"
    store.insert_records(rows)
    d = canary_report(store, rule_score=lambda p, a: 1.0, n_boot=300)
    assert d.status == "fail"
    assert d.meta["signals"]["available"]["candidate_mean"] < 0.7


def test_sequential_test_can_stop_before_the_horizon(tmp_path):
    store = ShadowStore(f"sqlite:///{tmp_path / 's.db'}")
    _pairs(store, 60, 1.0, 0.0)  # overwhelming evidence early
    d = canary_report(store, rule_score=lambda p, a: 1.0 if a == GOOD else 0.0, horizon=1000, n_boot=200)
    assert d.status == "pass" and d.meta["sequential"]["stopped_at"] < 60
    store2 = ShadowStore(f"sqlite:///{tmp_path / 's2.db'}")
    _pairs(store2, 60, 0.6, 0.5)  # weak evidence: wait for the planned sample size
    assert canary_report(store2, rule_score=lambda p, a: 1.0 if a == GOOD else 0.0, horizon=1000,
                         n_boot=200).status == "inconclusive"


def test_judge_is_asked_in_both_orders():
    class PositionBiased:  # always prefers whatever is shown first
        def generate(self, convs, **kw):
            return ["A"] * len(convs)

    class Fair:  # prefers the rule-clean answer wherever it is shown
        def generate(self, convs, **kw):
            out = []
            for c in convs:
                text = c[0]["content"]
                a = text.split("[Answer A]\n")[1].split("\n\n[Answer B]")[0]
                out.append("A" if a == GOOD else "B")
            return out

    pairs = [("q", GOOD, BAD), ("q", BAD, GOOD)]
    biased, info = judge_pairs(PositionBiased(), pairs)
    assert biased == [0.5, 0.5] and info["position_a_rate"] == 1.0 and info["consistency"] == 0.0
    fair, info = judge_pairs(Fair(), pairs)
    assert fair == [1.0, 0.0] and info["consistency"] == 1.0
