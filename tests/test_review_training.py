"""Decisions reach training: the data build reads the review store's sample decisions, the lineage
names both reviewers, the data step's fingerprint follows sample decisions only, --fresh keeps
them, and an old data/review_log.jsonl moves into the store once."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from browser.review_env import BACKENDS, close_store, open_store

import mixtune.pipeline as pipeline
from mixtune.cli import main
from mixtune.config import PipelineConfig
from mixtune.data.build import build_dataset
from mixtune.data.io import read_samples
from mixtune.data.lineage import trace_item
from mixtune.review import ReviewStore, enqueue_samples, sample_decisions
from mixtune.review.pairs import enqueue_pairs, pair_id
from mixtune.review.queue import submit
from mixtune.review.reviewers import Reviewer, Reviewers
from mixtune.rundir import RunDir

EX = Path(__file__).resolve().parents[1] / "examples" / "finance_risk"
KW = dict(n_per_task=2, defect_rate=0.0, val_fraction=0.0, test_fraction=0.0, perturb_fraction=0.0, seed=0,
          progress=False)
REG = Reviewers([Reviewer("alice", "0" * 64, ("*",)), Reviewer("bob", "1" * 64, ("*",)),
                 Reviewer("judy", "2" * 64, ("*",), adjudicator=True)])


def _judge(store, item_id: str, *verdicts: str) -> None:
    """alice, bob (and judy, on a dispute) give these verdicts in turn."""
    for who, v in zip(("alice", "bob", "judy"), verdicts):
        submit(store, REG, REG.by_id[who], item_id, v, reason="" if v == "approve" else "答非所问")


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    s = open_store(request.param, tmp_path)
    yield s
    close_store(s)


def test_approved_after_a_build_enters_the_next_with_both_reviewers_in_its_lineage(store, tmp_path):
    out = tmp_path / "ds"
    res = build_dataset(EX / "ontology.yaml", EX / "rules.yaml", out, require_review=True,
                        review_decisions=sample_decisions(store), **KW)
    assert res.counts["accepted"] == 0 and len(res.pending) == res.counts["pending_review"] > 4
    assert enqueue_samples(store, res.pending, data_version=res.version) == len(res.pending)
    ok, disputed_ok, rejected, half = (s.id for s in res.pending[:4])
    _judge(store, ok, "approve", "approve")
    _judge(store, disputed_ok, "approve", "reject", "approve")  # judy settles the disagreement
    _judge(store, rejected, "reject", "reject")
    _judge(store, half, "approve")  # one reviewer of two: not decided, does not train yet
    res2 = build_dataset(EX / "ontology.yaml", EX / "rules.yaml", out, require_review=True,
                         review_decisions=sample_decisions(store), **KW)
    trained = {s.id: s for s in read_samples(out / "samples.parquet")}
    assert set(trained) == {ok, disputed_ok} and res2.counts["review_decisions"] == 3
    assert (trained[ok].reviewer_ids, trained[ok].adjudicator_id, trained[ok].review_status) == \
        (["alice", "bob"], "", "approved")
    assert trained[ok].reviewer_id == "alice,bob"
    assert (trained[disputed_ok].reviewer_ids, trained[disputed_ok].adjudicator_id) == (["alice", "bob"], "judy")
    lineage = {r["sample_id"]: r for r in pq.read_table(out / "lineage.parquet").to_pylist()}
    assert lineage[ok]["reviewer_ids"] == ["alice", "bob"] and lineage[disputed_ok]["adjudicator_id"] == "judy"
    assert trace_item(out, ok)["rows"][0]["reviewer_ids"] == ["alice", "bob"]
    quarantine = [json.loads(x) for x in (out / "quarantine.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [q["reason"] for q in quarantine if q["sample_id"] == rejected] == ["review:rejected"]
    assert half in {s.id for s in res2.pending} and rejected not in {s.id for s in res2.pending}


def _cfg(tmp_path, **data) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "output_dir": str(tmp_path / "runs"), "name": "r",
        "data": {"ontology": str(EX / "ontology.yaml"), "rules": str(EX / "rules.yaml"), "n_per_task": 2,
                 "defect_rate": 0.0, "perturb_fraction": 0.0, **data}})


def test_the_data_fingerprint_follows_sample_decisions_only(tmp_path, monkeypatch):
    builds = []
    real = pipeline.build_dataset
    monkeypatch.setattr(pipeline, "build_dataset", lambda *a, **k: builds.append(1) or real(*a, **k))
    cfg = _cfg(tmp_path, require_review=True)
    rd = RunDir(cfg)
    first = dict(pipeline.step_data(cfg, rd))
    store = ReviewStore(pipeline.review_store(cfg))
    assert store.url.endswith(str(tmp_path / "runs" / "review.db"))  # beside the run folders
    pending = [it.id for it in store.items_of(("sample",))]
    assert len(builds) == 1 and len(pending) == first["counts"]["pending_review"] > 0
    assert pipeline.step_data(cfg, rd)["fp"] == first["fp"] and len(builds) == 1  # nothing new: skipped
    # verdicts that cannot change what trains leave the data step alone: model outputs, A/B pairs,
    # the first of two reviewers
    store.register_model_version("m1")
    store.enqueue("o1", "output", "calc_lcr", output="x", model_version="m1")
    store.add_verdict("o1", "alice", "reject", reason="算术错误")
    enqueue_pairs(store, [{"request_id": "q1", "prompt": "[]", "candidate_answer": "a", "champion_answer": "b"}],
                  tag="t")
    store.add_verdict(pair_id("t", "q1"), "alice", "a")
    _judge(store, pending[0], "approve")
    assert pipeline.step_data(cfg, RunDir(cfg))["fp"] == first["fp"] and len(builds) == 1
    # the second agreeing verdict decides the sample: the data step reruns and it trains
    assert submit(store, REG, REG.by_id["bob"], pending[0], "approve")[2].state == "decided"
    rd = RunDir(cfg)
    second = pipeline.step_data(cfg, rd)
    assert len(builds) == 2 and second["fp"] != first["fp"] and second["version"] != first["version"]
    assert [s.id for s in pipeline.load_samples(rd)] == [pending[0]]
    # --fresh deletes the run folder, never the store: the decision still trains after it
    rd = RunDir(cfg, fresh=True)
    assert not (rd.path / "data").exists() and Path(pipeline.review_store(cfg)).is_file()
    third = pipeline.step_data(cfg, rd)
    assert third["version"] == second["version"] and len(builds) == 3
    store.close()


def test_a_decision_that_changes_nothing_trained_reruns_only_the_data_step(tmp_path):
    cfg = _cfg(tmp_path)  # generated samples are auto-approved: an expert approval changes no membership
    rd = RunDir(cfg)
    first = dict(pipeline.step_data(cfg, rd))
    sid = read_samples(rd.path / "data" / "samples.parquet")[0]
    store = ReviewStore(pipeline.review_store(cfg))
    enqueue_samples(store, [sid])
    _judge(store, sid.id, "approve", "approve")
    second = pipeline.step_data(cfg, RunDir(cfg))
    assert second["inputs"] != first["inputs"] and second["fp"] == first["fp"]  # later steps stay done
    s = next(x for x in read_samples(rd.path / "data" / "samples.parquet") if x.id == sid.id)
    assert s.reviewer_ids == ["alice", "bob"]  # the lineage has the experts, not the generator
    store.close()


def _legacy_log(path: Path, sid: str, other: str) -> None:
    events = [{"sample_id": sid, "task_id": "calc_lcr", "from": None, "to": "pending", "time": "t0"},
              {"sample_id": sid, "task_id": "calc_lcr", "from": "pending", "to": "in_review", "time": "t1"},
              {"sample_id": sid, "task_id": "calc_lcr", "from": "in_review", "to": "approved",
               "reviewer_id": "carol", "qualification": "expert", "note": "ok", "time": "t2"},
              {"sample_id": other, "task_id": "calc_lcr", "from": None, "to": "pending", "time": "t0"}]
    text = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events)
    path.write_text(text + '{"sample_id": "x", "fr', encoding="utf-8")  # a crash mid-append left a torn tail


def test_an_old_review_log_moves_into_the_store_once_before_fresh(tmp_path, capsys):
    cfg = _cfg(tmp_path, require_review=True)
    rd = RunDir(cfg)
    pipeline.step_data(cfg, rd)
    pending = read_samples(rd.path / "data" / "review_queue.parquet")
    for f in Path(pipeline.review_store(cfg)).parent.glob("review.db*"):
        f.unlink()  # as before the store existed: only the log knows
    log = rd.path / "data" / "review_log.jsonl"
    _legacy_log(log, pending[0].id, pending[1].id)
    pipeline.migrate_review_log(cfg)
    msg = capsys.readouterr().err
    assert "imported the old review log" in msg and "1 decision(s)" in msg and f"{log}:5" in msg
    assert not log.exists() and log.with_name("review_log.jsonl.imported").is_file()
    rd = RunDir(cfg, fresh=True)  # the old log is gone with the run folder; its decision is not
    pipeline.step_data(cfg, rd)
    [s] = read_samples(rd.path / "data" / "samples.parquet")
    assert (s.id, s.review_status, s.adjudicator_id) == (pending[0].id, "approved", "carol")
    store = ReviewStore(pipeline.review_store(cfg))
    assert store.item(pending[0].id).output  # the item kept its text from the old dataset files
    pipeline.migrate_review_log(cfg)
    assert "imported" not in capsys.readouterr().err  # once only
    store.close()


def test_cli_build_review_export_import_status_rebuild(tmp_path, capsys):
    out, rstore = tmp_path / "ds", str(tmp_path / "review.db")

    def cli(*args):
        with pytest.raises(SystemExit) as e:
            main(list(args))
        return e.value.code or 0

    assert cli("data", "build", "--ontology", str(EX / "ontology.yaml"), "--rules", str(EX / "rules.yaml"),
               "--out", str(out), "--n-per-task", "3", "--defect-rate", "0", "--val", "0", "--test", "0",
               "--perturb", "0", "--require-review") == 0
    assert "new sample(s) in the data queue of " + str(tmp_path / "review.db") in capsys.readouterr().out
    export = tmp_path / "review.csv"
    assert cli("review", "export", "--store", rstore, "--out", str(export), "--kind", "sample",
               "--task", "calc_lcr", "--task", "pii_masking") == 0
    rows = list(csv.DictReader(export.open(encoding="utf-8")))
    assert len(rows) == 6 and {r["kind"] for r in rows} == {"sample"}
    filled = [dict(r, verdict="approve" if i % 3 else "reject", reason="" if i % 3 else "答非所问", reviewer=who)
              for i, r in enumerate(rows) for who in ("carol", "dave")]
    with export.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(filled)
    assert cli("review", "import", str(export), "--store", rstore) == 0
    assert "applied 12" in capsys.readouterr().out
    assert cli("review", "status", "--store", rstore) == 0
    assert "data" in capsys.readouterr().out
    assert cli("data", "build", "--ontology", str(EX / "ontology.yaml"), "--rules", str(EX / "rules.yaml"),
               "--out", str(out), "--n-per-task", "3", "--defect-rate", "0", "--val", "0", "--test", "0",
               "--perturb", "0", "--require-review", "--review-store", rstore) == 0
    trained = read_samples(out / "samples.parquet")
    approved = {r["item_id"] for i, r in enumerate(rows) if i % 3}
    assert {s.id for s in trained} == approved and all(s.reviewer_ids == ["carol", "dave"] for s in trained)
    stats = json.loads((out / "review_stats.json").read_text())
    assert stats["calc_lcr"] == pytest.approx(1 / 3, abs=1e-3) and stats["pii_masking"] == pytest.approx(1 / 3, abs=1e-3)
    # an old log handed to `review import` is the one command that moves it into the store
    log = tmp_path / "old" / "review_log.jsonl"
    log.parent.mkdir()
    _legacy_log(log, "legacy-1", "legacy-2")
    assert cli("review", "import", str(log), "--store", rstore) == 0
    assert "1 decision(s)" in capsys.readouterr().out
    assert sample_decisions(ReviewStore(rstore))["legacy-1"].adjudicator == "carol"
