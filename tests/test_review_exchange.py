"""One export/import for the review store: CSV (formula-safe), Label Studio, Argilla; torn files."""

from __future__ import annotations

import csv
import io
import json

import pytest
from browser.review_env import BACKENDS, REASONS, add_outputs, close_store, open_store, registry

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
    assert len(res.applied) == 2 and res.torn.startswith(f"{path}:4: row cut short") and not res.refused
    path.write_text("item_id,verdict,reason,reviewer\ncalc_lcr-m1-2,approve,,bob\ncalc_lcr-m1-2,app", encoding="utf-8")
    res = import_verdicts(store, path, reviewers=registry())
    assert len(res.applied) == 1 and res.torn == f"{path}:3: last row cut short"


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
    assert len(res.applied) == 3 and res.torn == f"{path}: record 3 cut short"
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
    assert len(res.applied) == 3 and res.torn == f"{path}:3: last line cut short" and not res.refused
    rows = store.verdicts_of(item_id="calc_lcr-m1-0")
    assert [(v.reviewer, v.reason) for v in rows] == [("alice", "算术错误"), ("bob", "小数位不符")]


# --- every format x every kind ----------------------------------------------------------------
HOSTILE = ["=HYPERLINK(\"http://evil\",\"x\")", "+1+1", "-2+3", "@SUM(A1)", "\tcmd", "\rcmd"]


@pytest.fixture(params=BACKENDS)
def kinds_store(request, tmp_path):
    """One item of every kind (family calc, so alice and bob may judge all), with hostile text."""
    s = open_store(request.param, tmp_path)
    add_outputs(s, 1)
    s.enqueue("s1", "sample", "calc_lcr", prompt=HOSTILE[0], output=HOSTILE[1], family="calc", data_version="d1")
    s.enqueue("p1", "pair", "calc_lcr", prompt=HOSTILE[2], output=HOSTILE[3], reference=HOSTILE[4], family="calc",
              data_version="shadow-x", meta={"request_id": "r1", "shadow": "x", "a_is": "champion"})
    yield s
    close_store(s)


VERDICT = {"sample": ("approve", ""), "output": ("reject", "算术错误"), "pair": ("B", "")}


def _fill(fmt: str, path, who: list[str]) -> None:
    """Play the reviewers in each tool: everyone in ``who`` gives the kind's verdict of VERDICT."""
    if fmt == "csv":
        rows = list(csv.DictReader(path.open(encoding="utf-8", newline="")))
        out = []
        for r in rows:
            for w in who:
                verdict, reason = VERDICT[r["kind"]]
                out.append(dict(r, verdict=verdict, reason=reason, reviewer=w))
        with path.open("w", encoding="utf-8", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=list(rows[0]))
            wr.writeheader()
            wr.writerows(out)
    elif fmt == "labelstudio":
        tasks = json.loads(path.read_text(encoding="utf-8"))
        for t in tasks:
            verdict, reason = VERDICT[t["data"]["kind"]]
            t["annotations"] = [{"completed_by": {"id": i, "email": w}, "result": [
                {"from_name": "verdict", "type": "choices", "value": {"choices": [verdict]}},
                {"from_name": "reason", "type": "textarea", "value": {"text": [reason]}}]} for i, w in enumerate(who)]
        path.write_text(json.dumps(tasks, ensure_ascii=False), encoding="utf-8")
    else:
        recs = json.loads(path.read_text(encoding="utf-8"))
        for r in recs:
            verdict, reason = VERDICT[r["metadata"]["kind"]]
            r["responses"] = {"verdict": [{"value": verdict, "user_id": w} for w in who],
                              "reason": [{"value": reason, "user_id": w} for w in who]}
        path.write_text(json.dumps(recs, ensure_ascii=False), encoding="utf-8")


