"""Export a validated, reviewed split for other trainers: LLaMA-Factory, axolotl, ShareGPT, Alpaca.

Only samples mixtune itself would vouch for leave: rule-checked (``ruleset_version`` set) with no
blocking failure, ``approved`` (expert or the generator's auto-approval; with ``review_decisions``
from the review store, decisions made after the build count) and in the requested split. Every
record keeps its sample ``id`` and ``task_id`` so ``mixtune trace --sample-id`` still finds its
lineage; ``export_manifest.json`` records what was left out and why.

Files (``<name>`` is ``mixtune_<split>``):

- ``alpaca``: ``<name>.jsonl`` with ``instruction, input, output, system, history`` (earlier turns
  of a multi-turn chain as ``[[user, assistant], ...]``, as LLaMA-Factory's Alpaca reader takes them);
- ``sharegpt``: ``<name>.jsonl`` with ``conversations`` of ``{from: system|human|gpt, value}``;
- ``llamafactory``: the ShareGPT file plus ``dataset_info.json`` declaring it;
- ``axolotl``: ``<name>.jsonl`` with OpenAI-style ``messages`` plus ``axolotl_datasets.yaml``, a
  ``datasets:`` entry (``type: chat_template``) to paste into an axolotl config.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mixtune.data.io import iter_samples, write_json, write_jsonl
from mixtune.data.schema import ReviewDecision, Sample
from mixtune.errors import DataError
from mixtune.jsonl import sha256_file

FORMATS = ("llamafactory", "axolotl", "sharegpt", "alpaca")
SHAREGPT_ROLE = {"system": "system", "user": "human", "assistant": "gpt"}


@dataclass
class ExportResult:
    path: Path
    files: list[Path] = field(default_factory=list)
    exported: int = 0
    excluded: dict[str, int] = field(default_factory=dict)


def find_samples(data: str | Path) -> Path:
    """``samples.parquet`` given itself, a dataset directory or a run directory."""
    p = Path(data)
    for cand in (p, p / "samples.parquet", p / "data" / "samples.parquet"):
        if cand.is_file():
            return cand
    raise DataError("no samples.parquet here (give the file, a dataset directory or a run directory)",
                    where=str(p))


def _blocked(s: Sample) -> bool:
    try:
        rows = json.loads(s.rule_results or "[]")
    except json.JSONDecodeError:
        return True
    return any(isinstance(r, dict) and r.get("severity", "error") == "error" for r in rows)


def _turns(s: Sample) -> tuple[str, list[tuple[str, str]]] | None:
    """``(system, [(user, assistant), ...])`` or None when the turns do not alternate."""
    msgs = list(s.messages)
    system = msgs.pop(0).content if msgs and msgs[0].role == "system" else ""
    if not msgs or len(msgs) % 2:
        return None
    pairs = []
    for u, a in zip(msgs[::2], msgs[1::2]):
        if u.role != "user" or a.role != "assistant":
            return None
        pairs.append((u.content, a.content))
    return system, pairs


def to_alpaca(s: Sample) -> dict[str, Any] | None:
    """One Alpaca record; the instruction/input split is kept when it reproduces the user turn."""
    t = _turns(s)
    if t is None:
        return None
    system, pairs = t
    user, answer = pairs[-1]
    instruction, inp = user, ""
    if len(pairs) == 1 and s.instruction and (f"{s.instruction}\n{s.input}" if s.input else s.instruction) == user:
        instruction, inp = s.instruction, s.input
    return {"id": s.id, "task_id": s.task_id, "instruction": instruction, "input": inp, "output": answer,
            "system": system, "history": [list(p) for p in pairs[:-1]]}


def to_sharegpt(s: Sample) -> dict[str, Any] | None:
    if _turns(s) is None:
        return None
    return {"id": s.id, "task_id": s.task_id,
            "conversations": [{"from": SHAREGPT_ROLE[m.role], "value": m.content} for m in s.messages]}


def to_messages(s: Sample) -> dict[str, Any]:
    return {"id": s.id, "task_id": s.task_id, "messages": [m.model_dump() for m in s.messages]}


def select(samples_path: Path, split: str, include_pending: bool,
           review_decisions: Mapping[str, ReviewDecision] | None = None) -> tuple[list[Sample], Counter]:
    """The exportable samples of ``split`` and a count of the others by reason."""
    samples = [s for s in iter_samples(samples_path)]
    for s in samples:  # the store's current decisions win over the status recorded at build time
        d = (review_decisions or {}).get(s.id)
        if d is not None:
            d.apply(s)
    ok: list[Sample] = []
    excluded: Counter = Counter()
    allowed = {"approved", "pending"} if include_pending else {"approved"}
    for s in samples:
        if s.split != split:
            continue
        if not s.ruleset_version:
            excluded["not_validated"] += 1
        elif _blocked(s):
            excluded["rule_failure"] += 1
        elif s.review_status not in allowed:
            excluded[f"review:{s.review_status}"] += 1
        else:
            ok.append(s)
    return ok, excluded


def export_dataset(data: str | Path, fmt: str, out_dir: str | Path, *, split: str = "train",
                   include_pending: bool = False,
                   review_decisions: Mapping[str, ReviewDecision] | None = None) -> ExportResult:
    """Write the exportable ``split`` of ``data`` in trainer format ``fmt`` under ``out_dir``.

    ``review_decisions`` (sample id → decision, from :func:`mixtune.review.samples.sample_decisions`)
    applies expert decisions made since the build.
    """
    if fmt not in FORMATS:
        raise DataError(f"unknown export format {fmt!r}; allowed: {list(FORMATS)}")
    if split not in ("train", "val", "test"):
        raise DataError(f"unknown split {split!r}; allowed: ['train', 'val', 'test']")
    src = find_samples(data)
    chosen, excluded = select(src, split, include_pending, review_decisions)
    convert = {"alpaca": to_alpaca, "sharegpt": to_sharegpt, "llamafactory": to_sharegpt, "axolotl": to_messages}[fmt]
    records = []
    for s in chosen:
        rec = convert(s)
        if rec is None:
            excluded["not_alternating_turns"] += 1
        else:
            records.append(rec)
    if not records:
        raise DataError(f"nothing to export from split {split!r}: excluded {dict(excluded) or 'none'} "
                        "(only rule-checked, approved samples leave; --include-pending adds unreviewed ones)",
                        where=str(src))
    out = Path(out_dir).resolve()
    name = f"mixtune_{split}"
    data_file = write_jsonl(records, out / f"{name}.jsonl")
    res = ExportResult(path=out, files=[data_file], exported=len(records), excluded=dict(sorted(excluded.items())))
    if fmt == "llamafactory":
        info = {name: {"file_name": data_file.name, "formatting": "sharegpt",
                       "columns": {"messages": "conversations"},
                       "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human",
                                "assistant_tag": "gpt", "system_tag": "system"}}}
        res.files.append(write_json(info, out / "dataset_info.json"))
    elif fmt == "axolotl":
        snippet = {"datasets": [{"path": str(data_file), "ds_type": "json", "type": "chat_template",
                                 "field_messages": "messages", "roles_to_train": ["assistant"],
                                 "message_property_mappings": {"role": "role", "content": "content"}}]}
        path = out / "axolotl_datasets.yaml"
        path.write_text("# paste into your axolotl config\n" + yaml.safe_dump(snippet, sort_keys=False),
                        encoding="utf-8")
        res.files.append(path)
    versions = sorted({s.dataset_version for s in chosen if s.dataset_version})
    manifest = {"format": fmt, "split": split, "source": str(src), "dataset_version": versions,
                "exported": res.exported, "excluded": res.excluded, "include_pending": include_pending,
                "files": {p.name: sha256_file(p) for p in res.files}}
    res.files.append(write_json(manifest, out / "export_manifest.json"))
    return res
