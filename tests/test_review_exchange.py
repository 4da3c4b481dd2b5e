"""One export/import for the review store: CSV (formula-safe), Label Studio, Argilla; torn files."""

from __future__ import annotations

import csv
import json

import pytest
from browser.review_env import REASONS, add_outputs, registry

from mixtune.review.exchange import escape_cell, export_store, import_verdicts, unescape_cell
from mixtune.review.store import ReviewStore


@pytest.fixture
def store(tmp_path):
    s = ReviewStore(tmp_path / "review.db")
    add_outputs(s, 3)
    s.enqueue("s1", "sample", "calc_lcr", prompt="=HYPERLINK(\"http://x\")", output="+1 -2 @3", family="calc",
              data_version="d1")
    yield s
    s.close()


def test_formula_cells_are_escaped_and_round_trip():
    for cell in ("=1+1", "+1", "-2", "@SUM(A1)", "\tx", "\rx"):
        assert escape_cell(cell) == "'" + cell and unescape_cell(escape_cell(cell)) == cell
    for cell in ("plain", "'quoted", "1=1", ""):
        assert escape_cell(cell) == cell and unescape_cell(cell) == cell


def test_csv_export_is_formula_safe_and_import_applies_verdicts(store, tmp_path):
    out = tmp_path / "q.csv"
    assert export_store(store, "csv", out) == 4
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    s1 = next(r for r in rows if r["item_id"] == "s1")
    assert s1["prompt"].startswith("'=HYPERLINK") and s1["output"] == "'+1 -2 @3"
    for r in rows:  # two reviewers fill in the sheet
        r.update(verdict="approve", reviewer="alice")
    rows[1].update(verdict="reject", reason="算术错误")
    with out.open("w", encoding="utf-8-sig", newline="") as f:  # a BOM, as Excel writes it
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    res = import_verdicts(store, out, reviewers=registry(), reasons=REASONS)
    assert len(res.applied) == 4 and not res.refused and not res.torn
    assert {v.verdict for v in store.verdicts_of(item_id=rows[1]["item_id"])} == {"reject"}
    again = import_verdicts(store, out, reviewers=registry(), reasons=REASONS)
    assert len(again.duplicate) == 4 and not again.applied  # re-importing the same sheet is idempotent


def test_csv_torn_last_row_does_not_block_the_rest(store, tmp_path):
    path = tmp_path / "torn.csv"
    path.write_text("item_id,verdict,reason,reviewer\n"
                    "calc_lcr-m1-0,approve,,alice\n"
                    "calc_lcr-m1-1,reject,算术错误,alice\n"
                    "calc_lcr-m1-2,reject,\"算术", encoding="utf-8")  # cut inside a quoted cell
    res = import_verdicts(store, path, reviewers=registry(), reasons=REASONS)
    assert len(res.applied) == 2 and "line" in res.torn and not res.refused
    path.write_text("item_id,verdict,reason,reviewer\ncalc_lcr-m1-2,approve,,bob\ncalc_lcr-m1-2,app", encoding="utf-8")
    res = import_verdicts(store, path, reviewers=registry())
    assert len(res.applied) == 1 and res.torn == "line 3: last row cut short"


def test_unknown_reviewer_and_unqualified_rows_are_refused_individually(store, tmp_path):
    path = tmp_path / "v.csv"
    path.write_text("item_id,verdict,reason,reviewer\n"
                    "calc_lcr-m1-0,approve,,mallory\n"
                    "calc_lcr-m1-0,approve,,carol\n"
                    "nope,approve,,alice\n"
                    "calc_lcr-m1-1,approve,,alice\n", encoding="utf-8")
    res = import_verdicts(store, path, reviewers=registry())
    assert len(res.applied) == 1
    why = [w for _, w in res.refused]
    assert any("not in the reviewers file" in w for w in why) and any("not qualified" in w for w in why)
    assert any("no item 'nope'" in w for w in why)


def test_label_studio_two_annotators_and_torn_array(store, tmp_path):
    out = tmp_path / "ls.json"
    export_store(store, "labelstudio", out, kinds=("output",))
    tasks = json.loads(out.read_text(encoding="utf-8"))
    assert [t["data"]["item_id"] for t in tasks] == ["calc_lcr-m1-0", "calc_lcr-m1-1", "calc_lcr-m1-2"]

    def ann(who, verdict, reason=""):
        res = [{"from_name": "verdict", "value": {"choices": [verdict]}}]
        if reason:
            res.append({"from_name": "reason", "value": {"text": [reason]}})
        return {"completed_by": {"email": who}, "result": res}

    tasks[0]["annotations"] = [ann("alice", "approve"), ann("bob", "reject", "算术错误")]
    tasks[1]["annotations"] = [ann("alice", "approve")]
    text = json.dumps(tasks, ensure_ascii=False)
    cut = text[: text.rindex('"data"')]  # the export was cut inside the third task
    path = tmp_path / "ls_done.json"
    path.write_text(cut, encoding="utf-8")
    res = import_verdicts(store, path, reviewers=registry(), reasons=REASONS)
    assert len(res.applied) == 3 and res.torn == "record 3 cut short"
    assert [v.reviewer for v in store.verdicts_of(item_id="calc_lcr-m1-0")] == ["alice", "bob"]


def test_argilla_responses_and_jsonl_torn_line(store, tmp_path):
    out = tmp_path / "ar.json"
    export_store(store, "argilla", out, kinds=("output",))
    recs = json.loads(out.read_text(encoding="utf-8"))
    recs[0]["responses"] = {"verdict": [{"value": "reject", "user_id": "alice"}, {"value": "reject", "user_id": "bob"}],
                            "reason": [{"value": "算术错误", "user_id": "alice"}, {"value": "小数位不符", "user_id": "bob"}]}
    recs[1]["responses"] = {"verdict": [{"value": "approve", "user_id": "bob"}]}
    lines = [json.dumps(r, ensure_ascii=False) for r in recs]
    path = tmp_path / "ar.jsonl"
    path.write_text("\n".join(lines[:2]) + "\n" + lines[2][:40], encoding="utf-8")  # torn last line
    res = import_verdicts(store, path, reviewers=registry(), reasons=REASONS)
    assert len(res.applied) == 3 and res.torn == "line 3 cut short" and not res.refused
    rows = store.verdicts_of(item_id="calc_lcr-m1-0")
    assert [(v.reviewer, v.reason) for v in rows] == [("alice", "算术错误"), ("bob", "小数位不符")]
