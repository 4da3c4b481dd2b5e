"""Rule sets (versioned YAML data) and the engine that applies them.

One engine serves four callers: data validation (:meth:`RuleEngine.check_batch`), evaluation
format compliance (:meth:`RuleEngine.compliance`), span flags for the safety unlikelihood loss
(:meth:`RuleEngine.flag_spans`) and the gateway guard (:meth:`RuleEngine.passes`).

A rule is ``{id, kind, severity, description, params, applies_when?, opt_in?}``:

* ``applies_when: {input_regex: ..., output_regex: ...}`` — the rule is applicable only when
  every given regex matches the (normalised) input/output, e.g. the LCR consistency rule only
  where the input states HQLA. Inapplicable rules neither pass nor fail.
* ``opt_in: true`` — the rule runs only when named in ``rule_ids`` (e.g. "cite at least one
  document", which only compliance tasks require).
* Groups: ``rule_ids`` may name the prefix of dotted ids — ``numeric_consistency`` selects
  ``numeric_consistency.lcr``, ``numeric_consistency.spread``, ... (one rule per indicator,
  one id in the ontology).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import mixtune.rules.lexicon  # noqa: F401  (registers the lexicon kinds)
from mixtune.errors import ConfigError
from mixtune.rules.checks import CHECKS, Check, Params
from mixtune.rules.normalize import Normalized, normalize

SEVERITIES = ("error", "warning")
_RULE_KEYS = {"id", "kind", "severity", "description", "params", "applies_when", "opt_in"}
_FILE_PARAMS = ("glossary", "schema_file")  # referenced files whose content enters the hash
_EMPTY = Normalized("", "")


@dataclass(frozen=True)
class Failure:
    """One failed rule on one text: a row of the rule report."""

    sample_id: str
    rule_id: str
    severity: str  # "error" | "warning"
    reason: str
    span: tuple[int, int] | None  # [start, end) in ORIGINAL output coordinates


@dataclass(frozen=True)
class Rule:
    """A rule as declared in YAML (params still raw)."""

    id: str
    kind: str
    severity: str = "error"
    description: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    applies_when: dict[str, str] = field(default_factory=dict)
    opt_in: bool = False


class RuleSet:
    """A versioned, validated list of rules loaded from YAML."""

    def __init__(self, declared_version: str, rules: list[Rule], files: dict[str, str], content_hash: str,
                 source: str = "<memory>"):
        self.declared_version = declared_version
        self.rules = rules
        # Referenced files (glossary, schema) are read once at load: an engine built later from
        # this set compiles exactly what the version hash covers, even if the file changed since.
        self.files = files
        self.content_hash = content_hash
        self.source = source
        self.version = f"{declared_version}+{content_hash[:8]}"

    @property
    def ids(self) -> list[str]:
        """Rule ids in declaration order."""
        return [r.id for r in self.rules]

    def groups(self) -> dict[str, list[str]]:
        """Group name → rule ids: ``numeric_consistency.lcr`` belongs to ``numeric_consistency``."""
        out: dict[str, list[str]] = {}
        for r in self.rules:
            if "." in r.id:
                out.setdefault(r.id.split(".", 1)[0], []).append(r.id)
        return out

    def resolve(self, rule_ids: list[str] | tuple[str, ...]) -> list[str]:
        """Expand group names into rule ids (order kept, duplicates dropped); unknown → ConfigError."""
        ids, groups = set(self.ids), self.groups()
        out: list[str] = []
        for rid in rule_ids:
            if rid in ids:
                out.append(rid)
            elif rid in groups:
                out.extend(groups[rid])
            else:
                raise ConfigError(f"unknown rule id {rid!r}; rule set has {self.ids} and groups {sorted(groups)}",
                                  self.source)
        return list(dict.fromkeys(out))

    def known(self, rule_id: str) -> bool:
        """True for a rule id or a group name of this set."""
        return rule_id in self.ids or rule_id in self.groups()

    def __getitem__(self, rule_id: str) -> Rule:
        for r in self.rules:
            if r.id == rule_id:
                return r
        raise KeyError(rule_id)

    @classmethod
    def load(cls, path: str | Path) -> RuleSet:
        """Load and validate a rules YAML file; errors name the file and the rule."""
        path = Path(path)
        try:
            raw = path.read_bytes()
            data = yaml.safe_load(raw.decode("utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read rule set: {e}", str(path)) from None
        return cls.from_dict(data, base_dir=path.parent, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, *, base_dir: str | Path = ".", source: str = "<memory>") -> RuleSet:
        """Validate an already-parsed rule set (``{version, rules: [...]}``)."""
        base_dir = Path(base_dir)
        if not isinstance(data, dict):
            raise ConfigError("rule set must be a mapping with 'version' and 'rules'", source)
        unknown = set(data) - {"version", "rules", "description"}
        if unknown:
            raise ConfigError(f"unknown top-level key(s) {sorted(unknown)}", source)
        version = data.get("version")
        if not isinstance(version, str) or not version:
            raise ConfigError("'version' must be a non-empty string", source)
        items = data.get("rules")
        if not isinstance(items, list) or not items:
            raise ConfigError("'rules' must be a non-empty list", source)
        rules: list[Rule] = []
        seen: set[str] = set()
        for i, item in enumerate(items):
            rule = _parse_rule(item, i, source)
            if rule.id in seen:
                raise ConfigError(f"duplicate rule id {rule.id!r}", source)
            seen.add(rule.id)
            rules.append(rule)
        h = hashlib.sha256(json.dumps(data, sort_keys=True, ensure_ascii=False, default=str).encode())
        files: dict[str, str] = {}
        for r in rules:  # a glossary edit changes behaviour, so it changes the version
            for key in _FILE_PARAMS:
                ref = r.params.get(key)
                if isinstance(ref, str) and ref not in files:
                    try:
                        files[ref] = (base_dir / ref).read_text(encoding="utf-8")
                    except (OSError, UnicodeDecodeError) as e:
                        raise ConfigError(f"rule {r.id!r}: cannot read {key} {ref!r}: {e}", source) from None
                    h.update(ref.encode() + b"\0" + files[ref].encode())
        rs = cls(version, rules, files, h.hexdigest(), source)
        RuleEngine(rs)  # compile now so every param error surfaces at load time
        return rs


def _parse_rule(item: Any, i: int, source: str) -> Rule:
    if not isinstance(item, dict):
        raise ConfigError(f"rules[{i}] must be a mapping", source)
    rid = item.get("id")
    if not isinstance(rid, str) or not rid:
        raise ConfigError(f"rules[{i}] needs a non-empty string 'id'", source)
    unknown = set(item) - _RULE_KEYS
    if unknown:
        raise ConfigError(f"rule {rid!r}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_RULE_KEYS)}", source)
    kind = item.get("kind")
    if kind not in CHECKS:
        raise ConfigError(f"rule {rid!r}: unknown kind {kind!r}; allowed: {sorted(CHECKS)}", source)
    sev = item.get("severity", "error")
    if sev not in SEVERITIES:
        raise ConfigError(f"rule {rid!r}: severity must be one of {SEVERITIES}, got {sev!r}", source)
    when = item.get("applies_when") or {}
    if not isinstance(when, dict) or set(when) - {"input_regex", "output_regex"} or not all(
        isinstance(v, str) for v in when.values()
    ):
        raise ConfigError(f"rule {rid!r}: applies_when takes input_regex/output_regex strings", source)
    params = item.get("params") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"rule {rid!r}: params must be a mapping", source)
    opt_in = item.get("opt_in", False)
    if not isinstance(opt_in, bool):
        raise ConfigError(f"rule {rid!r}: opt_in must be true or false", source)
    desc = item.get("description", "")
    return Rule(rid, kind, sev, str(desc), params, when, opt_in)


class _Compiled:
    __slots__ = ("rule", "check", "when_in", "when_out")

    def __init__(self, rule: Rule, check: Check, when_in: re.Pattern[str] | None, when_out: re.Pattern[str] | None):
        self.rule, self.check, self.when_in, self.when_out = rule, check, when_in, when_out


class RuleEngine:
    """Compiles a :class:`RuleSet` once (regexes, automata, schemas) and checks texts."""

    def __init__(self, ruleset: RuleSet):
        self.ruleset = ruleset
        self.version = ruleset.version
        self._rules: dict[str, _Compiled] = {}
        for r in ruleset.rules:
            p = Params(r.id, r.params, ruleset.source, ruleset.files)
            check = CHECKS[r.kind](p)
            p.finish()
            when = {k: p.regex(v, f"applies_when.{k}") for k, v in r.applies_when.items()}
            self._rules[r.id] = _Compiled(r, check, when.get("input_regex"), when.get("output_regex"))
        self._default = [c for c in self._rules.values() if not c.rule.opt_in]
        self._selection: dict[tuple[str, ...], list[_Compiled]] = {}

    def rule_ids(self, kinds: str | Iterable[str] | None = None) -> list[str]:
        """Ids of the rules of ``kinds`` (one kind or several; all rules when ``None``), in file order."""
        if kinds is None:
            return [r.id for r in self.ruleset.rules]
        wanted = {kinds} if isinstance(kinds, str) else set(kinds)
        unknown = sorted(wanted - set(CHECKS))
        if unknown:  # a typo would otherwise silently select nothing
            raise ValueError(f"unknown rule kinds {unknown}; allowed: {sorted(CHECKS)}")
        return [r.id for r in self.ruleset.rules if r.kind in wanted]

    def _select(self, rule_ids: list[str] | tuple[str, ...] | None) -> list[_Compiled]:
        if rule_ids is None:
            return self._default
        key = tuple(rule_ids)
        sel = self._selection.get(key)
        if sel is None:
            sel = self._selection[key] = [self._rules[r] for r in self.ruleset.resolve(key)]
        return sel

    def _run(self, output: str, rule_ids, input_text: str, sample_id: str) -> tuple[list[Failure], int]:
        """Failures and the number of applicable rules."""
        out = normalize(output)
        inp: Normalized | None = None
        failures: list[Failure] = []
        applicable = 0
        for c in self._select(rule_ids):
            if c.when_in is not None or c.check.needs_input:
                if inp is None:  # normalise the input lazily: most rules never look at it
                    inp = normalize(input_text) if input_text else _EMPTY
                if c.when_in is not None and not c.when_in.search(inp.text):
                    continue
            if c.when_out is not None and not c.when_out.search(out.text):
                continue
            applicable += 1
            for reason, span in c.check.run(out, inp):
                failures.append(Failure(sample_id, c.rule.id, c.rule.severity, reason,
                                        out.span_to_orig(*span) if span is not None else None))
        return failures, applicable

    def check(self, output: str, *, rule_ids: list[str] | None = None, input_text: str = "",
              sample_id: str = "") -> list[Failure]:
        """All failures of the selected (default: non-opt-in) applicable rules on ``output``."""
        return self._run(output, rule_ids, input_text, sample_id)[0]

    def passes(self, output: str, *, rule_ids: list[str] | None = None, input_text: str = "") -> bool:
        """True when no rule of severity ``error`` fails (warnings do not block)."""
        return not any(f.severity == "error" for f in self._run(output, rule_ids, input_text, "")[0])

    def compliance(self, output: str, *, rule_ids: list[str] | None = None, input_text: str = "") -> float:
        """Fraction of applicable rules with no failure, in [0, 1] (1.0 when none applies)."""
        failures, applicable = self._run(output, rule_ids, input_text, "")
        if applicable == 0:
            return 1.0
        return (applicable - len({f.rule_id for f in failures})) / applicable

    def flag_spans(self, text: str, kinds: tuple[str, ...] | list[str] = ("sensitive_words", "pii", "terminology"),
                   ) -> list[tuple[int, int, str]]:
        """Spans ``(start, end, rule_id)`` in original coordinates violated by rules of ``kinds``.

        Used by the safety unlikelihood loss: it needs only output-side, span-carrying rules, so
        rules that need the input or have an ``applies_when`` are skipped.
        """
        nt = normalize(text)
        spans: list[tuple[int, int, str]] = []
        for c in self._rules.values():
            if c.rule.kind not in kinds or c.check.needs_input or c.when_in is not None:
                continue
            if c.when_out is not None and not c.when_out.search(nt.text):
                continue
            for _reason, span in c.check.run(nt, None):
                if span is not None:
                    s, e = nt.span_to_orig(*span)
                    spans.append((s, e, c.rule.id))
        return sorted(set(spans))

    def check_batch(self, items: list[tuple[str, str, str, list[str] | None]]) -> list[list[Failure]]:
        """Check many ``(sample_id, input_text, output, rule_ids)`` items; one list per item."""
        run = self._run
        return [run(output, rule_ids, input_text, sid)[0] for sid, input_text, output, rule_ids in items]
