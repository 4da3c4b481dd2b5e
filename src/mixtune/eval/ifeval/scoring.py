"""IFEval scoring: strict and loose verdicts per instruction, and the four aggregates.

Strict mode checks the response as written. Loose mode (as the original) accepts an
instruction when any of eight variants passes: the response with its first line, last line or
both removed, each with and without ``*`` characters. An empty (whitespace) response or variant
never passes. Aggregates are computed exactly as IFEval reports them: prompt level is the share
of prompts whose instructions all pass, instruction level the share of all instructions.

Randomness. The original checker decides some instructions with an unseeded random draw:
``keywords:letter_frequency`` with a ``letter`` that is not one ASCII letter counts a random
letter, and ``language:response_language``, ``change_case:english_capital`` and
``change_case:english_lowercase`` end in ``langdetect``, which samples at random.
:func:`~mixtune.eval.ifeval.checkers.random_in_reference` names them. Those reference verdicts
cannot be reproduced by any scorer, so conformance is measured on everything else
(:func:`deterministic_part`). Here the letter comes from a seeded RNG and langdetect is seeded,
so a run is reproducible; :data:`DEFAULT_SEED` is an arbitrary value, not one tuned to agree
with any reference file.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mixtune.errors import DataError
from mixtune.eval.ifeval.checkers import INSTRUCTIONS, random_in_reference, validate_kwargs
from mixtune.eval.ifeval.text import is_chinese_text
from mixtune.jsonl import read_jsonl_objects

LANGUAGES = ("auto", "en", "zh")
#: Seed for IFEval's random-letter fallback (see ``checkers._prepare_letter``), for
#: reproducibility only: the reference drew its letters unseeded, so no seed "matches" it.
DEFAULT_SEED = 0
AGGREGATE_KEYS = (
    "prompt_level_strict",
    "instruction_level_strict",
    "prompt_level_loose",
    "instruction_level_loose",
)


@dataclass
class PromptVerdict:
    """Verdicts for one prompt; ``language`` is the counting flavour actually used."""

    key: object
    instruction_id_list: list[str]
    strict_follow_list: list[bool]
    loose_follow_list: list[bool]
    language: str = "en"

    @property
    def strict_follow_all(self) -> bool:
        return all(self.strict_follow_list)

    @property
    def loose_follow_all(self) -> bool:
        return all(self.loose_follow_list)

    def to_dict(self) -> dict:
        """The JSONL record written by ``mixtune ifeval`` (reference-file field names)."""
        return {
            "key": self.key,
            "instruction_id_list": list(self.instruction_id_list),
            "strict_follow_all": self.strict_follow_all,
            "strict_follow_list": list(self.strict_follow_list),
            "loose_follow_all": self.loose_follow_all,
            "loose_follow_list": list(self.loose_follow_list),
            "language": self.language,
        }


@dataclass
class IFEvalResult:
    """Per-prompt verdicts in input order, plus the four IFEval aggregates."""

    verdicts: list[PromptVerdict]
    aggregates: dict[str, float] = field(default_factory=dict)


def loose_variants(response: str) -> list[str]:
    """The eight response variants loose scoring tries, in the original's order."""
    lines = response.split("\n")
    remove_first = "\n".join(lines[1:]).strip()
    remove_last = "\n".join(lines[:-1]).strip()
    remove_both = "\n".join(lines[1:-1]).strip()
    return [
        response,
        response.replace("*", ""),
        remove_first,
        remove_last,
        remove_both,
        remove_first.replace("*", ""),
        remove_last.replace("*", ""),
        remove_both.replace("*", ""),
    ]


def resolve_language(prompt: Mapping, language: str = "auto") -> str:
    """Pick ``en`` or ``zh`` counting: forced by ``language``, else from kwargs or prompt text."""
    if language not in LANGUAGES:
        raise DataError(f"language must be one of {list(LANGUAGES)}, got {language!r}")
    if language != "auto":
        return language
    for kw in prompt.get("kwargs") or []:
        if str((kw or {}).get("language") or "").lower().startswith("zh"):
            return "zh"
    return "zh" if is_chinese_text(str(prompt.get("prompt", ""))) else "en"


