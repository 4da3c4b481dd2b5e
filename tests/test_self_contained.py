"""Tests and code read nothing from beside the repository: a bare clone must pass ``make test``.

Our CI layout has a ``shared`` folder next to the checkout; a user's clone does not. This scans
every text file under ``src/`` and ``tests/`` for a path into it.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = "shar" + "ed"  # split so this file does not match its own patterns
# A relative "../" path into that folder, the CI's absolute path to it, or a path built up to it
# from this file (parents[2] / name, .parent.parent / name, os.path.join(..., name)).
PATTERNS = [
    re.compile(r"\.\./" + SHARED + r"\b"),
    re.compile(r"/work/" + SHARED + r"\b"),
    re.compile(r"(parents?\b[^\n]{0,40}|join\([^\n]{0,80})[\"']" + SHARED + r"[\"']"),
]


def offending_lines(root: Path) -> list[str]:
    """``path:line: text`` for every line under ``root/src`` and ``root/tests`` matching a pattern."""
    hits = []
    for folder in ("src", "tests"):
        for path in sorted((root / folder).rglob("*")):
            # Build metadata (egg-info) is generated from README by pip, not written by hand.
            if not path.is_file() or "__pycache__" in path.parts or any(
                    part.endswith(".egg-info") for part in path.parts):
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue  # binary files hold no paths we write by hand
            for n, line in enumerate(text.splitlines(), 1):
                if any(p.search(line) for p in PATTERNS):
                    hits.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    return hits


def test_no_file_reads_outside_the_repository():
    assert offending_lines(ROOT) == []


def test_scanner_catches_the_forms_it_is_meant_to(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "tests").mkdir()
    bad = [
        f'DATA = Path(__file__).resolve().parents[2] / "{SHARED}" / "ifeval"',
        f"p = Path(__file__).parent.parent.parent / '{SHARED}'",
        f'open("../{SHARED}/ifeval/input_data.jsonl")',
        f'os.path.join(here, "..", "..", "{SHARED}", "x")',
        f'X = "/work/{SHARED}/ifeval"',
    ]
    (tmp_path / "tests" / "t.py").write_text("\n".join(bad) + "\nshared_state = 1  # a plain word is fine\n")
    (tmp_path / "src" / "blob.bin").write_bytes(b"\xff\xfe\x00" + f"../{SHARED}".encode("utf-16-le"))
    hits = offending_lines(tmp_path)
    assert [h.split(":")[1] for h in hits] == ["1", "2", "3", "4", "5"]
