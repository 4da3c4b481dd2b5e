"""Evaluation gates: pass / fail / inconclusive decisions with their evidence.

A gate is a named list of checks over per-sample evaluation records (what ``mixtune eval``
writes, one JSON object per line)::

    {"sample_id", "task_id", "family", "group", "layer", "metrics": {name: float}, "primary": float}

There is one record per (sample, layer), so candidate and champion are paired on
``(sample_id, layer)``. Each check selects a scope ('overall', a task family, a task id or an
evaluation layer) and a metric (``primary`` means the record's ``primary`` field), then applies absolute thresholds to the candidate's mean
and/or a minimum change against the champion judged by a paired bootstrap interval. A delta
check passes only when the whole interval clears the threshold, fails when the whole interval is
below it and is inconclusive otherwise: a noisy improvement is not evidence.

IFEval records (families ``ifeval`` and ``ifeval_zh``) measure general instruction following,
not the domain: 'overall' and the layer scopes leave them out, so they never move the domain
score, and a check reaches them only by naming their family, e.g. the bound on how much base
capability stage 2 may lose: ``{metric: ifeval_prompt_loose, scope: ifeval, min_delta_vs_champion: -0.05}``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import yaml

from mixtune.errors import ConfigError, DataError
from mixtune.eval.matrix import IFEVAL_FAMILIES
from mixtune.jsonl import read_jsonl_objects
from mixtune.release.stats import paired_bootstrap

Status = Literal["pass", "fail", "inconclusive"]
GATE_NAMES = ("validate", "canary")
_SPEC_KEYS = {"metric", "scope", "min", "max", "min_delta_vs_champion", "greater_is_better"}
# Same keys as mixtune.config.GatesConfig, so a gates file can be pasted under `gates:` in a pipeline.
_FILE_KEYS = {*GATE_NAMES, "bootstrap_samples", "confidence", "rollout"}


@dataclass(frozen=True)
class GateSpec:
    """One check. ``min``/``max`` bound the candidate mean; ``min_delta_vs_champion`` bounds the
    paired improvement over the champion (sign flipped when ``greater_is_better`` is False)."""

    metric: str
    scope: str = "overall"
    min: float | None = None
    max: float | None = None
    min_delta_vs_champion: float | None = None
    greater_is_better: bool = True


@dataclass
class CheckResult:
    """Evidence for one threshold of one spec."""

    metric: str
    scope: str
    kind: Literal["min", "max", "delta"]
    threshold: float
    status: Status
    value: float | None = None
    lo: float | None = None
    hi: float | None = None
    n: int = 0
    reason: str = ""


@dataclass
class GateDecision:
    """Outcome of one gate: any failing check fails it, else any inconclusive one makes it inconclusive."""

    gate: str
    status: Status
    checks: list[CheckResult]
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _spec_from_mapping(raw: Any, where: str) -> GateSpec:
    if isinstance(raw, GateSpec):
        return raw
    if not isinstance(raw, dict):
        raise ConfigError("a gate check must be a mapping", where)
    unknown = sorted(set(raw) - _SPEC_KEYS)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} (allowed: {', '.join(sorted(_SPEC_KEYS))})", where)
    if not isinstance(raw.get("metric"), str) or not raw["metric"]:
        raise ConfigError("'metric' is required and must be a string", where)
    if not isinstance(raw.get("scope", "overall"), str):
        raise ConfigError("'scope' must be a string", f"{where}.scope")
    for key in ("min", "max", "min_delta_vs_champion"):
        v = raw.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            raise ConfigError(f"must be a finite number (got {v!r})", f"{where}.{key}")
    if not isinstance(raw.get("greater_is_better", True), bool):
        raise ConfigError("must be true or false", f"{where}.greater_is_better")
    spec = GateSpec(**raw)
    if spec.min is None and spec.max is None and spec.min_delta_vs_champion is None:
        raise ConfigError("a check needs at least one of min, max, min_delta_vs_champion", where)
    if spec.min is not None and spec.max is not None and spec.min > spec.max:
        raise ConfigError(f"min {spec.min} is above max {spec.max}", where)
    return spec


def parse_specs(items: Iterable[Any], where: str = "gate") -> list[GateSpec]:
    """Validate a list of check mappings (or GateSpec objects) into GateSpec objects."""
    if isinstance(items, (str, bytes, dict)) or not isinstance(items, Iterable):
        raise ConfigError("gate checks must be a list", where)
    return [_spec_from_mapping(raw, f"{where}[{i}]") for i, raw in enumerate(items)]


@dataclass
class GateFile:
    """A loaded gates file: checks per gate name plus bootstrap settings."""

    gates: dict[str, list[GateSpec]]
    bootstrap_samples: int = 1000
    confidence: float = 0.95
    rollout: Any = None  # mixtune.config.RolloutConfig: the canary's staged rollout steps and analyses


def load_gate_file(path: str | Path) -> GateFile:
    """Load and strictly validate a gates YAML file.

    The file holds ``validate`` / ``canary`` check lists plus optional ``bootstrap_samples`` and
    ``confidence``, either at the top level or under a ``gates:`` key (so a pipeline YAML works
    too). Unknown keys raise ConfigError naming the file and key path.
    """
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("gates file not found", str(p)) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"not valid YAML: {e}", str(p)) from None
    prefix = str(p)
    if isinstance(data, dict) and "gates" in data:
        data, prefix = data["gates"], f"{p}:gates"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("a gates file must be a mapping", prefix)
    unknown = sorted(set(data) - _FILE_KEYS)
    if unknown:
        raise ConfigError(f"unknown key (allowed: {', '.join(sorted(_FILE_KEYS))})", f"{prefix}:{unknown[0]}")
    gates = {name: parse_specs(data.get(name) or [], f"{prefix}:{name}") for name in GATE_NAMES}
    n_boot = data.get("bootstrap_samples", 1000)
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 100:
        raise ConfigError(f"must be an integer >= 100 (got {n_boot!r})", f"{prefix}:bootstrap_samples")
    conf = data.get("confidence", 0.95)
    if isinstance(conf, bool) or not isinstance(conf, (int, float)) or not 0.5 < conf < 1:
        raise ConfigError(f"must be a number in (0.5, 1) (got {conf!r})", f"{prefix}:confidence")
    rollout = None
    if "rollout" in data:
        from pydantic import ValidationError

        from mixtune.config import RolloutConfig  # why: pulls torch; only rollout gates need it

        try:
            rollout = RolloutConfig.model_validate(data["rollout"] or {})
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(x) for x in err["loc"])
            raise ConfigError(err["msg"], f"{prefix}:rollout" + (f".{loc}" if loc else "")) from None
    return GateFile(gates=gates, bootstrap_samples=n_boot, confidence=float(conf), rollout=rollout)


def load_eval_records(path: str | Path, model: str | None = None) -> list[dict[str, Any]]:
    """Read per-sample evaluation records from JSONL; malformed lines raise DataError with file:line.

    When the file holds several models (a ``model`` field), ``model`` selects one; leaving it out
    is then an error rather than silently mixing two models' scores.
    """
    p = Path(path)
    records = []
    for lineno, rec in read_jsonl_objects(p, "evaluation results file"):
        if "sample_id" not in rec:
            raise DataError("record must be an object with a 'sample_id'", f"{p}:{lineno}")
        records.append(rec)
    models = sorted({str(r["model"]) for r in records if "model" in r})
    if model is not None:
        if model not in models:
            raise DataError(f"no records for model {model!r} (found: {', '.join(models) or 'none'})", str(p))
        return [r for r in records if r.get("model") == model]
    if len(models) > 1:
        raise DataError(f"file holds several models ({', '.join(models)}); choose one", str(p))
    return records


def _in_scope(rec: dict[str, Any], scope: str) -> bool:
    """Whether a record belongs to a check's scope; IFEval records only to their own family."""
    if rec.get("family") in IFEVAL_FAMILIES:
        return scope in (rec.get("family"), rec.get("task_id"))
    return scope == "overall" or scope in (rec.get("family"), rec.get("task_id"), rec.get("layer"))


