"""Benchmark harness: machine facts, statistics, result JSON and the BENCHMARKS.md renderer.

A suite is a function ``run(ctx) -> dict``: it measures, returns the suite's machine-readable keys
plus ``table`` (one entry per table line: what, value, baseline, ratio, unit, note). The harness adds
command, machine, library versions, seeds, tier and date, writes ``<out>/<suite>.json`` and
regenerates BENCHMARKS.md from every JSON in ``out`` so a single-suite run never drops the others.
Hand-written notes between the NOTES markers survive regeneration.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

#: Environment variable naming the repository's ``examples`` folder (``mixtune bench --examples``);
#: here, not in fixtures, so the CLI can name it without importing the data stack.
EXAMPLES_ENV = "MIXTUNE_EXAMPLES"
NOTES_START = "<!-- NOTES:START (hand-written, kept when the tables are regenerated) -->"
NOTES_END = "<!-- NOTES:END -->"
VERSIONED = ("torch", "transformers", "peft", "accelerate", "trl", "datasets", "pyarrow", "duckdb", "fastapi",
             "uvicorn", "httpx", "pyahocorasick")


@dataclass
class Context:
    """What a suite gets: tier, seeds, repetitions, folders for results, plots and scratch work."""

    tier: str
    seeds: list[int]
    out: Path                 # results JSON folder
    plots: Path               # PNG folder (linked from BENCHMARKS.md)
    work: Path                # scratch: models, runs, caches
    md_path: Path
    repetitions: int = 3
    log: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr, flush=True))

    @property
    def full(self) -> bool:
        return self.tier == "full"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """CPU model, usable cores, RAM (GiB) and GPU name where torch sees one."""
    ram = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    gpu = None
    try:
        import torch  # why: machine facts must not load torch for suites that never use it

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except Exception:  # a broken CUDA install must not stop a CPU benchmark
        gpu = None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu_model(), "cores": cores, "ram_gib": ram, "gpu": gpu,
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version()}


def versions() -> dict:
    out = {}
    for name in ("mixtune", *VERSIONED):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def summarize(values: list[float]) -> dict:
    """Median and spread (min, max, relative half-range) of repeated measurements."""
    vals = [float(v) for v in values]
    if not vals:
        return {"median": None, "min": None, "max": None, "spread_pct": None, "n": 0, "values": []}
    med = statistics.median(vals)
    spread = (max(vals) - min(vals)) / 2 / abs(med) * 100 if med else 0.0
    return {"median": med, "min": min(vals), "max": max(vals), "spread_pct": round(spread, 1), "n": len(vals),
            "values": vals}


def row(what: str, value, *, unit: str = "", baseline=None, baseline_name: str = "", ratio=None,
        target: str = "", note: str = "") -> dict:
    """One BENCHMARKS.md table line; ``value``/``baseline`` are numbers or ``summarize`` dicts."""
    return {"what": what, "value": value, "unit": unit, "baseline": baseline, "baseline_name": baseline_name,
            "ratio": ratio, "target": target, "note": note}


def not_measured(what: str, reason: str) -> dict:
    return row(what, None, note=f"not measured: {reason}")


def _fmt_num(x) -> str:
    if x is None:
        return "—"
    if isinstance(x, dict):
        if x.get("median") is None:
            return "—"
        return f"{_fmt_num(x['median'])} [{_fmt_num(x['min'])}–{_fmt_num(x['max'])}]"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        a = abs(x)
        return f"{x:,.0f}" if a >= 1000 else f"{x:.1f}" if a >= 100 else f"{x:.3g}" if a >= 0.01 or a == 0 else f"{x:.2e}"
    return str(x)


def run_suite(name: str, fn: Callable[[Context], dict], ctx: Context, command: str) -> dict:
    """Run one suite, stamp it with provenance and write ``<out>/<name>.json``.

    A suite that raises is recorded as not measured with the error's first line, so one broken
    component does not hide the other rows; the harness reports it and carries on.
    """
    t0 = time.perf_counter()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    ctx.log(f"bench: {name} ({ctx.tier}) ...")
    try:
        result = fn(ctx)
        status = "ok"
    except Exception as e:  # recorded, not swallowed: the row says "not measured" with the reason
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ctx.log(traceback.format_exc())
        result = {"table": [not_measured(name, reason)], "error": reason}
        status = "error"
    result.update({
        "suite": name, "status": status, "tier": ctx.tier, "command": command, "machine": machine_info(),
        "versions": versions(), "seeds": ctx.seeds, "repetitions": result.get("repetitions", ctx.repetitions),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "wall_s": round(time.perf_counter() - t0, 1),
        # Other work on the machine skews timings: the 1-minute load average before and after says how much.
        "loadavg_1m": [load_before, os.getloadavg()[0] if hasattr(os, "getloadavg") else None],
    })
    ctx.out.mkdir(parents=True, exist_ok=True)
    (ctx.out / f"{name}.json").write_text(json.dumps(result, indent=1, ensure_ascii=False, default=str) + "\n")
    ctx.log(f"bench: {name} {status} in {result['wall_s']} s")
    return result


def command_line() -> str:
    return "mixtune " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _table(res: dict) -> list[str]:
    lines = ["| measurement | mixtune (median [min–max]) | baseline (same run) | ratio | target | note |",
             "|---|---|---|---|---|---|"]
    for r in res.get("table", []):
        unit = f" {r['unit']}" if r.get("unit") and r.get("value") is not None else ""
        base = _fmt_num(r.get("baseline"))
        if r.get("baseline_name") and r.get("baseline") is not None:
            base = f"{r['baseline_name']}: {base}"
        ratio = r.get("ratio")
        ratio_s = f"{ratio:.2f}×" if isinstance(ratio, (int, float)) else "—"
        lines.append(f"| {r['what']} | {_fmt_num(r.get('value'))}{unit} | {base} | {ratio_s} | "
                     f"{r.get('target') or ''} | {r.get('note') or ''} |")
    return lines


def _load(pair) -> str:
    if not pair:
        return "not recorded"
    return " / ".join("—" if x is None else f"{x:.1f}" for x in pair)


def render_markdown(out: Path, md_path: Path, order: list[str]) -> Path:
    """Regenerate BENCHMARKS.md from every ``<out>/*.json``, keeping the hand-written notes."""
    notes = f"{NOTES_START}\n_No notes yet._\n{NOTES_END}"
    if md_path.is_file():
        old = md_path.read_text(encoding="utf-8")
        if NOTES_START in old and NOTES_END in old:
            notes = old[old.index(NOTES_START): old.index(NOTES_END) + len(NOTES_END)]
    results = {}
    for p in sorted(out.glob("*.json")):
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and "suite" in data:
            results[data["suite"]] = data
    names = [n for n in order if n in results] + sorted(set(results) - set(order))
    rel = os.path.relpath(out, md_path.parent)
    lines = ["# Benchmarks", "",
             "Generated by `mixtune bench` (`make bench` = `mixtune bench all --tier full`); every row is a real,",
             "dated measurement with its command, machine and library versions; baselines are measured in the",
             f"same run. Machine-readable results: `{rel}/*.json`. Values are medians with [min–max] over the",
             "stated repetitions unless a row says otherwise.", "", "## Notes", "", notes, ""]
    for n in names:
        r = results[n]
        m = r.get("machine", {})
        v = r.get("versions", {})
        lines += [f"## {n}", "",
                  f"- command: `{r.get('command')}` (tier {r.get('tier')}, suite wall time {r.get('wall_s')} s)",
                  f"- date: {r.get('date')}; seeds: {r.get('seeds')}; repetitions: {r.get('repetitions')}; "
                  f"1-min load average before/after: {_load(r.get('loadavg_1m'))}",
                  f"- machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('ram_gib')} GiB RAM"
                  + (f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU used"),
                  "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val), ""]
        if r.get("setup"):
            lines += [f"- setup: {r['setup']}", ""]
        lines += _table(r) + [""]
        for png in r.get("plots", []):
            lines += [f"![{n}]({os.path.relpath(Path(png), md_path.parent)})", ""]
    md_path.write_text("\n".join(lines), encoding="utf-8")
    return md_path
