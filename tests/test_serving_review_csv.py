"""CSV review exports never carry a live spreadsheet formula (issue 14: CSV formula injection)."""

from __future__ import annotations

import csv
import json

import pytest

from mixtune.errors import DataError
from mixtune.release.review_pairs import csv_safe, export_review, import_verdicts
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


@pytest.mark.parametrize("encoding", ["utf-8-sig", "gbk"])
def test_excel_saved_csv_imports(tmp_path, encoding):
    """Excel re-saves CSV with a BOM, or as GBK on Chinese Windows: both import."""
    store = ShadowStore(f"sqlite:///{tmp_path / 's.db'}")
    store.insert_records([{"request_id": "r1", "ts": 1.0, "source": "gateway", "routed_to": "champion",
                           "prompt": json.dumps([{"role": "user", "content": "问"}]),
                           "champion_answer": "甲", "candidate_answer": "乙"}])
    out = tmp_path / "review.csv"
    export_review(store, store.load_records(), out, "csv")
    with out.open(encoding="utf-8", newline="") as fh:
        items = list(csv.DictReader(fh))
    items[0].update(verdict="tie", reviewer="专家", comment="差不多")
    with out.open("w", encoding=encoding, newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(items[0]))
        w.writeheader()
        w.writerows(items)
    assert import_verdicts(store, out, "csv")["tie"] == 1
    assert store.load_reviews()["r1"]["reviewer"] == "专家"


def test_non_object_label_studio_entry_is_a_clear_error(tmp_path):
    store = ShadowStore(f"sqlite:///{tmp_path / 's.db'}")
    bad = tmp_path / "ls.json"
    bad.write_text("[5, \"x\"]", encoding="utf-8")
    with pytest.raises(DataError, match="not a labelstudio review export"):
        import_verdicts(store, bad, "labelstudio")
