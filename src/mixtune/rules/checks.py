"""Built-in rule kinds: format and numeric checks, plus the check base class and registry.

A check is compiled once from its rule's params (bad params raise :class:`ConfigError` naming the
rule) and then called per text. It sees :class:`Normalized` texts and returns ``(reason, span)``
hits with spans on the NORMALISED output; the engine maps them to original coordinates.
Regexes are therefore written against normalised text (half-width ``=%,:()``), while literal
markers and word lists are normalised on load.
Lexicon-based kinds (terminology, sensitive words, uncertainty, citations, PII) live in
:mod:`mixtune.rules.lexicon`.
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar

import jsonschema

from mixtune.errors import ConfigError
from mixtune.rules.normalize import Normalized, normalize_text
from mixtune.rules.regex_safety import UnsafeRegex, check_regex_safety
from mixtune.rules.safe_eval import SafeEvalError, compile_expr

Hit = tuple[str, "tuple[int, int] | None"]
MAX_HITS = 20  # per rule and text: a pathological output must not produce a million rows

# Numbers as written in outputs: optional sign, optional thousands separators, decimals. The
# lookbehind makes a match start only at the beginning of a digit run: without it an unanchored
# pattern such as "{num}bp" retries at every digit of a long run (quadratic on hostile input).
NUM = r"(?<![\d.])[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"

CHECKS: dict[str, type[Check]] = {}


def register(kind: str):
    """Class decorator adding a check to the registry under ``kind``."""

    def deco(cls: type[Check]) -> type[Check]:
        cls.kind = kind
        CHECKS[kind] = cls
        return cls

    return deco


class Params:
    """Typed access to a rule's params that fails with the rule id and lists unknown keys."""

    def __init__(self, rule_id: str, params: dict[str, Any], where: str, files: dict[str, str] | None = None):
        if not isinstance(params, dict):
            raise ConfigError(f"rule {rule_id!r}: params must be a mapping", where)
        self.rule_id, self.raw, self.where, self.used = rule_id, params, where, set()
        self.files = files or {}

    def read_file(self, ref: str, what: str) -> str:
        """Text of a referenced file from the rule set's load-time snapshot (see RuleSet)."""
        if ref not in self.files:
            raise self.fail(f"cannot read {what} {ref!r} (not loaded with the rule set)")
        return self.files[ref]

    def fail(self, msg: str) -> ConfigError:
        return ConfigError(f"rule {self.rule_id!r}: {msg}", self.where)

    def get(self, name: str, types: type | tuple[type, ...], default: Any = ..., *, required=False) -> Any:
        self.used.add(name)
        if name not in self.raw:
            if required or default is ...:
                raise self.fail(f"missing required param {name!r}")
            return default
        v = self.raw[name]
        tt = types if isinstance(types, tuple) else (types,)
        if not isinstance(v, tt) or (isinstance(v, bool) and bool not in tt):
            names = "/".join(t.__name__ for t in tt)
            raise self.fail(f"param {name!r} must be {names}, got {type(v).__name__}")
        return v

    def regex(self, pattern: str, name: str, flags: int = 0) -> re.Pattern[str]:
        """Compile a user regex; refuse invalid ones and ones that can backtrack catastrophically."""
        try:
            rx = re.compile(pattern.replace("{num}", NUM), flags)
        except re.error as e:
            raise self.fail(f"param {name!r} is not a valid regex: {e}") from None
        try:  # rules run on every output: a pattern that can hang for seconds is refused up front
            check_regex_safety(rx.pattern, flags)
        except UnsafeRegex as e:
            raise self.fail(f"param {name!r} regex {pattern!r} can take exponential time: {e}; "
                            "rewrite it without nested or overlapping repetition") from None
        return rx

    def finish(self) -> None:
        unknown = set(self.raw) - self.used
        if unknown:
            raise self.fail(f"unknown param(s) {sorted(unknown)}; allowed: {sorted(self.used)}")


class Check:
    """Base class: subclasses parse params in ``__init__`` and implement :meth:`run`."""

    kind: ClassVar[str] = ""
    needs_input: ClassVar[bool] = False

    def __init__(self, p: Params):
        self.rule_id = p.rule_id

    def run(self, out: Normalized, inp: Normalized | None) -> list[Hit]:
        """Return ``(reason, span_on_normalised_output | None)`` for each violation."""
        raise NotImplementedError


def parse_number(s: str) -> float:
    """Parse a number matched by :data:`NUM` (thousands separators, unicode minus)."""
    return float(s.replace(",", "").replace("−", "-"))


def _group(m: re.Match[str]) -> tuple[str, tuple[int, int]]:
    """The value of a match: group ``v`` if named, else group 1, else the whole match."""
    idx: int | str = "v" if "v" in m.re.groupindex else (1 if m.re.groups else 0)
    return m.group(idx), m.span(idx)