@pytest.mark.parametrize("kind", ["sample", "output", "pair"])
@pytest.mark.parametrize("fmt", ["csv", "labelstudio", "argilla"])
def test_round_trip_every_format_every_kind(kinds_store, tmp_path, fmt, kind):
    from mixtune.review.queue import states

    path = tmp_path / f"out.{'csv' if fmt == 'csv' else 'json'}"
    assert export_store(kinds_store, fmt, path, kinds=(kind,)) == 1
    text = path.read_text(encoding="utf-8")
    assert "champion" not in text and "a_is" not in text  # a pair's order never leaves the store
    if fmt == "labelstudio":  # the labelling interface of this kind comes with the export
        config = path.with_suffix(".config.xml").read_text(encoding="utf-8")
        assert ('<Choice value="tie"/>' in config) == (kind == "pair") and ('value="approve"' in config) != (kind == "pair")
    if kind == "pair":  # the two answers as A and B, whatever the format
        got = list(csv.DictReader(io.StringIO(text)))[0] if fmt == "csv" else \
            (json.loads(text)[0]["data"] if fmt == "labelstudio" else json.loads(text)[0]["fields"])
        a, b = (unescape_cell(got["answer_a"]), unescape_cell(got["answer_b"])) if fmt == "csv" else \
            (got["answer_a"], got["answer_b"])
        assert (a, b) == (HOSTILE[3], HOSTILE[4])
    _fill(fmt, path, ["alice", "bob"])
    res = import_verdicts(kinds_store, path, reviewers=registry(), reasons=REASONS)  # format detected
    assert len(res.applied) == 2 and not res.refused and not res.torn, res
    [item] = kinds_store.items_of((kind,))
    rows = kinds_store.verdicts_of(item_id=item.id)
    want = VERDICT[kind][0].lower()
    assert [(v.reviewer, v.verdict, v.reason) for v in rows] == [("alice", want, VERDICT[kind][1]),
                                                                 ("bob", want, VERDICT[kind][1])]
    assert states(kinds_store, (kind,))[item.id].decision == want
    assert export_store(kinds_store, fmt, path, kinds=(kind,)) == 0  # decided: nothing open any more
    again = import_verdicts(kinds_store, path, reviewers=registry(), reasons=REASONS)
    assert not again.applied and not again.refused


def test_csv_cells_of_every_kind_are_formula_safe_and_come_back_exact(kinds_store, tmp_path):
    path = tmp_path / "all.csv"
    assert export_store(kinds_store, "csv", path) == 3
    raw = list(csv.reader(path.open(encoding="utf-8", newline="")))
    cells = [c for row in raw[1:] for c in row if c]
    assert all(not c.startswith(("=", "+", "-", "@", "\t", "\r")) for c in cells)
    assert sum(c.startswith("'") for c in cells) >= 5
    rows = list(csv.DictReader(path.open(encoding="utf-8", newline="")))
    for r, note in zip(rows, HOSTILE):  # a hostile note survives the trip exactly
        r.update(verdict={"pair": "tie"}.get(r["kind"], "approve"), reviewer="alice", note=escape_cell(note))
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    res = import_verdicts(kinds_store, path, reviewers=registry())
    assert len(res.applied) == 3
    assert [kinds_store.verdicts_of(item_id=r["item_id"])[0].note for r in rows] == HOSTILE[:3]


@pytest.mark.parametrize("encoding", ["utf-8-sig", "gbk", "gb18030", "utf-16"])
def test_csv_saved_by_excel_in_any_of_its_encodings_imports(store, tmp_path, encoding):
    path = tmp_path / "back.csv"
    path.write_bytes("sample_id,decision,reviewer_id,comment\n"  # the old queue's column names still read
                     "s1,Approved,alice,核对无误\n".encode(encoding))
    res = import_verdicts(store, path, reviewers=registry())
    assert len(res.applied) == 1 and not res.refused
    [v] = store.verdicts_of(item_id="s1")
    assert (v.verdict, v.reviewer, v.note) == ("approve", "alice", "核对无误")


def test_unreadable_files_are_one_clear_error_naming_the_file(store, tmp_path):
    from mixtune.errors import DataError

    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"item_id,verdict,reviewer\n\x81\x30\xff\xff,approve,alice\n")
    with pytest.raises(DataError, match="neither UTF-8, UTF-16 nor GBK") as e:
        import_verdicts(store, bad)
    assert e.value.where == str(bad)
    with pytest.raises(DataError, match="cannot read review file") as e:
        import_verdicts(store, tmp_path / "missing.json")
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match="cannot write the review file") as e:
        export_store(store, "csv", blocker / "out.csv")
    assert str(blocker) in e.value.where


def test_records_of_the_wrong_shape_are_refused_by_position(store, tmp_path):
    path = tmp_path / "ls.json"
    export_store(store, "labelstudio", path, kinds=("output",))
    tasks = json.loads(path.read_text(encoding="utf-8"))
    tasks[0]["annotations"] = [{"completed_by": "alice", "result": [{"from_name": "verdict",
                                                                     "value": {"choices": ["approve"]}}]}]
    tasks.insert(1, ["not", "an", "object"])
    tasks.insert(2, {"data": ["wrong"], "annotations": [{"result": "x"}]})
    path.write_text(json.dumps(tasks), encoding="utf-8")
    res = import_verdicts(store, path, "labelstudio", reviewers=registry())
    assert len(res.applied) == 1
    assert res.refused[0] == (f"{path}: record 2", "not a JSON object")
    assert res.refused[1][0] == f"{path}: record 3" and "unexpected structure" in res.refused[1][1]
