"""CSV review exports never carry a live spreadsheet formula (issue 14: CSV formula injection)."""

from __future__ import annotations

import csv
import json

import pytest

from mixtune.release.review_pairs import csv_safe, export_review
from mixtune.release.store import ShadowStore

HOSTILE = ["=HYPERLINK(\"http://evil\",\"x\")", "+1+1", "-2+3", "@SUM(A1)", "\tcmd", "\rcmd"]


@pytest.mark.parametrize("cell", HOSTILE)
def test_formula_cells_are_escaped(cell):
    assert csv_safe(cell) == "'" + cell
    assert csv_safe("plain 文本 =ok") == "plain 文本 =ok" and csv_safe(None) is None


def test_export_escapes_prompt_and_answers(tmp_path):
    store = ShadowStore(f"sqlite:///{tmp_path / 's.db'}")
    rows = [{"request_id": f"r{i}", "ts": float(i), "source": "gateway", "routed_to": "champion",
             "prompt": json.dumps([{"role": "user", "content": "x"}]), "task_id": cell,
             "champion_answer": cell, "candidate_answer": cell} for i, cell in enumerate(HOSTILE)]
    store.insert_records(rows)
    out = tmp_path / "review.csv"
    assert export_review(store, store.load_records(), out, "csv") == len(HOSTILE)
    with out.open(encoding="utf-8", newline="") as fh:
        items = list(csv.DictReader(fh))
    for it in items:
        for k in ("task_id", "answer_a", "answer_b"):
            assert it[k].startswith("'") and it[k][1:] in HOSTILE, (k, it[k])
        assert it["request_id"].startswith("r")  # ordinary cells untouched
