"""The shared JSON-lines reader: every malformed input is one DataError naming file and line."""

from __future__ import annotations

import pytest

from mixtune.errors import DataError
from mixtune.jsonl import read_jsonl_objects


def test_reads_objects_with_line_numbers_skipping_blank_lines(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"a": 1}\n\n{"b": "中文"}\n', encoding="utf-8")
    assert read_jsonl_objects(p) == [(1, {"a": 1}), (3, {"b": "中文"})]


@pytest.mark.parametrize("payload, needle, line", [
    (b'{"a": 1}\n{"a": \n', "malformed JSON", 2),
    (b'{"a": 1}\n[1, 2]\n', "must be a JSON object", 2),
    (b'{"a": 1}\n{"a": "\xff\xfe"}\n', "not valid UTF-8", 2),
])
def test_bad_lines_name_file_and_line(tmp_path, payload, needle, line):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(payload)
    with pytest.raises(DataError) as e:
        read_jsonl_objects(p)
    assert needle in str(e.value) and f"bad.jsonl:{line}" in str(e.value)


def test_missing_file_names_what_was_expected(tmp_path):
    with pytest.raises(DataError, match="traffic file not found"):
        read_jsonl_objects(tmp_path / "nope.jsonl", "traffic file")
