"""One JSON-lines reader for every user-supplied ``.jsonl`` file (eval records, traffic, IFEval),
and the one streaming file hash (checkpoint manifests, registry weight digests, export checksums).

A missing file, invalid UTF-8, malformed JSON or a line that is not an object raises
:class:`DataError` naming the file and line, so each caller gets the same clear error.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mixtune.errors import DataError


def read_jsonl_objects(path: str | Path, what: str = "file") -> list[tuple[int, dict]]:
    """``(line number, object)`` for every non-blank line of ``path``."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} not found", where=str(p))
    rows = []
    # Decode line by line (binary read) so an invalid byte is reported on its own line.
    with p.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"not valid UTF-8 ({e.reason})", where=f"{p}:{lineno}") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"malformed JSON: {e.msg}", where=f"{p}:{lineno}") from None
            if not isinstance(obj, dict):
                raise DataError("each line must be a JSON object", where=f"{p}:{lineno}")
            rows.append((lineno, obj))
    return rows


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (model weights do not fit comfortably in memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