_FLAGS = {"IGNORECASE": re.IGNORECASE, "MULTILINE": re.MULTILINE, "DOTALL": re.DOTALL}


@register("regex")
class RegexCheck(Check):
    """``pattern`` must match (``mode: must_match``) or must not (``mode: must_not_match``)."""

    def __init__(self, p: Params):
        super().__init__(p)
        self.mode = p.get("mode", str, "must_match")
        if self.mode not in ("must_match", "must_not_match"):
            raise p.fail(f"mode must be must_match or must_not_match, got {self.mode!r}")
        flags = 0
        for f in p.get("flags", list, []):
            if f not in _FLAGS:
                raise p.fail(f"unknown regex flag {f!r}; allowed: {sorted(_FLAGS)}")
            flags |= _FLAGS[f]
        self.fullmatch = p.get("fullmatch", bool, False)
        self.pattern = p.regex(p.get("pattern", str, required=True), "pattern", flags)

    def run(self, out: Normalized, inp: Normalized | None) -> list[Hit]:
        if self.mode == "must_match":
            m = self.pattern.fullmatch(out.text) if self.fullmatch else self.pattern.search(out.text)
            return [] if m else [(f"does not match required pattern {self.pattern.pattern!r}", None)]
        hits: list[Hit] = []
        for m in self.pattern.finditer(out.text):
            hits.append((f"matches forbidden pattern: {m.group()[:40]!r}", m.span()))
            if len(hits) >= MAX_HITS:
                break
        return hits


@register("json_schema")
class JsonSchemaCheck(Check):
    """Output (optionally inside a ```json fence) parses as JSON and validates against a schema."""

    _FENCE = re.compile(r"```(?:json)?\s*\n?(.*?)```", re.DOTALL)

    def __init__(self, p: Params):
        super().__init__(p)
        schema = p.get("schema", dict, None)
        schema_file = p.get("schema_file", str, None)
        if (schema is None) == (schema_file is None):
            raise p.fail("give exactly one of 'schema' or 'schema_file'")
        if schema_file is not None:
            try:
                schema = json.loads(p.read_file(schema_file, "schema_file"))
            except ValueError as e:
                raise p.fail(f"schema_file {schema_file!r} is not valid JSON: {e}") from None
        cls = jsonschema.validators.validator_for(schema)
        try:
            cls.check_schema(schema)
        except jsonschema.SchemaError as e:
            raise p.fail(f"invalid JSON schema: {e.message}") from None
        self.validator = cls(schema)

    def run(self, out: Normalized, inp: Normalized | None) -> list[Hit]:
        text = out.text
        m = self._FENCE.search(text)
        body, offset = (m.group(1), m.start(1)) if m else (text, 0)
        try:
            doc = json.loads(body)
        except RecursionError:  # "[[[[…" nested beyond the interpreter's limit
            return [("output JSON is nested too deeply", None)]
        except ValueError as e:
            pos = offset + getattr(e, "pos", 0)
            return [(f"output is not valid JSON: {getattr(e, 'msg', e)}", (pos, min(pos + 1, len(text))))]
        hits: list[Hit] = []
        for err in sorted(self.validator.iter_errors(doc), key=lambda x: list(x.path))[:MAX_HITS]:
            path = "/".join(str(x) for x in err.path) or "<root>"
            hits.append((f"JSON schema violation at {path}: {err.message[:200]}", None))
        return hits


@register("required_sections")
class RequiredSectionsCheck(Check):
    """Every marker in ``sections`` appears; with ``ordered: true`` in the listed order."""

    def __init__(self, p: Params):
        super().__init__(p)
        secs = p.get("sections", list, required=True)
        if not secs or not all(isinstance(s, str) and s for s in secs):
            raise p.fail("param 'sections' must be a non-empty list of strings")
        self.sections = [normalize_text(s) for s in secs]
        self.ordered = p.get("ordered", bool, False)

    def run(self, out: Normalized, inp: Normalized | None) -> list[Hit]:
        text, hits, pos = out.text, [], 0
        for sec in self.sections:
            i = text.find(sec, pos if self.ordered else 0)
            if i >= 0:
                pos = i + len(sec)
                continue
            j = text.find(sec)
            if j >= 0:  # present, but before the previous section
                hits.append((f"section {sec!r} is out of order", (j, j + len(sec))))
            else:
                hits.append((f"missing required section {sec!r}", None))
        return hits


@register("length")
class LengthCheck(Check):
    """Normalised length (zero-width padding does not count) within ``[min, max]`` characters."""

    def __init__(self, p: Params):
        super().__init__(p)
        self.min = p.get("min", int, 0)
        self.max = p.get("max", int, None)
        if self.min < 0 or (self.max is not None and self.max < self.min):
            raise p.fail("need 0 <= min <= max")

    def run(self, out: Normalized, inp: Normalized | None) -> list[Hit]:
        n = len(out.text.strip())
        if n < self.min:
            return [(f"length {n} is below the minimum {self.min}", None)]
        if self.max is not None and n > self.max:
            return [(f"length {n} exceeds the maximum {self.max}", (self.max, len(out.text)))]
        return []


