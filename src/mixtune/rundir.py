"""Run-directory bookkeeping: resolved config, step completion, changed-config detection.

Each pipeline step records a fingerprint of the config sections it depends on (plus its upstream
steps). Re-running skips a step whose fingerprint matches; a run directory whose recorded config
differs from the new one is refused with the changed keys named, so two configurations are never
silently mixed in one directory.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import yaml

from mixtune.config import PipelineConfig, dump_config
from mixtune.errors import RunDirError

STATE = "run_state.json"


def _flatten(d, prefix=""):
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = d
    return out


def changed_keys(old: dict, new: dict) -> list[str]:
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k != "base_dir")


class RunDir:
    """The ``runs/<name>/`` folder of one pipeline run."""

    def __init__(self, cfg: PipelineConfig, *, fresh: bool = False):
        self.cfg = cfg
        self.path = cfg.run_dir()
        self.state_path = self.path / STATE
        resolved = self.path / "config.resolved.yaml"
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError("output path exists and is not a directory", where=str(self.path))
        if resolved.is_file() and not fresh:
            try:
                old = yaml.safe_load(resolved.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError:
                raise RunDirError("config.resolved.yaml is unreadable; use --fresh to start over",
                                  where=str(resolved)) from None
            new = cfg.model_dump(mode="json", by_alias=True)
            diff = changed_keys(old, new)
            if diff:
                raise RunDirError(
                    "this run directory holds a different run (changed: " + ", ".join(diff[:8])
                    + (" ..." if len(diff) > 8 else "") + "). Use another name (name=...), or --fresh to "
                    "discard it.", where=str(self.path))
        elif self.path.is_dir() and any(self.path.iterdir()) and not resolved.is_file() and not fresh:
            raise RunDirError("directory is not empty and holds no mixtune run; choose another name or "
                              "output_dir", where=str(self.path))
        if fresh and self.path.is_dir():
            # Expert decisions are not in here: they live in the review store beside the run
            # folders (runs/review.db), because they belong to the data, not to the run.
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        resolved.write_text(dump_config(cfg), encoding="utf-8")
        self.state = json.loads(self.state_path.read_text()) if self.state_path.is_file() else {"steps": {}}

    def fingerprint(self, step: str, sections: tuple[str, ...], upstream: tuple[str, ...] = ()) -> str:
        parts = [self.cfg.fingerprint(*sections)] + [self.state["steps"].get(u, {}).get("fp", "") for u in upstream]
        return "-".join(parts)

    def done(self, step: str, fp: str) -> bool:
        rec = self.state["steps"].get(step)
        return bool(rec and rec.get("fp") == fp and rec.get("status") == "done")

    def mark(self, step: str, fp: str, **info) -> None:
        self.state["steps"][step] = {"fp": fp, "status": "done", **info}
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1))
        os.replace(tmp, self.state_path)

    def sub(self, *parts: str) -> Path:
        p = self.path.joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p