def _metric_by_sample(
    records: Sequence[dict[str, Any]], spec: GateSpec, side: str
) -> dict[tuple[str, str], float]:
    """Metric values of in-scope records keyed by (sample id, layer); records lacking the metric
    are skipped (metrics such as citation correctness only exist for some tasks)."""
    out: dict[tuple[str, str], float] = {}
    for rec in records:
        if not _in_scope(rec, spec.scope):
            continue
        key = (str(rec["sample_id"]), str(rec.get("layer", "")))
        raw = rec.get("primary") if spec.metric == "primary" else (rec.get("metrics") or {}).get(spec.metric)
        if raw is None:
            continue
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
            raise DataError(f"metric {spec.metric!r} is not a finite number ({raw!r})", f"{side} sample {key[0]}")
        if key in out:
            raise DataError(f"duplicate record for sample {key[0]!r} layer {key[1]!r} in {side} records")
        out[key] = float(raw)
    return out


def _delta_check(
    spec: GateSpec, cand: dict[tuple[str, str], float], champ: dict[tuple[str, str], float], *, n_boot: int, confidence: float, seed: int
) -> CheckResult:
    thr = float(spec.min_delta_vs_champion)  # type: ignore[arg-type]
    base = {"metric": spec.metric, "scope": spec.scope, "kind": "delta", "threshold": thr}
    common = sorted(set(cand) & set(champ))
    if not common:
        return CheckResult(**base, status="inconclusive", reason="no samples scored by both models")
    c = [cand[s] for s in common]
    h = [champ[s] for s in common]
    if not spec.greater_is_better:  # improvement means a lower value: compare champion - candidate
        c, h = h, c
    bs = paired_bootstrap(c, h, n_boot=n_boot, confidence=confidence, seed=seed)
    if bs.lo > thr:
        status, reason = "pass", f"{confidence:.0%} CI above {thr:+g}"
    elif bs.hi < thr:
        status, reason = "fail", f"{confidence:.0%} CI below {thr:+g}"
    else:
        status, reason = "inconclusive", f"{confidence:.0%} CI straddles {thr:+g}"
    return CheckResult(**base, status=status, value=bs.delta, lo=bs.lo, hi=bs.hi, n=bs.n, reason=reason)