@register("numeric_precision")
class NumericPrecisionCheck(Check):
    """Numbers captured by each ``patterns[i].regex`` have exactly ``decimals`` decimal places.

    ``ignore_regex`` exempts stretches such as stated thresholds (``不低于100%``).
    """

    def __init__(self, p: Params):
        super().__init__(p)
        self.patterns: list[tuple[str, re.Pattern[str], int]] = []
        for i, spec in enumerate(p.get("patterns", list, required=True)):
            if not isinstance(spec, dict) or set(spec) - {"regex", "decimals", "label"} or "regex" not in spec:
                raise p.fail(f"patterns[{i}] must be a mapping with regex, decimals and optional label")
            dec = spec.get("decimals", 0)
            if not isinstance(dec, int) or isinstance(dec, bool) or not 0 <= dec <= 10:
                raise p.fail(f"patterns[{i}].decimals must be an integer 0..10")
            label = str(spec.get("label", f"pattern {i}"))
            self.patterns.append((label, p.regex(spec["regex"], f"patterns[{i}].regex"), dec))
        ign = p.get("ignore_regex", str, None)
        self.ignore = p.regex(ign, "ignore_regex") if ign else None

    def run(self, out: Normalized, inp: Normalized | None) -> list[Hit]:
        text = out.text
        ignored = [m.span() for m in self.ignore.finditer(text)] if self.ignore else []
        hits: list[Hit] = []
        for label, rx, dec in self.patterns:
            for m in rx.finditer(text):
                value, (s, e) = _group(m)
                if any(a <= s and e <= b for a, b in ignored):
                    continue
                got = len(value.split(".", 1)[1]) if "." in value else 0
                if got != dec:
                    hits.append((f"{label} {value!r} has {got} decimal(s), expected {dec}", (s, e)))
                    if len(hits) >= MAX_HITS:
                        return hits
        return hits


@register("numeric_consistency")
class NumericConsistencyCheck(Check):
    """Values extracted by regex from input and output satisfy a safe expression.

    ``inputs`` / ``outputs`` map a name to a regex whose group ``v`` (or group 1) captures a
    number; ``{num}`` in a regex expands to the number pattern. The first match is used.
    """

    needs_input = True

    def __init__(self, p: Params):
        super().__init__(p)
        self.inputs = self._extractors(p, "inputs")
        self.outputs = self._extractors(p, "outputs")
        if not self.outputs:
            raise p.fail("param 'outputs' must name at least one value")
        names = set(self.inputs) | set(self.outputs)
        if set(self.inputs) & set(self.outputs):
            raise p.fail(f"names used in both inputs and outputs: {sorted(set(self.inputs) & set(self.outputs))}")
        src = p.get("expr", str, required=True)
        try:
            self.expr = compile_expr(src, names)
        except SafeEvalError as e:
            raise p.fail(f"bad expr: {e.message}") from None
        self.needs_input = bool(self.inputs)

    @staticmethod
    def _extractors(p: Params, key: str) -> dict[str, re.Pattern[str]]:
        raw = p.get(key, dict, {})
        out = {}
        for name, rx in raw.items():
            if not isinstance(name, str) or not name.isidentifier() or not isinstance(rx, str):
                raise p.fail(f"{key}: {name!r} must be an identifier mapped to a regex string")
            out[name] = p.regex(rx, f"{key}.{name}")
        return out

    def run(self, out: Normalized, inp: Normalized | None) -> list[Hit]:
        env: dict[str, float] = {}
        spans: list[tuple[int, int]] = []
        missing: list[str] = []
        for where, text, extractors in (("input", inp.text if inp else "", self.inputs), ("output", out.text, self.outputs)):
            for name, rx in extractors.items():
                m = rx.search(text)
                if m is None:
                    missing.append(f"{name!r} not found in {where}")
                    continue
                value, span = _group(m)
                try:
                    env[name] = parse_number(value)
                except ValueError:
                    missing.append(f"{name!r} in {where} is not a number: {value!r}")
                    continue
                if where == "output":
                    spans.append(span)
        span = (min(s for s, _ in spans), max(e for _, e in spans)) if spans else None
        if missing:
            return [("missing value(s): " + "; ".join(missing), span)]
        try:
            ok = self.expr.evaluate(env)
        except SafeEvalError as e:
            return [(f"cannot check {self.expr.source!r}: {e.message}", span)]
        if ok:
            return []
        shown = ", ".join(f"{k}={v:g}" for k, v in env.items())
        return [(f"inconsistent: {self.expr.source} is false for {shown}", span)]
