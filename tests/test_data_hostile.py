"""Hostile records are quarantined one by one (issue 14): the rest of the file is still accepted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mixtune.cli import main
from mixtune.data.ingest import ingest_paths

GOOD = [{"task_id": "t", "instruction": f"q{i}", "output": f"a{i}"} for i in range(3)]
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _jsonl(path: Path, middle: str) -> Path:
    lines = [json.dumps(GOOD[0]), middle, json.dumps(GOOD[1])]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("middle, reason", [
    ("[" * 100_000, "too_deeply_nested"),                                      # RecursionError in json
    ('{"task_id": "t", "instruction": "q", "output": "a", "n": ' + "9" * 5000 + "}", "malformed_json"),  # int digits
])
def test_hostile_json_line_is_quarantined_with_its_line(tmp_path, middle, reason):
    src = _jsonl(tmp_path / "h.jsonl", middle)
    res = ingest_paths([src])
    assert [s.output for s in res.samples] == ["a0", "a1"]
    assert [(q["file"], q["line"], q["reason"]) for q in res.quarantine] == [(str(src), 2, reason)]
    assert res.quarantine[0]["detail"]


def test_hostile_json_document_is_one_quarantined_record(tmp_path):
    src = tmp_path / "deep.json"
    src.write_text("[" * 100_000, encoding="utf-8")
    res = ingest_paths([src])
    assert res.input_count == 1 and res.quarantine[0]["reason"] == "too_deeply_nested"


def test_long_csv_fields_are_judged_by_the_ingest_cap_not_csv_module(tmp_path):
    src = tmp_path / "big.csv"
    src.write_text("task_id,instruction,output\nt,q0,a0\n"
                   f"t,q1,{'x' * 150_000}\n"         # 150 kB: over csv's 128 KiB limit, under the field cap
                   f"t,q2,{'y' * 250_000}\n"         # over the 200k-character field cap
                   "t,q3,a3\n", encoding="utf-8")
    res = ingest_paths([src])
    assert [s.instruction or s.messages[0].content for s in res.samples] == ["q0", "q1", "q3"]
    assert len(res.samples[1].output) == 150_000
    assert [(q["line"], q["reason"]) for q in res.quarantine] == [(4, "oversized_field")]


def test_corrupt_parquet_page_quarantines_its_row_group_only(tmp_path):
    src = tmp_path / "c.parquet"
    table = pa.table({"task_id": ["t"] * 300, "instruction": [f"q{i}" for i in range(300)], "output": ["a"] * 300})
    pq.write_table(table, src, row_group_size=100, compression="none")
    col = pq.ParquetFile(src).metadata.row_group(1).column(1)
    raw = bytearray(src.read_bytes())
    raw[col.data_page_offset: col.data_page_offset + 40] = b"\xab" * 40  # smash the page header
    src.write_bytes(bytes(raw))
    res = ingest_paths([src])
    assert res.input_count == 300 and len(res.samples) == 200
    [q] = res.quarantine
    assert (q["row_group"], q["row"], q["n_records"], q["reason"]) == (1, 101, 100, "unreadable_row_group")
    assert res.summary()["quarantined"] == 100
    assert {s.instruction or s.messages[0].content for s in res.samples} == {f"q{i}" for i in [*range(100), *range(200, 300)]}


def test_cli_ingest_writes_the_rest_despite_hostile_records(tmp_path, capsys):
    src = _jsonl(tmp_path / "h.jsonl", "[" * 100_000)
    with pytest.raises(SystemExit) as e:
        main(["data", "ingest", str(src), "--out", str(tmp_path / "out")])
    assert (e.value.code or 0) == 0
    summary = json.loads((tmp_path / "out" / "ingest_summary.json").read_text())
    assert summary == {"input": 3, "accepted": 2, "quarantined": 1, "by_reason": {"too_deeply_nested": 1}}


_BUILD = "import sys, pyarrow as pa, pyarrow.parquet as pq; pq.write_table(pa.table({k}), sys.argv[1], compression='zstd')"
_MEASURE = """
import json, resource, sys
from mixtune.data.ingest import ingest_paths
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
res = ingest_paths([sys.argv[1]])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"growth_kib": after - before, "quarantine": res.quarantine, "accepted": len(res.samples)}))
"""


def _measure(path: Path, columns: str) -> dict:
    env = {"PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", _BUILD.format(k=columns), str(path)], check=True, env=env)
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(path)], check=True, env=env, capture_output=True,
                         text=True).stdout
    return json.loads(out.splitlines()[-1])


def test_parquet_bomb_is_quarantined_from_the_footer_without_decoding(tmp_path):
    # 200 MB of one repeated character stores in ~7 KB; decoding it cost 1.2 GB RSS before the fix
    got = _measure(tmp_path / "bomb.parquet", "{'task_id': ['t'], 'instruction': ['q'], 'output': ['x' * 200_000_000]}")
    assert (tmp_path / "bomb.parquet").stat().st_size < 100_000
    assert [q["reason"] for q in got["quarantine"]] == ["oversized_row_group"]
    assert got["growth_kib"] < 300 * 1024, f"peak RSS grew {got['growth_kib'] / 1024:.0f} MiB"


def test_bomb_hidden_among_small_rows_is_caught_by_its_expansion_ratio(tmp_path):
    cols = "{'task_id': ['t'] * 400, 'instruction': [f'q{i}' for i in range(400)], 'output': ['z' * 40_000_000] + ['a'] * 399}"
    got = _measure(tmp_path / "hidden.parquet", cols)
    assert [q["reason"] for q in got["quarantine"]] == ["oversized_row_group"] and got["accepted"] == 0
    assert "expands" in got["quarantine"][0]["detail"]