def evaluate_gate(
    name: str,
    specs: Sequence[GateSpec | dict[str, Any]],
    candidate_records: Sequence[dict[str, Any]],
    champion_records: Sequence[dict[str, Any]] | None = None,
    *,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    pass_without_champion: bool = False,
    meta: dict[str, Any] | None = None,
) -> GateDecision:
    """Run every check of gate ``name`` and combine them into one decision with evidence.

    Delta checks without champion records are inconclusive (there is nothing to compare against)
    unless ``pass_without_champion`` — e.g. the very first release. A scope/metric with no
    candidate samples fails: a typo must not let a gate through.
    """
    parsed = parse_specs(specs, f"gate {name}")
    if not parsed:
        raise ConfigError(f"gate {name!r} has no checks configured")
    checks: list[CheckResult] = []
    for spec in parsed:
        cand = _metric_by_sample(candidate_records, spec, "candidate")
        if not cand:
            why = "no candidate samples with this metric in scope"
            if spec.metric.startswith("ifeval_") and spec.scope not in IFEVAL_FAMILIES:
                why += f" (IFEval records are in scope {' or '.join(IFEVAL_FAMILIES)} only)"
            for kind, thr in (("min", spec.min), ("max", spec.max), ("delta", spec.min_delta_vs_champion)):
                if thr is not None:
                    checks.append(CheckResult(spec.metric, spec.scope, kind, float(thr), "fail", reason=why))
            continue
        mean = sum(cand.values()) / len(cand)
        if spec.min is not None:
            ok = mean >= spec.min
            checks.append(CheckResult(spec.metric, spec.scope, "min", float(spec.min), "pass" if ok else "fail",
                                      value=mean, n=len(cand), reason=f"mean {'>=' if ok else '<'} {spec.min:g}"))
        if spec.max is not None:
            ok = mean <= spec.max
            checks.append(CheckResult(spec.metric, spec.scope, "max", float(spec.max), "pass" if ok else "fail",
                                      value=mean, n=len(cand), reason=f"mean {'<=' if ok else '>'} {spec.max:g}"))
        if spec.min_delta_vs_champion is not None:
            if champion_records is None:
                status: Status = "pass" if pass_without_champion else "inconclusive"
                checks.append(CheckResult(spec.metric, spec.scope, "delta", float(spec.min_delta_vs_champion),
                                          status, value=None, n=0, reason="no champion to compare against"))
            else:
                champ = _metric_by_sample(champion_records, spec, "champion")
                checks.append(_delta_check(spec, cand, champ, n_boot=n_boot, confidence=confidence, seed=seed))
    statuses = {c.status for c in checks}
    overall: Status = "fail" if "fail" in statuses else "inconclusive" if "inconclusive" in statuses else "pass"
    info = {"n_boot": n_boot, "confidence": confidence, "seed": seed, "has_champion": champion_records is not None}
    return GateDecision(gate=name, status=overall, checks=checks, meta={**info, **(meta or {})})


def append_decision(path: str | Path, decision: GateDecision | dict[str, Any]) -> None:
    """Append one decision (or the registry's recorded, signed form of it) as a JSON line (the
    run's ``gates.jsonl``); earlier lines are never rewritten."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    body = decision if isinstance(decision, dict) else decision.to_dict()
    with p.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(body, ensure_ascii=False, sort_keys=True) + "\n")
        fh.flush()


def read_decisions(path: str | Path) -> list[dict[str, Any]]:
    """All decisions in a gates.jsonl file, oldest first."""
    p = Path(path)
    if not p.is_file():
        raise DataError("gate decisions file not found", str(p))
    out = []
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"invalid JSON: {e.msg}", f"{p}:{lineno}") from None
    return out