def _validate_prompt(prompt: Mapping, where: str) -> list[dict]:
    if not isinstance(prompt, Mapping):
        raise DataError("a prompt record must be a JSON object", where=where)
    for name in ("key", "prompt", "instruction_id_list"):
        if name not in prompt:
            raise DataError(f"prompt record lacks {name!r}", where=where)
    if not isinstance(prompt["prompt"], str):
        raise DataError("'prompt' must be a string", where=where)
    ids = prompt["instruction_id_list"]
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise DataError("'instruction_id_list' must be a list of strings", where=where)
    kwargs = prompt.get("kwargs")
    kwargs = [{} for _ in ids] if kwargs is None else kwargs
    if not isinstance(kwargs, list) or len(kwargs) != len(ids):
        raise DataError(f"'kwargs' must be a list with one object per instruction ({len(ids)})", where=where)
    return [validate_kwargs(iid, kw, f"{where} instruction {iid}") for iid, kw in zip(ids, kwargs)]


def _prepared(spec, kw: dict, lang: str, seed: int, key: object, index: int, mode: str) -> dict:
    if spec.prepare is None:
        return kw
    # One draw per (prompt, instruction, mode), as the original builds each checker once per
    # mode; string seeds hash with SHA-512, so this is stable across processes and orderings.
    return spec.prepare(kw, lang, random.Random(f"{seed}:{key}:{index}:{mode}"))


def score_prompt(
    prompt: Mapping,
    response: str,
    language: str = "auto",
    where: str = "",
    seed: int = DEFAULT_SEED,
) -> PromptVerdict:
    """Score one response against one prompt's instructions, strict and loose.

    ``seed`` only matters for instructions whose original semantics are random (a
    ``keywords:letter_frequency`` letter that is not an ASCII letter, on English prompts).
    """
    if not where:
        where = f"prompt key {prompt.get('key')!r}" if isinstance(prompt, Mapping) else "prompt"
    kwargs = _validate_prompt(prompt, where)
    if not isinstance(response, str):
        raise DataError("response must be a string", where=where)
    lang = resolve_language(prompt, language)
    # Checks are pure, so identical variants (no '*' in the response, a one-line response)
    # need checking once: dict.fromkeys dedupes in order and any() gives the same verdict.
    variants = list(dict.fromkeys(loose_variants(response)))
    strict, loose = [], []
    key = prompt["key"]
    for i, (iid, kw) in enumerate(zip(prompt["instruction_id_list"], kwargs)):
        spec = INSTRUCTIONS[iid]
        kw_s = _prepared(spec, kw, lang, seed, key, i, "strict")
        kw_l = _prepared(spec, kw, lang, seed, key, i, "loose")
        strict.append(bool(response.strip()) and spec.check(response, kw_s, lang))
        loose.append(any(v.strip() and spec.check(v, kw_l, lang) for v in variants))
    return PromptVerdict(prompt["key"], list(prompt["instruction_id_list"]), strict, loose, lang)


def aggregate(verdicts: Sequence[PromptVerdict]) -> dict[str, float]:
    """The four IFEval accuracies (0.0 for an empty input rather than a division error)."""
    out: dict[str, float] = {}
    for mode in ("strict", "loose"):
        lists = [getattr(v, f"{mode}_follow_list") for v in verdicts]
        n_inst = sum(len(x) for x in lists)
        out[f"prompt_level_{mode}"] = sum(all(x) for x in lists) / len(lists) if lists else 0.0
        out[f"instruction_level_{mode}"] = sum(sum(x) for x in lists) / n_inst if n_inst else 0.0
    return {k: out[k] for k in AGGREGATE_KEYS}


def deterministic_part(prompts: Sequence[Mapping], verdicts: Sequence[PromptVerdict]) -> list[PromptVerdict]:
    """``verdicts`` without the instructions the original checker decides at random.

    ``prompts`` are the IFEval prompt dicts the verdicts belong to (same order). Each verdict
    keeps its other instructions; a prompt left with none is dropped, so :func:`aggregate` of
    the result is the conformance measure (prompt level: all remaining instructions pass).
    """
    if len(prompts) != len(verdicts):
        raise ValueError(f"{len(prompts)} prompts but {len(verdicts)} verdicts")
    out = []
    for p, v in zip(prompts, verdicts):
        kwargs = p.get("kwargs") or [{} for _ in v.instruction_id_list]
        keep = [i for i, (iid, kw) in enumerate(zip(v.instruction_id_list, kwargs)) if not random_in_reference(iid, kw)]
        if keep:
            out.append(
                PromptVerdict(
                    v.key,
                    [v.instruction_id_list[i] for i in keep],
                    [v.strict_follow_list[i] for i in keep],
                    [v.loose_follow_list[i] for i in keep],
                    v.language,
                )
            )
    return out


