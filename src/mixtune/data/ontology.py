"""Task ontology: a typed YAML description of every task type and task chain.

The ontology is the single place that says what a task is (family, group, business value),
how its output must look (output spec, rule ids), how it is judged (KPIs and a primary
metric) and how it is asked (≥3 instruction phrasings). Chains list the task ids of their steps;
the loader also materialises each chain as a stage-2 :class:`TaskSpec` (family ``chain``) so
per-task machinery (mixing, evaluation, lineage) treats a chain like any other task.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mixtune.config import load_yaml
from mixtune.errors import ConfigError

Group = Literal["logic", "style", "safety", "general"]
Metric = Literal[
    "exact_match", "numeric_accuracy", "factor_coverage", "citation_correctness",
    "pii_masking", "format_compliance", "refusal", "keyword_recall",
]
METRICS: tuple[str, ...] = Metric.__args__  # type: ignore[attr-defined]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OutputSpec(_Strict):
    """How an answer must look; the rule engine enforces it through the task's rule ids."""

    json_schema: dict[str, Any] | None = None
    regex: str | None = None
    required_sections: list[str] = Field(default_factory=list)
    numeric_precision: int | None = Field(None, ge=0, le=6)
    unit: str | None = None
    max_chars: int | None = Field(None, ge=1)


class DifficultyDefaults(_Strict):
    """Per-task priors for the difficulty scorer (each dimension normalised to 0..1)."""

    breadth: float = Field(0.2, ge=0, le=1)
    steps: float = Field(0.2, ge=0, le=1)
    constraints: float = Field(0.2, ge=0, le=1)
    ambiguity: float = Field(0.2, ge=0, le=1)


class TaskSpec(_Strict):
    """One task type."""

    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    name: str
    family: str
    group: Group = "general"
    stage: int = Field(1, ge=1, le=2)
    business_value: float = Field(1.0, gt=0)
    business_impact: Literal["low", "medium", "high"] = "medium"
    description: str = ""
    preconditions: list[str] = Field(default_factory=list)
    constraints: list[str] = Field(default_factory=list)
    output: OutputSpec = OutputSpec()
    kpis: list[Metric] = Field(min_length=1)
    primary_metric: Metric
    anomalies: list[str] = Field(default_factory=list)
    rule_ids: list[str] = Field(default_factory=list)
    phrasings: list[str] = Field(min_length=3)
    context_variants: list[str] = Field(default_factory=lambda: ["industry", "maturity", "rating"])
    difficulty: DifficultyDefaults = DifficultyDefaults()
    steps: list[str] = Field(default_factory=list)  # only for materialised chains

    @model_validator(mode="after")
    def _primary_in_kpis(self) -> TaskSpec:
        if self.primary_metric not in self.kpis:
            raise ValueError(f"primary_metric {self.primary_metric!r} must be one of kpis {self.kpis}")
        if len(set(self.phrasings)) != len(self.phrasings):
            raise ValueError("phrasings must be distinct")
        return self


class ChainSpec(_Strict):
    """Ordered steps whose outputs feed later steps (trained as one multi-turn conversation)."""

    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    name: str
    steps: list[str] = Field(min_length=2)
    group: Group = "logic"
    business_value: float = Field(1.0, gt=0)
    business_impact: Literal["low", "medium", "high"] = "high"
    description: str = ""
    kpis: list[Metric] = Field(min_length=1)
    primary_metric: Metric
    rule_ids: list[str] = Field(default_factory=list)
    phrasings: list[str] = Field(min_length=3)
    difficulty: DifficultyDefaults = DifficultyDefaults(steps=0.8, breadth=0.6)


class Ontology(_Strict):
    """The whole ontology; ``version`` is ``<declared>+<content hash>`` after loading."""

    name: str
    version: str = "0"
    language: str = "zh"
    domain: str = ""
    variants: dict[str, list[str]] = Field(default_factory=dict)
    tasks: dict[str, TaskSpec]
    chains: dict[str, ChainSpec] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _cross_check(self) -> Ontology:
        for tid, t in self.tasks.items():
            for v in t.context_variants:
                if v not in self.variants:
                    raise ValueError(f"tasks.{tid}.context_variants: unknown variant {v!r}")
        for cid, c in self.chains.items():
            for s in c.steps:
                if s not in self.tasks:
                    raise ValueError(f"chains.{cid}.steps: unknown task id {s!r}")
            if cid in self.tasks:
                raise ValueError(f"chains.{cid}: id collides with a task id")
        return self

    def task(self, task_id: str) -> TaskSpec:
        """Look a task (or chain) up; unknown ids are a user error naming the known ones."""
        try:
            return self.tasks[task_id]
        except KeyError:
            raise ConfigError(f"unknown task id {task_id!r}; known: {sorted(self.tasks)}") from None

    def stage_tasks(self, stage: int) -> list[TaskSpec]:
        return [t for t in self.tasks.values() if t.stage == stage]


def _fmt(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = "unknown key" if e["type"] == "extra_forbid" or e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {path}: {msg}")
    return f"invalid ontology {source}:\n" + "\n".join(lines)


def _listed(raw: dict, key: str, source: str) -> dict:
    """YAML lists of ``{id: ...}`` become dicts keyed by id (duplicates are errors)."""
    items = raw.get(key) or []
    if isinstance(items, dict):
        return items
    if not isinstance(items, list):
        raise ConfigError(f"{key} must be a list of mappings", where=source)
    out: dict[str, Any] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "id" not in item:
            raise ConfigError(f"{key}.{i}: each entry needs an 'id'", where=source)
        if item["id"] in out:
            raise ConfigError(f"{key}.{i}: duplicate id {item['id']!r}", where=source)
        out[item["id"]] = item
    return out


def _chain_task(c: ChainSpec) -> TaskSpec:
    return TaskSpec(
        id=c.id, name=c.name, family="chain", group=c.group, stage=2, business_value=c.business_value,
        business_impact=c.business_impact, description=c.description, kpis=c.kpis,
        primary_metric=c.primary_metric, rule_ids=c.rule_ids, phrasings=c.phrasings,
        context_variants=[], difficulty=c.difficulty, steps=list(c.steps),
    )


def parse_ontology(raw: Any, source: str = "<ontology>") -> Ontology:
    """Validate an already-parsed YAML mapping into an :class:`Ontology`."""
    if not isinstance(raw, dict):
        raise ConfigError("top level must be a mapping", where=source)
    data = dict(raw)
    data["tasks"] = _listed(raw, "tasks", source)
    data["chains"] = _listed(raw, "chains", source)
    try:
        onto = Ontology.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_fmt(e, source)) from None
    digest = hashlib.sha256(json.dumps(raw, sort_keys=True, ensure_ascii=False, default=str).encode())
    onto.version = f"{onto.version}+{digest.hexdigest()[:10]}"
    for cid, c in onto.chains.items():
        onto.tasks[cid] = _chain_task(c)
    return onto


def load_ontology(path: str | Path) -> Ontology:
    """Load and validate an ontology YAML; errors name the file and the key path."""
    return parse_ontology(load_yaml(path), str(path))
