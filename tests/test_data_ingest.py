"""Ingest never drops silently: every record is accepted or quarantined with file, line and reason."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mixtune.cli import main
from mixtune.data.ingest import ingest_paths
from mixtune.data.io import read_samples
from mixtune.data.ontology import load_ontology

ONTO = Path(__file__).resolve().parents[1] / "examples" / "finance_risk" / "ontology.yaml"


def _lines(path: Path, lines: list[bytes | str | dict]) -> Path:
    with open(path, "wb") as f:
        for x in lines:
            if isinstance(x, dict):
                x = json.dumps(x, ensure_ascii=False)
            f.write((x.encode("utf-8") if isinstance(x, str) else x) + b"\n")
    return path


def _run(args: list[str]) -> int:
    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code or 0


def test_every_failure_kind_is_quarantined_with_location(tmp_path):
    src = _lines(tmp_path / "mixed.jsonl", [
        {"instruction": "解释信用利差", "input": "", "output": "信用利差是指收益率之差。", "task_id": "concept_term"},  # 1 ok
        b"{not json",                                                                                     # 2
        b'{"instruction": "x", "output": "\xff\xfe bad"}',                                               # 3
        {"instruction": 5, "output": "y", "task_id": "concept_term"},                                    # 4 wrong type
        {"instruction": "q", "output": "a", "task_id": "no_such_task"},                                  # 5 unknown task
        {"instruction": "q", "output": "   ", "task_id": "concept_term"},                                # 6 empty output
        {"instruction": "解释信用利差", "input": "", "output": "信用利差是指收益率之差。", "task_id": "concept_term"},  # 7 dup
        {"instruction": "q" * 300, "output": "a", "task_id": "concept_term"},                             # 8 oversized
        "[1, 2]",                                                                                         # 9 not object
        {"prompt": "q", "completion": "a", "task_id": "concept_term"},                                   # 10 shape
        {"id": "fixed", "instruction": "q1", "output": "a1", "task_id": "concept_term"},                 # 11 ok
        {"id": "fixed", "instruction": "q2", "output": "a2", "task_id": "concept_term"},                 # 12 dup id
        {"instruction": "q3", "output": "a3", "task_id": "concept_term", "stage": "two"},                # 13 wrong type
    ])
    res = ingest_paths([src], ontology=load_ontology(ONTO), max_field_chars=200)
    got = {q["line"]: q["reason"] for q in res.quarantine}
    assert got == {2: "malformed_json", 3: "invalid_utf8", 4: "wrong_type", 5: "unknown_task_id",
                   6: "empty_output", 7: "duplicate_id", 8: "oversized_field", 9: "not_an_object",
                   10: "unrecognised_shape", 12: "duplicate_id", 13: "wrong_type"}
    assert all(q["file"] == str(src) and q["detail"] for q in res.quarantine)
    assert res.input_count == 13 == len(res.samples) + len(res.quarantine)
    assert [s.id for s in res.samples][1] == "fixed"
    ok = res.samples[0]
    assert ok.family == "concept" and ok.source_type == "alpaca" and ok.source_uri == f"{src}:1"
    assert ok.messages[0].content == "解释信用利差" and ok.output == "信用利差是指收益率之差。"


def test_without_ontology_task_ids_are_recorded_as_given(tmp_path):
    src = _lines(tmp_path / "a.jsonl", [{"instruction": "q", "output": "a", "task_id": "anything_goes"}])
    res = ingest_paths([src])
    assert not res.quarantine and res.samples[0].task_id == "anything_goes"
    res = ingest_paths([_lines(tmp_path / "b.jsonl", [{"instruction": "q", "output": "a"}])])
    assert res.quarantine[0]["reason"] == "missing_task_id"


def test_shapes_sharegpt_messages_csv_parquet(tmp_path):
    share = _lines(tmp_path / "s.jsonl", [{"conversations": [{"from": "human", "value": "你好"}, {"from": "gpt", "value": "您好"}]},
                                          {"conversations": [{"from": "alien", "value": "?"}]}])
    oai = tmp_path / "m.json"
    oai.write_text(json.dumps([{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                                             {"role": "assistant", "content": "a"}]}]), encoding="utf-8")
    csv = tmp_path / "c.csv"
    csv.write_bytes("instruction,input,output\n计算,数据,结果\n只有指令,,\n".encode() + b"bad,\xff,x\n")
    pq.write_table(pa.table({"instruction": ["p1", "p2"], "output": ["o1", "o2"]}), tmp_path / "p.parquet")
    res = ingest_paths([share, oai, csv, tmp_path / "p.parquet"], default_task="t")
    assert res.input_count == 8 and len(res.samples) == 5
    by_src = {s.source_uri: s for s in res.samples}
    assert by_src[f"{share}:1"].messages[1].content == "您好" and by_src[f"{share}:1"].source_type == "sharegpt"
    assert [m.role for m in res.samples[1].messages] == ["system", "user", "assistant"]
    assert {(q.get("row") or q.get("line"), q["reason"]) for q in res.quarantine} == {
        (2, "wrong_type"), (2, "empty_output"), (3, "invalid_utf8")}


def test_cli_ingest_third_party_with_field_map(tmp_path, capsys):
    src = _lines(tmp_path / "third_party.jsonl", [
        {"instruction": "什么是拨备覆盖率？", "input": "", "response": "拨备覆盖率是指贷款损失准备与不良贷款之比。"},
        {"instruction": "空", "input": "", "response": ""},
        b"{broken",
    ])
    out = tmp_path / "out"
    rc = _run(["data", "ingest", str(src), "--out", str(out), "--field-map", "output=response",
               "--default-task", "concept_term", "--ontology", str(ONTO)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "input 3" in printed and "accepted 1" in printed and "quarantined 2" in printed
    summary = json.loads((out / "ingest_summary.json").read_text())
    assert summary == {"input": 3, "accepted": 1, "quarantined": 2,
                       "by_reason": {"empty_output": 1, "malformed_json": 1}}
    assert read_samples(out / "samples.parquet")[0].output.startswith("拨备覆盖率")
    assert len((out / "quarantine.jsonl").read_text().splitlines()) == 2


def test_cli_missing_path_is_one_clear_error(tmp_path, capsys):
    rc = _run(["data", "ingest", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc != 0 and "nope.jsonl" in err and "not found" in err and "Traceback" not in err
    rc = _run(["data", "ingest", str(tmp_path), "--out", str(tmp_path / "o"), "--field-map", "nonsense"])
    assert rc != 0
