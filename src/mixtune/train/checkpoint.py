"""Checkpoints with integrity manifests, and exact resume.

A checkpoint is a folder ``step-XXXXXXXX`` holding the trainable weights (safetensors), optimizer
and scheduler states, and ``trainer_state.json`` (step, RNG states, sampler and policy states).
``manifest.json`` is written last with the SHA-256 of every file: a checkpoint without a manifest
(killed mid-write) or with a mismatching hash (truncated, corrupted) is rejected, and resume falls
back to the newest good one.
"""

from __future__ import annotations

import ast
import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from safetensors.torch import load_file, save_file

from mixtune.errors import CheckpointError
from mixtune.jsonl import sha256_file

console = Console(stderr=True)
MANIFEST = "manifest.json"



def rng_state() -> dict[str, Any]:
    return {
        "python": repr(random.getstate()),
        "torch": torch.get_rng_state().tolist(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(ast.literal_eval(state["python"]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


def trainable_state(model, model_state: dict | None = None) -> dict[str, torch.Tensor]:
    """Weights that training changes (all for full fine-tuning, the adapter for LoRA).

    ``model_state`` is a gathered state dict (``accelerator.get_state_dict``) to take them from;
    by default the model's own, which is incomplete under ZeRO-3 / FSDP sharding.
    """
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    full = model.state_dict() if model_state is None else model_state
    return {k: v.detach().cpu().contiguous() for k, v in full.items() if k in names}


def save_checkpoint(ckpt_root: Path, step: int, model, optimizer, scheduler, state: dict, keep: int,
                    extra_tensors: dict | None = None, model_state: dict | None = None) -> Path:
    """Write a checkpoint atomically (tmp folder + rename) and prune old ones beyond ``keep``."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{step:08d}"
    tmp = ckpt_root / f".tmp-step-{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(trainable_state(model, model_state), str(tmp / "model.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    if extra_tensors is not None:  # e.g. stage 2's style-gradient EMA buffers
        torch.save(extra_tensors, tmp / "extra.pt")
    (tmp / "trainer_state.json").write_text(json.dumps({"step": step, "rng": rng_state(), **state}))
    manifest = {p.name: {"sha256": sha256_file(p), "size": p.stat().st_size} for p in sorted(tmp.iterdir())}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    for p in tmp.iterdir():  # flush before the rename makes the checkpoint visible
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in list_checkpoints(ckpt_root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    if not ckpt_root.is_dir():
        return []
    return sorted(p for p in ckpt_root.iterdir() if p.is_dir() and p.name.startswith("step-"))


# Files save_checkpoint always writes; a manifest that omits one cannot describe a loadable checkpoint.
REQUIRED_FILES = ("model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json")


def _read_manifest(mf: Path) -> dict[str, tuple[int, str]]:
    """Parse and validate a manifest into ``{file name: (size, sha256)}``.

    Any shape other than what :func:`save_checkpoint` writes is a CheckpointError (never a
    KeyError/TypeError), so :func:`latest_good_checkpoint` can fall back past it.
    """
    try:
        manifest = json.loads(mf.read_bytes())
    except (OSError, ValueError, RecursionError):  # ValueError covers JSON and UTF-8 decode errors
        raise CheckpointError("corrupt manifest (not readable JSON)", where=str(mf)) from None
    if not isinstance(manifest, dict) or not manifest:
        raise CheckpointError("corrupt manifest (expected a non-empty mapping of file names)", where=str(mf))
    out: dict[str, tuple[int, str]] = {}
    for name, meta in manifest.items():
        # a plain file name only: a manifest must not make us hash files outside the checkpoint
        if not name or name in (".", "..", MANIFEST) or "/" in name or "\\" in name or "\0" in name:
            raise CheckpointError(f"corrupt manifest (bad file name {name!r})", where=str(mf))
        size = meta.get("size") if isinstance(meta, dict) else None
        digest = meta.get("sha256") if isinstance(meta, dict) else None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or not isinstance(digest, str) \
                or len(digest) != 64:
            raise CheckpointError(f"corrupt manifest (entry {name!r} needs an integer size and a sha256)",
                                  where=str(mf))
        out[name] = (size, digest)
    missing = [f for f in REQUIRED_FILES if f not in out]
    if missing:
        raise CheckpointError(f"corrupt manifest (does not list {', '.join(missing)})", where=str(mf))
    return out


def verify_checkpoint(path: Path) -> None:
    """Raise CheckpointError unless the manifest is well-formed and every file matches it."""
    mf = path / MANIFEST
    if not mf.is_file():
        raise CheckpointError("incomplete checkpoint (no manifest: the writer was interrupted)", where=str(path))
    for name, (size, digest) in _read_manifest(mf).items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"missing file {name}", where=str(path))
        if f.stat().st_size != size or sha256_file(f) != digest:
            raise CheckpointError(f"{name} is truncated or corrupt (checksum mismatch)", where=str(path))


def latest_good_checkpoint(ckpt_root: Path) -> Path | None:
    """Newest checkpoint that verifies; corrupt ones are reported and skipped."""
    for path in reversed(list_checkpoints(ckpt_root)):
        try:
            verify_checkpoint(path)
            return path
        except CheckpointError as e:
            console.print(f"[yellow]warning:[/] skipping checkpoint: {e}")
    return None


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    """Restore weights, optimizer, scheduler and RNG; return the trainer state (step, policy states)."""
    verify_checkpoint(path)
    try:
        weights = load_file(str(path / "model.safetensors"))
        missing = set(trainable_state(model)) - set(weights)
        if missing:
            raise CheckpointError(f"weights do not match the model (missing {sorted(missing)[:3]}...)", where=str(path))
        model.load_state_dict(weights, strict=False)
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        state = json.loads((path / "trainer_state.json").read_text())
        if (path / "extra.pt").is_file():
            state["extra"] = torch.load(path / "extra.pt", weights_only=True)
        set_rng_state(state["rng"])
    except CheckpointError:
        raise
    except Exception as e:  # unreadable despite a valid manifest: still the user's file, not our bug
        raise CheckpointError(f"cannot load checkpoint: {e}", where=str(path)) from None
    return state


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a directory atomically: yield a fresh temp folder beside ``path``; on success it
    replaces ``path`` by rename, on error it is removed and an existing ``path`` is untouched.

    Readers never see a half-written ``path``: it is either the old complete folder or the new
    one. (Linux cannot rename a folder over a non-empty one, so an old ``path`` is first moved
    aside and deleted after the swap; a crash between the two renames leaves it as
    ``.old-<name>-*`` beside ``path``, never a partial ``path``.)
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
        for p in tmp.rglob("*"):  # flush before the rename makes the folder visible
            if p.is_file():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".old-{final.name}-", dir=final.parent))
            os.replace(final, old / final.name)
        try:
            os.replace(tmp, final)
        except OSError:
            if old is not None:  # put the previous folder back: never lose accepted work
                os.replace(old / final.name, final)
                shutil.rmtree(old, ignore_errors=True)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
