"""``mixtune data export``: trainer formats that round-trip through ``datasets`` (issue 16 item 5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mixtune.cli import main
from mixtune.data.build import build_dataset
from mixtune.data.export import export_dataset
from mixtune.data.io import read_samples
from mixtune.data.lineage import trace_item
from mixtune.errors import DataError
from mixtune.review import Reviewer, Reviewers, ReviewStore, enqueue_samples, sample_decisions, submit

EX = Path(__file__).resolve().parents[1] / "examples" / "finance_risk"
FROM_SHAREGPT = {"system": "system", "human": "user", "gpt": "assistant"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    src = root / "third_party.jsonl"
    rows = [("不良贷款", "不良贷款是指五级分类中的次级、可疑和损失类贷款。"),
            ("拨备覆盖率", "拨备覆盖率是指贷款损失准备与不良贷款之比。"),
            ("资本充足率", "资本充足率是指资本与风险加权资产之比。"),
            ("流动性覆盖率", "流动性覆盖率是指优质流动性资产与未来30天现金净流出之比。"),
            ("杠杆率", "杠杆率是指一级资本与调整后表内外资产余额之比。"),
            ("信用利差", "信用利差是指信用债与同期限国债收益率之差。")]
    src.write_text("".join(json.dumps({"task_id": "concept_term", "instruction": f"请解释以下风控术语的含义。\n术语：{t}",
                                       "output": a}, ensure_ascii=False) + "\n" for t, a in rows), encoding="utf-8")
    ds = root / "ds"
    build_dataset(EX / "ontology.yaml", EX / "rules.yaml", ds, n_per_task=3, defect_rate=0.0, val_fraction=0.2,
                  test_fraction=0.2, perturb_fraction=0.5, seed=0, sources=[str(src)], progress=False)
    samples = {s.id: s for s in read_samples(ds / "samples.parquet")}
    ingested = [s for s in samples.values() if s.source_type == "alpaca" and s.split == "train"
                and not s.parent_id]
    assert len(ingested) >= 2, "fixture needs two ingested train samples"
    store = ReviewStore(root / "review.db")  # two experts reject one after the build (dual validation)
    enqueue_samples(store, [ingested[0]])
    reg = Reviewers([Reviewer("dora", "0" * 64, ("*",)), Reviewer("emil", "1" * 64, ("*",))])
    for who in ("dora", "emil"):
        submit(store, reg, reg.by_id[who], ingested[0].id, "reject", reason="答非所问")
    samples[ingested[0].id].review_status = "rejected"
    decisions = sample_decisions(store)
    store.close()
    return ds, samples, ingested[0].id, decisions


def _load(path: Path, cache: Path) -> list[dict]:
    from datasets import load_dataset  # the trainers' own loader is the round-trip check

    return list(load_dataset("json", data_files=str(path), split="train", cache_dir=str(cache)))


def _messages_from(fmt: str, rec: dict) -> list[dict]:
    if fmt == "alpaca":
        msgs = [{"role": "system", "content": rec["system"]}] if rec["system"] else []
        for u, a in rec["history"] or []:
            msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
        user = f"{rec['instruction']}\n{rec['input']}" if rec["input"] else rec["instruction"]
        return msgs + [{"role": "user", "content": user}, {"role": "assistant", "content": rec["output"]}]
    if fmt == "axolotl":
        return rec["messages"]
    return [{"role": FROM_SHAREGPT[t["from"]], "content": t["value"]} for t in rec["conversations"]]


@pytest.mark.parametrize("fmt", ["llamafactory", "axolotl", "sharegpt", "alpaca"])
def test_export_round_trips_through_datasets(tmp_path, dataset, fmt):
    ds, samples, _, decisions = dataset
    res = export_dataset(ds, fmt, tmp_path / fmt, review_decisions=decisions)
    want = {sid for sid, s in samples.items() if s.split == "train" and s.review_status == "approved"}
    data_file = tmp_path / fmt / "mixtune_train.jsonl"
    if fmt == "llamafactory":
        info = json.loads((tmp_path / fmt / "dataset_info.json").read_text())
        entry = info["mixtune_train"]
        assert entry["formatting"] == "sharegpt" and entry["columns"] == {"messages": "conversations"}
        data_file = tmp_path / fmt / entry["file_name"]
    if fmt == "axolotl":
        snippet = yaml.safe_load((tmp_path / fmt / "axolotl_datasets.yaml").read_text())
        [entry] = snippet["datasets"]
        assert entry["type"] == "chat_template" and entry["field_messages"] == "messages"
        data_file = Path(entry["path"])
    records = _load(data_file, tmp_path / "hf")
    assert {r["id"] for r in records} == want and res.exported == len(want) == len(records)
    assert any(len(samples[r["id"]].messages) > 2 for r in records), "a multi-turn chain must be exported"
    for r in records:
        s = samples[r["id"]]
        assert r["task_id"] == s.task_id
        assert _messages_from(fmt, r) == [m.model_dump() for m in s.messages], r["id"]
        if fmt == "alpaca" and len(s.messages) == 2:
            assert (r["instruction"], r["input"]) == (s.instruction, s.input)
    n_pending = sum(s.split == "train" and s.review_status == "pending" for s in samples.values())
    assert n_pending and res.excluded == {"review:pending": n_pending, "review:rejected": 1}
    manifest = json.loads((tmp_path / fmt / "export_manifest.json").read_text())
    assert manifest["exported"] == len(want) and manifest["dataset_version"] == [next(iter(samples.values())).dataset_version]


def test_exported_ids_trace_back_through_lineage(tmp_path, dataset):
    ds, samples, _, decisions = dataset
    export_dataset(ds, "sharegpt", tmp_path / "x", review_decisions=decisions)
    rec = json.loads((tmp_path / "x" / "mixtune_train.jsonl").read_text(encoding="utf-8").splitlines()[0])
    traced = trace_item(ds, rec["id"])
    assert traced["rows"] and traced["rows"][0]["task_id"] == samples[rec["id"]].task_id


def test_include_pending_adds_unreviewed_but_never_rejected(tmp_path, dataset):
    ds, samples, rejected, decisions = dataset
    res = export_dataset(ds, "axolotl", tmp_path / "p", include_pending=True, review_decisions=decisions)
    ids = {json.loads(x)["id"] for x in (tmp_path / "p" / "mixtune_train.jsonl").read_text().splitlines()}
    pending = {sid for sid, s in samples.items() if s.split == "train" and s.review_status == "pending"}
    assert pending and pending <= ids and rejected not in ids and res.excluded == {"review:rejected": 1}


def test_cli_export_from_a_run_dir_and_clear_errors(tmp_path, dataset, capsys):
    ds, samples, _, _ = dataset
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    (run / "data" / "samples.parquet").write_bytes((ds / "samples.parquet").read_bytes())
    with pytest.raises(SystemExit) as e:
        main(["data", "export", "--data", str(run), "--format", "alpaca", "--out", str(tmp_path / "o"),
              "--split", "val", "--review-store", str(ds.parent / "review.db")])
    assert (e.value.code or 0) == 0
    n_val = sum(s.split == "val" and s.review_status == "approved" for s in samples.values())
    assert f"exported {n_val} val samples" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["data", "export", "--data", str(run), "--format", "jsonl", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unknown export format 'jsonl'" in err and "Traceback" not in err
    with pytest.raises(DataError, match="no samples.parquet"):
        export_dataset(tmp_path / "empty", "alpaca", tmp_path / "o")


def test_unvalidated_or_rule_failing_samples_never_leave(tmp_path, dataset):
    ds, samples, _, _ = dataset
    from mixtune.data.io import write_samples

    train = [s.model_copy() for s in samples.values() if s.split == "train" and s.review_status == "approved"][:3]
    train[0].ruleset_version = ""  # e.g. the output of `mixtune data ingest`, never rule-checked
    train[1].rule_results = json.dumps([{"rule_id": "numeric.x", "severity": "error", "reason": "r"}])
    train[2].rule_results = json.dumps([{"rule_id": "style.x", "severity": "warning", "reason": "r"}])
    write_samples(train, tmp_path / "s" / "samples.parquet")
    res = export_dataset(tmp_path / "s" / "samples.parquet", "sharegpt", tmp_path / "o")
    assert res.exported == 1 and res.excluded == {"not_validated": 1, "rule_failure": 1}
    write_samples(train[:2], tmp_path / "s" / "samples.parquet")
    with pytest.raises(DataError, match="nothing to export.*not_validated"):
        export_dataset(tmp_path / "s", "sharegpt", tmp_path / "o2")
