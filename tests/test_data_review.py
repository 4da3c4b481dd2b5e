"""Expert review: state machine, CSV / Label Studio / Argilla round trips, build integration, CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from mixtune.cli import main
from mixtune.data.build import build_dataset
from mixtune.data.generate import generate_samples
from mixtune.data.io import read_samples
from mixtune.data.ontology import load_ontology
from mixtune.data.review import ReviewQueue
from mixtune.data.review_formats import export_review, import_review
from mixtune.errors import DataError

ROOT = Path(__file__).resolve().parents[1] / "examples" / "finance_risk"


@pytest.fixture(scope="module")
def samples():
    return generate_samples(load_ontology(ROOT / "ontology.yaml"), n_per_task=2, seed=0,
                            task_ids=["calc_lcr", "pii_masking", "chain_lcr_solvency"])


def test_state_machine_refuses_invalid_moves_and_persists(tmp_path, samples):
    q = ReviewQueue(tmp_path / "log.jsonl", required_qualifications=["senior", "expert"])
    assert q.add(samples) == len(samples) and q.add(samples) == 0
    a, b = samples[0].id, samples[1].id
    with pytest.raises(DataError, match="cannot go from pending to approved"):
        q.transition(a, "approved", reviewer_id="r1", qualification="expert")
    q.transition(a, "in_review")
    with pytest.raises(DataError, match="reviewer id and qualification"):
        q.transition(a, "approved")
    with pytest.raises(DataError, match="qualification 'junior'"):
        q.transition(a, "approved", reviewer_id="r1", qualification="junior")
    q.transition(a, "approved", reviewer_id="r1", qualification="expert")
    with pytest.raises(DataError, match="none \\(final\\)"):
        q.transition(a, "rejected", reviewer_id="r1", qualification="expert")
    q.decide(b, "needs_fix", reviewer_id="r2", qualification="senior", note="精度不对")
    q.decide(b, "rejected", reviewer_id="r2", qualification="senior")
    with pytest.raises(DataError, match="not in the review queue"):
        q.transition("nope", "in_review")
    again = ReviewQueue(tmp_path / "log.jsonl")  # replayed from the append-only log
    assert again.entries[a].status == "approved" and again.entries[a].reviewer_id == "r1"
    assert again.entries[b].status == "rejected" and again.entries[b].qualification == "senior"
    assert again.rejection_rates() == {"calc_lcr": 0.5}


def _fill(fmt: str, path: Path, decisions: dict[str, tuple[str, str, str]]) -> None:
    """Play the reviewer: write decisions the way each tool exports them."""
    if fmt == "csv":
        rows = list(csv.DictReader(open(path, encoding="utf-8", newline="")))
        for r in rows:
            if r["sample_id"] in decisions:
                r["decision"], r["reviewer_id"], r["qualification"] = decisions[r["sample_id"]]
        with open(path, "w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    elif fmt == "labelstudio":
        tasks = json.loads(path.read_text(encoding="utf-8"))
        for t in tasks:
            d = decisions.get(t["data"]["sample_id"])
            if d:
                t["annotations"] = [{"completed_by": {"id": 7, "email": d[1]}, "was_cancelled": False, "result": [
                    {"from_name": "decision", "to_name": "output", "type": "choices", "value": {"choices": [d[0]]}},
                    {"from_name": "qualification", "to_name": "output", "type": "choices", "value": {"choices": [d[2]]}},
                    {"from_name": "note", "to_name": "output", "type": "textarea", "value": {"text": ["ok"]}}]}]
        path.write_text(json.dumps(tasks, ensure_ascii=False), encoding="utf-8")
    else:
        recs = json.loads(path.read_text(encoding="utf-8"))
        for r in recs:
            d = decisions.get(r["id"])
            if d:
                r["responses"] = {"decision": [{"value": d[0], "user_id": d[1]}],
                                  "qualification": [{"value": d[2], "user_id": d[1]}]}
                r["status"] = "completed"
        path.write_text(json.dumps(recs, ensure_ascii=False), encoding="utf-8")


@pytest.mark.parametrize("fmt", ["csv", "labelstudio", "argilla"])
def test_round_trip_every_format(tmp_path, samples, fmt):
    q = ReviewQueue(tmp_path / "log.jsonl")
    out = tmp_path / f"export.{'csv' if fmt == 'csv' else 'json'}"
    assert export_review(samples, q, fmt, out) == len(samples)
    assert all(e.status == "in_review" for e in q.entries.values())
    chain = next(s for s in samples if s.chain_steps)
    text = out.read_text(encoding="utf-8")
    assert chain.messages[-1].content in text and chain.messages[2].content.splitlines()[0] in text
    want = {samples[0].id: ("approved", "alice@bank", "expert"), samples[2].id: ("rejected", "bob@bank", "senior"),
            samples[3].id: ("needs_fix", "bob@bank", "senior"), samples[4].id: ("promoted", "x", "expert")}
    _fill(fmt, out, want)
    res = import_review(out, ReviewQueue(tmp_path / "log.jsonl"))  # format detected from the file
    assert sorted(res.applied) == sorted([samples[0].id, samples[2].id, samples[3].id])
    assert [sid for sid, _ in res.refused] == [samples[4].id] and len(res.skipped) == len(samples) - 4
    final = ReviewQueue(tmp_path / "log.jsonl")
    for sid, (decision, who, qual) in list(want.items())[:3]:
        e = final.entries[sid]
        assert (e.status, e.reviewer_id, e.qualification) == (decision, who, qual)
    # importing the same file again cannot overturn final decisions
    again = import_review(out, final, fmt)
    assert samples[0].id in {sid for sid, _ in again.refused}


def test_only_approved_samples_train_and_rates_reach_review_stats(tmp_path, capsys):
    kw = dict(n_per_task=3, defect_rate=0.0, val_fraction=0.0, test_fraction=0.0, perturb_fraction=0.0,
              seed=0, progress=False)
    out = tmp_path / "ds"
    res = build_dataset(ROOT / "ontology.yaml", ROOT / "rules.yaml", out, require_review=True, **kw)
    assert res.counts["accepted"] == 0 and res.counts["pending_review"] > 0
    assert not read_samples(out / "samples.parquet")
    export = tmp_path / "review.csv"
    with pytest.raises(SystemExit) as e:
        main(["review", "export", "--dataset", str(out), "--format", "csv", "--out", str(export),
              "--task", "calc_lcr", "--task", "pii_masking"])
    assert e.value.code in (0, None)
    rows = list(csv.DictReader(open(export, encoding="utf-8")))
    assert len(rows) == 6
    decisions = {r["sample_id"]: ("approved" if i % 3 else "rejected", "carol", "expert") for i, r in enumerate(rows)}
    _fill("csv", export, decisions)
    with pytest.raises(SystemExit) as e:
        main(["review", "import", str(export), "--dataset", str(out)])
    assert e.value.code in (0, None)
    with pytest.raises(SystemExit):
        main(["review", "status", "--dataset", str(out)])
    assert "calc_lcr" in capsys.readouterr().out
    stats = json.loads((out / "review_stats.json").read_text())
    assert stats["calc_lcr"] == pytest.approx(1 / 3, abs=1e-3) and stats["pii_masking"] == pytest.approx(1 / 3, abs=1e-3)
    res = build_dataset(ROOT / "ontology.yaml", ROOT / "rules.yaml", out, require_review=True, **kw)
    trained = read_samples(out / "samples.parquet")
    approved = {sid for sid, d in decisions.items() if d[0] == "approved"}
    assert {s.id for s in trained} == approved and all(s.reviewer_id == "carol" for s in trained)
    assert json.loads((out / "review_stats.json").read_text())["calc_lcr"] == pytest.approx(1 / 3, abs=1e-3)
