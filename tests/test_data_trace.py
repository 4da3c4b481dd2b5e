"""Lineage store and `mixtune trace`: from a task or failing eval item to samples, people and rules."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mixtune.cli import main
from mixtune.data.build import build_dataset
from mixtune.data.io import read_samples
from mixtune.data.lineage import (
    append_lineage,
    lineage_table,
    synthetic_lineage,
    trace_failures,
    trace_item,
    trace_task,
)
from mixtune.errors import DataError

ROOT = Path(__file__).resolve().parents[1] / "examples" / "finance_risk"


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds")
    build_dataset(ROOT / "ontology.yaml", ROOT / "rules.yaml", out, n_per_task=20, defect_rate=0.0,
                  val_fraction=0.2, test_fraction=0.2, perturb_fraction=0.5, seed=0, progress=False)
    return out, read_samples(out / "samples.parquet")


def test_trace_task_matches_the_dataset(ds):
    out, samples = ds
    lcr = [s for s in samples if s.task_id == "calc_lcr"]
    t = trace_task(out / "lineage.parquet", "calc_lcr")
    assert t["n_samples"] == len(lcr)
    assert t["by_level"] == dict(Counter(s.level for s in lcr))
    assert t["by_split"] == dict(Counter(s.split for s in lcr))
    assert t["rule_versions"] == {lcr[0].ruleset_version: len(lcr)} and t["annotators"] == {"generator": len(lcr)}
    assert set(t["sample_ids"]) <= {s.id for s in lcr}
    lv = lcr[0].level
    assert trace_task(out, "calc_lcr", level=lv)["n_samples"] == sum(s.level == lv for s in lcr)  # dir works too


def test_trace_item_and_failures(ds, tmp_path):
    out, samples = ds
    parent = next(s for s in samples if any(t.parent_id == s.id for t in samples))
    r = trace_item(out, parent.id)
    assert r["task_id"] == parent.task_id and r["rows"][0]["level"] == parent.level
    assert {t["sample_id"] for t in r["twins"]} == {t.id for t in samples if t.parent_id == parent.id}
    assert r["task"]["level"] == parent.level
    with pytest.raises(DataError, match="not in the lineage store"):
        trace_item(out, "unknown-id")
    test_items = [s for s in samples if s.split == "test"][:6]
    res = trace_failures(out, [{"sample_id": s.id, "task_id": s.task_id} for s in test_items])
    assert {(i["sample_id"], i["level"]) for i in res["items"]} == {(s.id, s.level) for s in test_items}
    assert {(t["task_id"], t["level"]) for t in res["tasks"]} == {(s.task_id, s.level) for s in test_items}


def test_cli_trace_failing_eval_items(ds, tmp_path, capsys):
    out, samples = ds
    s_bad, s_ok = [s for s in samples if s.split == "test"][:2]
    ev = tmp_path / "eval.jsonl"
    ev.write_text("\n".join(json.dumps({"sample_id": s.id, "task_id": s.task_id, "primary": p})
                            for s, p in ((s_bad, 0.0), (s_ok, 1.0))) + "\n", encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        main(["trace", "--lineage", str(out), "--eval", str(ev), "--json"])
    assert e.value.code in (0, None)
    res = json.loads(capsys.readouterr().out)
    assert res["n_failing"] == 1 and res["items"][0]["sample_id"] == s_bad.id
    assert res["tasks"][0]["task_id"] == s_bad.task_id and res["tasks"][0]["level"] == s_bad.level
    with pytest.raises(SystemExit) as e:
        main(["trace", "--lineage", str(tmp_path / "missing.parquet"), "--task", "calc_lcr"])
    assert e.value.code != 0 and "not found" in capsys.readouterr().err


def test_append_only_store_and_synthetic_table(ds, tmp_path):
    _, samples = ds
    store = tmp_path / "store"
    append_lineage(lineage_table(samples[:10]), store)
    append_lineage(lineage_table(samples[:10], event="trained", run_id="run1"), store)
    assert len(list(store.glob("*.parquet"))) == 2
    assert trace_task(store, samples[0].task_id)["n_samples"] >= 2
    path = synthetic_lineage(20_000, tmp_path / "syn.parquet", n_tasks=4, seed=1)
    assert pq.ParquetFile(path).metadata.num_rows == 20_000
    t = trace_task(path, "task_01")
    assert 4000 < t["n_samples"] < 6000 and set(t["by_level"]) == {1, 2, 3, 4, 5}