def _where(i: int, p: object) -> str:
    key = p.get("key") if isinstance(p, Mapping) else None
    return f"prompt #{i + 1} (key {key!r})"


def score_responses(
    prompts: Sequence[Mapping],
    responses: Sequence[str] | Mapping[str, str],
    language: str = "auto",
    seed: int = DEFAULT_SEED,
) -> IFEvalResult:
    """Score responses for IFEval-format prompt dicts.

    ``responses`` is either a list aligned with ``prompts`` or, as in the original tool, a
    mapping from prompt text to response. ``language`` is ``"auto"`` (Chinese counting for
    Chinese prompts, the original English behaviour otherwise), ``"en"`` or ``"zh"``.
    ``seed`` fixes the original's random-letter fallback (see :data:`DEFAULT_SEED`); it cannot
    make those verdicts agree with a reference run, see :func:`deterministic_part`.
    """
    resolve_language({}, language)  # validate early, before any work
    if isinstance(responses, Mapping):
        aligned = []
        for i, p in enumerate(prompts):
            text = p.get("prompt") if isinstance(p, Mapping) else None
            if text not in responses:
                raise DataError("no response for this prompt", where=f"prompt #{i + 1}")
            aligned.append(responses[text])
    else:
        aligned = list(responses)
        if len(aligned) != len(prompts):
            raise DataError(f"{len(prompts)} prompts but {len(aligned)} responses")
    verdicts = [
        score_prompt(p, r, language, where=_where(i, p), seed=seed)
        for i, (p, r) in enumerate(zip(prompts, aligned))
    ]
    return IFEvalResult(verdicts, aggregate(verdicts))


# --------------------------------------------------------------------- files
def read_jsonl(path: str | Path) -> list[tuple[int, dict]]:
    """``(line number, object)`` per non-blank line; bad JSON raises naming file and line."""
    return read_jsonl_objects(path)


def _read_prompts(path: str | Path) -> list[tuple[int, dict]]:
    rows = read_jsonl(path)
    for lineno, obj in rows:
        _validate_prompt(obj, f"{path}:{lineno}")
    return rows


def load_prompts(path: str | Path) -> list[dict]:
    """Read and validate an IFEval ``input_data.jsonl``."""
    return [obj for _, obj in _read_prompts(path)]


def load_responses(path: str | Path) -> dict[str, str]:
    """Read a ``{"prompt", "response"}`` JSONL into prompt text -> response (last one wins)."""
    out: dict[str, str] = {}
    for lineno, obj in read_jsonl(path):
        p, r = obj.get("prompt"), obj.get("response")
        if not isinstance(p, str) or not isinstance(r, str):
            raise DataError("needs string fields 'prompt' and 'response'", where=f"{path}:{lineno}")
        out[p] = r
    return out


def score_files(
    input_data: str | Path,
    responses: str | Path,
    language: str = "auto",
    seed: int = DEFAULT_SEED,
) -> IFEvalResult:
    """Score a responses file against a prompts file, matching responses by prompt text."""
    rows = _read_prompts(input_data)
    by_prompt = load_responses(responses)
    for lineno, p in rows:
        if p["prompt"] not in by_prompt:
            raise DataError(
                f"no response in {responses} for the prompt with key {p['key']!r}",
                where=f"{input_data}:{lineno}",
            )
    return score_responses([p for _, p in rows], by_prompt, language, seed)


def write_verdicts(result: IFEvalResult, path: str | Path) -> None:
    """Write one JSON line per prompt (key, strict/loose follow_all and follow_list)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for v in result.verdicts:
            fh.write(json.dumps(v.to_dict(), ensure_ascii=False) + "\n")
