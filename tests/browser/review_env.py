"""Shared set-up for the review tests: a store on each backend, reviewers with tokens, items."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import yaml

from mixtune.review.reviewers import Reviewers, reviewers_file_entry
from mixtune.review.store import ReviewStore

PG_URL = os.environ.get("MIXTUNE_TEST_PG_URL", "")
# SQLite always; PostgreSQL too where CI (or a developer) points MIXTUNE_TEST_PG_URL at one
BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])

TOKENS = {"alice": "tok-alice-0123456789", "bob": "tok-bob-0123456789", "judy": "tok-judy-0123456789",
          "sim": "tok-sim-0123456789", "carol": "tok-carol-0123456789"}
REASONS = {"calc_lcr": ["算术错误", "小数位不符", "分子分母颠倒"], "concept_term": ["使用非规范术语", "答非所问"]}


def open_store(backend: str, tmp_path: Path) -> ReviewStore:
    """A fresh store: a SQLite file, or PostgreSQL tables under a unique prefix (drop with ``close_store``)."""
    if backend == "sqlite":
        return ReviewStore(tmp_path / "review.db")
    return ReviewStore(PG_URL, prefix=f"t{uuid.uuid4().hex[:12]}_")


def close_store(store: ReviewStore) -> None:
    if store.engine.dialect.name == "postgresql":
        store.drop()
    else:
        store.close()


def reviewer_entries() -> list[dict]:
    """alice and bob review calc (+ concept for alice), judy adjudicates, sim is simulated, carol only concept."""
    return [
        reviewers_file_entry("alice", TOKENS["alice"], ["calc", "concept"]),
        reviewers_file_entry("bob", TOKENS["bob"], ["calc"]),
        reviewers_file_entry("judy", TOKENS["judy"], ["*"], adjudicator=True),
        reviewers_file_entry("sim", TOKENS["sim"], ["*"], kind="simulated"),
        reviewers_file_entry("carol", TOKENS["carol"], ["concept"]),
    ]


def write_reviewers(path: Path) -> Path:
    path.write_text(yaml.safe_dump({"reviewers": reviewer_entries()}, allow_unicode=True), encoding="utf-8")
    return path


def registry() -> Reviewers:
    return Reviewers.from_data({"reviewers": reviewer_entries()})


def add_outputs(store: ReviewStore, n: int = 3, task: str = "calc_lcr", version: str = "m1", family: str = "calc",
                start: int = 0) -> list[str]:
    """``n`` model outputs of ``task`` (the first gets a rule finding on its number)."""
    store.register_model_version(version)
    ids = []
    for i in range(start, start + n):
        out = f"流动性覆盖率 = {120 + i}.50%"
        findings = [{"start": 8, "end": len(out), "rule_id": "numeric_consistency", "severity": "error",
                     "reason": "result does not match inputs"}] if i == start else []
        iid = f"{task}-{version}-{i}"
        store.enqueue(iid, "output", task, prompt=f"计算 LCR #{i}", reference=f"流动性覆盖率 = {120 + i}.50%",
                      output=out, family=family, model_version=version, findings=findings)
        ids.append(iid)
    return ids
