"""Review files from the outside world (issue 14): encodings, formula cells, torn logs, failed writes."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest

from mixtune.data.generate import generate_samples
from mixtune.data.ontology import load_ontology
from mixtune.data.review import ReviewQueue
from mixtune.data.review_formats import export_review, import_review
from mixtune.data.schema import Message
from mixtune.errors import DataError

ROOT = Path(__file__).resolve().parents[1] / "examples" / "finance_risk"


@pytest.fixture()
def samples():
    return generate_samples(load_ontology(ROOT / "ontology.yaml"), n_per_task=2, seed=0, task_ids=["calc_lcr"])


def _decided_csv(samples, queue, tmp_path) -> list[dict]:
    out = tmp_path / "export.csv"
    export_review(samples, queue, "csv", out)
    rows = list(csv.DictReader(open(out, encoding="utf-8", newline="")))
    for r in rows:
        r.update(decision="approved", reviewer_id="张三", qualification="expert", note="核对无误")
    return rows


def _write(rows: list[dict], path: Path, encoding: str) -> Path:
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    path.write_bytes(buf.getvalue().encode(encoding))
    return path


@pytest.mark.parametrize("encoding", ["utf-8-sig", "gbk", "gb18030", "utf-16"])
def test_csv_import_reads_bom_and_chinese_windows_encodings(tmp_path, samples, encoding):
    q = ReviewQueue(tmp_path / "log.jsonl")
    rows = _decided_csv(samples, q, tmp_path)
    res = import_review(_write(rows, tmp_path / "back.csv", encoding), q)
    assert sorted(res.applied) == sorted(s.id for s in samples) and not res.refused
    e = ReviewQueue(tmp_path / "log.jsonl").entries[samples[0].id]
    assert (e.status, e.reviewer_id, e.note) == ("approved", "张三", "核对无误")


def test_csv_import_in_an_unknown_encoding_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"sample_id,decision,reviewer_id,qualification\n\xff\xff\xff,approved,x,y\n")
    with pytest.raises(DataError, match="neither utf-8 nor gb18030") as e:
        import_review(bad, ReviewQueue(tmp_path / "log.jsonl"))
    assert e.value.where == str(bad)


def test_label_studio_entries_of_the_wrong_shape_are_refused_by_position(tmp_path, samples):
    q = ReviewQueue(tmp_path / "log.jsonl")
    out = tmp_path / "ls.json"
    export_review(samples, q, "labelstudio", out)
    tasks = json.loads(out.read_text(encoding="utf-8"))
    tasks[0]["annotations"] = [{"completed_by": {"email": "a@b"}, "result": [
        {"from_name": "decision", "value": {"choices": ["approved"]}},
        {"from_name": "qualification", "value": {"choices": ["expert"]}}]}]
    tasks.insert(1, ["not", "an", "object"])
    tasks.insert(2, {"data": ["wrong"]})
    out.write_text(json.dumps(tasks), encoding="utf-8")
    res = import_review(out, q, "labelstudio")
    assert res.applied == [samples[0].id]
    assert res.refused[0] == ("entry 2", "is a list, not an object")
    assert res.refused[1][0] == "entry 3" and "unexpected structure" in res.refused[1][1]


def test_formula_cells_are_escaped_on_export_and_restored_on_import(tmp_path, samples):
    hostile = ["=HYPERLINK(\"http://evil\",\"x\")", "+1+1", "-2", "@SUM(A1)", "\tTAB", "\rCR", "'quoted"]
    s = samples[0]
    s.messages = [Message(role="user", content=hostile[0]), Message(role="assistant", content=hostile[1])]
    q = ReviewQueue(tmp_path / "log.jsonl")
    out = tmp_path / "export.csv"
    export_review([s], q, "csv", out)
    [row] = list(csv.DictReader(open(out, encoding="utf-8", newline="")))
    assert row["prompt"] == "'" + hostile[0] and row["output"] == "'" + hostile[1]
    assert all(v[:1] not in "=+-@\t\r" for v in row.values() if v)
    for note in hostile:
        q2 = ReviewQueue(tmp_path / f"log{hostile.index(note)}.jsonl")
        export_review([s], q2, "csv", out)
        [row] = list(csv.DictReader(open(out, encoding="utf-8", newline="")))
        row.update(decision="needs_fix", reviewer_id="r", qualification="senior", note="'" + note if note[:1] in "=+-@\t\r'" else note)
        res = import_review(_write([row], tmp_path / "back.csv", "utf-8"), q2)
        assert res.applied == [s.id] and q2.entries[s.id].note == note


def test_torn_last_line_of_the_review_log_is_set_aside_with_a_warning(tmp_path, samples, capsys):
    log = tmp_path / "log.jsonl"
    q = ReviewQueue(log)
    q.add(samples)
    q.transition(samples[0].id, "in_review")
    complete = log.read_bytes()
    log.write_bytes(complete + b'{"sample_id": "' + samples[1].id.encode() + b'", "fr')  # crash mid-append
    again = ReviewQueue(log)  # used to raise "corrupt review log entry" on every command
    assert "torn last line" in capsys.readouterr().err
    assert again.entries[samples[0].id].status == "in_review" and len(again.entries) == len(samples)
    assert log.read_bytes() == complete and (tmp_path / "log.jsonl.torn").read_bytes().startswith(b'{"sample_id"')
    again.transition(samples[1].id, "in_review")  # appending afterwards yields a clean log
    assert ReviewQueue(log).entries[samples[1].id].status == "in_review"


def test_last_line_without_newline_but_complete_is_kept(tmp_path, samples):
    log = tmp_path / "log.jsonl"
    ReviewQueue(log).add(samples)
    log.write_bytes(log.read_bytes().rstrip(b"\n"))
    q = ReviewQueue(log)
    assert len(q.entries) == len(samples)
    q.transition(samples[-1].id, "in_review")
    assert ReviewQueue(log).entries[samples[-1].id].status == "in_review"


def test_corrupt_middle_line_is_still_an_error(tmp_path, samples):
    log = tmp_path / "log.jsonl"
    ReviewQueue(log).add(samples)
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(lines[0] + b"{garbage\n" + b"".join(lines[1:]))
    with pytest.raises(DataError, match="corrupt review log entry") as e:
        ReviewQueue(log)
    assert e.value.where == f"{log}:2"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions, so the write cannot fail")
def test_failed_export_write_leaves_no_sample_in_review(tmp_path, samples):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        q = ReviewQueue(tmp_path / "log.jsonl")
        with pytest.raises(DataError, match="cannot write the review file"):
            export_review(samples, q, "csv", locked / "export.csv")
    finally:
        locked.chmod(0o700)
    assert all(e.status == "pending" for e in ReviewQueue(tmp_path / "log.jsonl").entries.values())
    assert not list(locked.iterdir())


def test_export_to_a_path_that_cannot_be_a_file_leaves_no_sample_in_review(tmp_path, samples):
    # works as root too: the parent "directory" is a regular file
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x", encoding="utf-8")
    q = ReviewQueue(tmp_path / "log.jsonl")
    with pytest.raises(DataError, match="cannot write the review file") as e:
        export_review(samples, q, "csv", blocker / "export.csv")
    assert str(blocker) in e.value.where
    assert not (tmp_path / "log.jsonl").exists() or all(
        en.status == "pending" for en in ReviewQueue(tmp_path / "log.jsonl").entries.values())
    assert not q.entries
