"""The sample record: a typed pydantic model and its Arrow schema.

A sample is one training/evaluation unit plus its lineage. Conversations are stored as
``messages`` (role/content turns); single-task stage-1 samples also keep the Alpaca-style
``instruction`` / ``input`` / ``output`` split so instruction tokens can be located for pooling.
Nested structures that vary by task (gold answers, context variants, rule results) are JSON text
columns, so the Arrow schema stays fixed and DuckDB can still query them with json functions.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "user", "assistant"]
ReviewStatus = Literal["pending", "in_review", "approved", "rejected", "needs_fix"]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role
    content: str


class Sample(BaseModel):
    """One sample with at least twenty lineage attributes (DESIGN.md §5)."""

    model_config = ConfigDict(extra="forbid")

    # identity and content
    id: str = ""
    task_id: str
    family: str = ""
    group: Literal["logic", "style", "safety", "general"] = "general"
    stage: int = Field(1, ge=1, le=2)
    messages: list[Message]
    instruction: str = ""
    input: str = ""
    output: str = ""
    chain_steps: list[str] = Field(default_factory=list)
    phrasing_id: int = 0
    gold: str = "{}"  # JSON: structured reference for business KPIs (numbers, factors, citations)
    # lineage
    source_uri: str = ""
    source_type: str = "generated"
    license: str = "Apache-2.0"
    ingest_time: str = ""
    annotator_id: str = ""
    annotator_qualification: str = ""
    reviewer_id: str = ""  # who decided: the reviewers of a dual validation, comma-separated
    review_status: ReviewStatus = "pending"
    review_time: str = ""
    reviewer_ids: list[str] = Field(default_factory=list)  # every reviewer of the dual validation
    adjudicator_id: str = ""  # who settled a disagreement, when there was one
    ruleset_version: str = ""
    rule_results: str = "[]"  # JSON list of failure rows
    ontology_version: str = ""
    difficulty_score: float = 0.0
    difficulty_dims: str = "{}"  # JSON: breadth, steps, constraints, ambiguity
    level: int = Field(1, ge=1, le=5)
    perturbation_type: str = ""
    parent_id: str = ""
    business_impact: Literal["low", "medium", "high"] = "medium"
    context_variant: str = "{}"  # JSON: industry, maturity, rating
    language: str = "zh"
    split: Literal["train", "val", "test", "traffic"] = "train"  # traffic: held out for the staged rollout
    dataset_version: str = ""
    pii_flag: bool = False
    dedup_cluster: str = ""
    trained_in_runs: list[str] = Field(default_factory=list)
    defect: str = ""  # injected defect kind (generator only); validation must catch it

    def with_id(self) -> Sample:
        """Fill ``id`` with the content hash when empty."""
        if not self.id:
            self.id = content_hash(self.task_id, [m.model_dump() for m in self.messages])
        return self

    def gold_dict(self) -> dict[str, Any]:
        return json.loads(self.gold or "{}")


def content_hash(task_id: str, messages: list[dict[str, str]]) -> str:
    """Stable id from task and conversation content (same content → same id → dedup)."""
    payload = json.dumps({"t": task_id, "m": messages}, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:20]


_MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])

ARROW_SCHEMA = pa.schema(
    [
        ("id", pa.string()), ("task_id", pa.string()), ("family", pa.string()), ("group", pa.string()),
        ("stage", pa.int8()), ("messages", pa.list_(_MESSAGE)), ("instruction", pa.string()),
        ("input", pa.string()), ("output", pa.string()), ("chain_steps", pa.list_(pa.string())),
        ("phrasing_id", pa.int32()), ("gold", pa.string()), ("source_uri", pa.string()),
        ("source_type", pa.string()), ("license", pa.string()), ("ingest_time", pa.string()),
        ("annotator_id", pa.string()), ("annotator_qualification", pa.string()),
        ("reviewer_id", pa.string()), ("review_status", pa.string()), ("review_time", pa.string()),
        ("ruleset_version", pa.string()), ("rule_results", pa.string()), ("ontology_version", pa.string()),
        ("difficulty_score", pa.float32()), ("difficulty_dims", pa.string()), ("level", pa.int8()),
        ("perturbation_type", pa.string()), ("parent_id", pa.string()), ("business_impact", pa.string()),
        ("context_variant", pa.string()), ("language", pa.string()), ("split", pa.string()),
        ("dataset_version", pa.string()), ("pii_flag", pa.bool_()), ("dedup_cluster", pa.string()),
        ("trained_in_runs", pa.list_(pa.string())), ("defect", pa.string()),
        ("reviewer_ids", pa.list_(pa.string())), ("adjudicator_id", pa.string()),
    ]
)

# review store verdicts -> sample review status
DECISION_STATUS = {"approve": "approved", "reject": "rejected", "needs_fix": "needs_fix"}


@dataclass(frozen=True)
class ReviewDecision:
    """The review store's decision on one sample, as the data build applies it.

    ``decision`` is a store verdict (approve / reject / needs_fix); ``reviewers`` are the dual
    validation's reviewers in verdict order and ``adjudicator`` who settled their disagreement.
    Defined here, not in :mod:`mixtune.review`, because the data layer may not import the review
    package (it sits above data); the review package fills these in.
    """

    decision: str
    reviewers: tuple[str, ...] = ()
    adjudicator: str = ""
    time: str = ""

    def apply(self, s: Sample) -> None:
        """Record this decision on ``s`` (status, both reviewers, adjudicator, time)."""
        s.review_status = DECISION_STATUS[self.decision]  # type: ignore[assignment]
        s.reviewer_ids = list(self.reviewers)
        s.adjudicator_id = self.adjudicator
        s.reviewer_id = ",".join(self.reviewers) or self.adjudicator
        s.review_time = self.time


def samples_to_table(samples: list[Sample]) -> pa.Table:
    rows = [s.model_dump() for s in samples]
    return pa.Table.from_pylist(rows, schema=ARROW_SCHEMA)


def table_to_samples(table: pa.Table) -> list[Sample]:
    return [Sample.model_validate(r) for r in table.to_pylist()]
