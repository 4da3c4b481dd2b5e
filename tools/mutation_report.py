"""Turn a finished ``mutmut run`` into benchmarks/results/mutation.json (``make mutation``, issue 17).

mutmut 3 leaves one ``mutants/<path>.meta`` per mutated file with an exit code per mutant
(1 or 3: killed, 36: timed out, 0: survived, 33/5: no test ran it). Survivors listed in
``tools/mutation_equivalent.json`` are equivalent mutants: they cannot change behaviour (or only
change behaviour outside the module's contract), each with its reason. The score counts only the
non-equivalent mutants: ``killed / (tried - equivalent)``; ``score_all`` is ``killed / tried``.
Entries of kind ``unreachable-default`` are keyword defaults no production call site uses (the
caller always passes the value from the config); they are listed apart from true equivalents.

Run from the repository root after ``mutmut run``; prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MODULES = {
    "mixing/heat.py": "src/mixtune/mixing/heat.py",
    "mixing/curriculum.py": "src/mixtune/mixing/curriculum.py",
    "release/gates.py": "src/mixtune/release/gates.py",
    "release/stats.py": "src/mixtune/release/stats.py",
    "train/clip.py": "src/mixtune/train/clip.py",
    # extended scope
    "mixing/sampler.py": "src/mixtune/mixing/sampler.py",
}
# Killed: a test failed (1), pytest errored (3), or the mutant hung past mutmut's timeout
# (36, and the SIGXCPU codes): a hang is a detected change, as in mutmut's own summary.
KILLED, SURVIVED = {1, 3, 36, 24, -24, 152, 255}, {0}
ROOT = Path(__file__).resolve().parents[1]
EQUIVALENT = ROOT / "tools" / "mutation_equivalent.json"
OUT = ROOT / "benchmarks" / "results" / "mutation.json"


def _changed_lines(name: str, src: str) -> tuple[str, str]:
    """(function, '-old || +new') for a mutant, from mutmut's own diff."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant  # only present in the `mutation` extra

    diff = get_diff_for_mutant(name, path=src)
    lines = [ln[0] + ln[1:].strip() for ln in diff.splitlines()
             if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
    function = name.rsplit(".", 1)[-1].split("__mutmut_")[0]
    return function, " || ".join(lines)


def _is_equivalent(entries: list[dict], module: str, function: str, change: str) -> dict | None:
    for e in entries:
        if e["module"] == module and e["function"] == function and e["change"] == change:
            return e
    return None


def main() -> int:
    if not Path("mutants").is_dir():
        print("no mutants/ directory: run `mutmut run` first", file=sys.stderr)
        return 2
    entries = json.loads(EQUIVALENT.read_text(encoding="utf-8"))
    result: dict[str, dict] = {}
    for module, src in MODULES.items():
        meta = Path("mutants") / (src + ".meta")
        codes = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
        killed = sum(1 for c in codes.values() if c in KILLED)
        equivalent, survived, other = [], [], []
        for name, code in sorted(codes.items()):
            if code in KILLED:
                continue
            function, change = _changed_lines(name, src)
            known = _is_equivalent(entries, module, function, change) if code in SURVIVED else None
            row = {"mutant": name.split(".")[-1], "function": function, "change": change}
            if known:
                equivalent.append({**row, "kind": known["kind"], "reason": known["reason"]})
            elif code in SURVIVED:
                survived.append(row)
            else:
                other.append({**row, "exit_code": code})
        tried = len(codes)
        counted = tried - len(equivalent)
        result[module] = {
            "tried": tried,
            "killed": killed,
            "of_which_timeouts": sum(1 for c in codes.values() if c in KILLED - {1, 3}),
            "equivalent_count": len(equivalent),
            "score": round(killed / counted, 4) if counted else 1.0,
            "score_all": round(killed / tried, 4) if tried else 1.0,
            "survived": survived,
            "not_run": other,
            "equivalent": equivalent,
        }
    # Shape asked by issue 17: {module: {tried, killed, score, equivalent: [...]}} (plus detail keys).
    OUT.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print("| module | tried | killed | equivalent | survived | score (non-equivalent) | score (all) |")
    print("|---|---|---|---|---|---|---|")
    for module, r in result.items():
        print(f"| `{module}` | {r['tried']} | {r['killed']} | {r['equivalent_count']} | {len(r['survived'])} "
              f"| {r['score']:.1%} | {r['score_all']:.1%} |")
    print("\nEquivalent mutants, grouped by reason (`change` is mutmut's diff, old || new):\n")
    for module, r in result.items():
        groups: dict[str, list[str]] = {}
        for e in r["equivalent"]:
            groups.setdefault(f"[{e['kind']}] {e['reason']}", []).append(e["change"])
        for reason, changes in groups.items():
            print(f"- `{module}` ({len(changes)}): {reason}")
            for c in sorted(set(changes)):
                print(f"  - `{c}`")
    print(f"\nwrote {OUT.relative_to(ROOT)}")
    return 0 if all(r["score"] >= 0.9 for r in result.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
