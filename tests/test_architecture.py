"""The package map in docs/architecture.md holds for the real imports of every module.

The map is declared once, as the table in the doc; this test parses it, walks every module's
AST (function-local imports included) and fails on any import the table does not allow.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
SRC = ROOT / "src" / "mixtune"
PACKAGES = {"cli", "commands", "config", "pipeline", "errors", "jsonl", "rundir", "report", "data", "rules",
            "mixing", "train", "eval", "review", "release", "model", "bench"}
TOP_ONLY = {"bench", "commands", "cli"}  # only the command line may import these


def package_map(doc: Path = DOC) -> dict[str, set[str]]:
    """``package -> allowed imports`` from the doc's "Package map" table."""
    text = doc.read_text(encoding="utf-8")
    section = text.split("## Package map", 1)[1].split("\n## ", 1)[0]
    out: dict[str, set[str]] = {}
    for line in section.splitlines():
        m = re.match(r"\|\s*`([a-z_]+)`\s*\|([^|]*)\|", line)
        if m:
            allowed = {a.strip() for a in m.group(2).split(",") if a.strip() not in ("", "—", "-")}
            out[m.group(1)] = allowed
    return out


def package_of(path: Path, src: Path) -> str:
    """``cli`` for ``cli.py``, ``train`` for ``train/stage1.py``; ``__init__``/``__main__`` for the root."""
    rel = path.relative_to(src)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _module_name(path: Path, src: Path) -> list[str]:
    rel = path.relative_to(src).with_suffix("")
    parts = ["mixtune", *rel.parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def imported_packages(path: Path, src: Path) -> list[tuple[int, str]]:
    """``(line, package)`` for every import of a ``mixtune`` package in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = _module_name(path, src)
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = here if is_pkg else here[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" for a in node.names] if mod == "mixtune" else [mod]
        for t in targets:
            parts = t.split(".")
            if parts[0] == "mixtune" and len(parts) > 1:
                out.append((node.lineno, parts[1]))
    return out


def violations(src: Path, allowed: dict[str, set[str]]) -> list[str]:
    """Every import of another package the map does not allow, as ``file:line: a -> b``."""
    bad = []
    for path in sorted(src.rglob("*.py")):
        pkg = package_of(path, src)
        if pkg == "__main__":
            ok = {"cli"}
        elif pkg == "__init__":
            ok = set()
        elif pkg not in allowed:
            bad.append(f"{path.relative_to(src)}: package {pkg!r} is missing from the package map")
            continue
        else:
            ok = allowed[pkg]
        for line, target in sorted(imported_packages(path, src)):
            if target != pkg and target not in ok:
                bad.append(f"{path.relative_to(src)}:{line}: {pkg} -> {target}")
    return bad


def test_map_lists_exactly_the_packages():
    declared = package_map()
    assert set(declared) == PACKAGES
    real = {package_of(p, SRC) for p in SRC.rglob("*.py")} - {"__init__", "__main__"}
    assert real == PACKAGES


def test_every_import_is_allowed_by_the_map():
    assert violations(SRC, package_map()) == []


def test_map_is_layered():
    declared = package_map()
    for pkg, allowed in declared.items():
        assert allowed <= PACKAGES, (pkg, allowed - PACKAGES)
        if pkg not in ("cli", "commands"):
            assert not allowed & TOP_ONLY, f"{pkg} may not import {allowed & TOP_ONLY}"
    assert "train" not in declared["mixing"]
    # Acyclic: repeatedly remove packages whose allowed imports are all removed already.
    done: set[str] = set()
    while len(done) < len(declared):
        ready = {p for p, a in declared.items() if p not in done and a <= done}
        assert ready, f"cycle among {sorted(set(declared) - done)}"
        done |= ready


def test_mixing_imports_no_torch():
    for path in (SRC / "mixing").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not names & {"torch", "transformers"}, path


def test_checker_catches_forbidden_and_local_imports(tmp_path):
    src = tmp_path / "mixtune"
    (src / "rules").mkdir(parents=True)
    (src / "errors.py").write_text("")
    (src / "rules" / "__init__.py").write_text("from mixtune.errors import MixtuneError\n")
    (src / "rules" / "engine.py").write_text(
        "def f():\n    from mixtune.bench import fixtures\n    import mixtune.train.stage1\n"
        "from ..errors import MixtuneError\nfrom mixtune import eval\n"
    )
    (src / "extra.py").write_text("")
    allowed = {"errors": set(), "rules": {"errors"}}
    assert violations(src, allowed) == [
        "extra.py: package 'extra' is missing from the package map",
        "rules/engine.py:2: rules -> bench",
        "rules/engine.py:3: rules -> train",
        "rules/engine.py:5: rules -> eval",
    ]
