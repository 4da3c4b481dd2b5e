"""Checkpoint integrity: truncated / half-written checkpoints are detected and skipped."""

from __future__ import annotations

import pytest
import torch

from mixtune.errors import CheckpointError
from mixtune.train.checkpoint import (
    latest_good_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)


def _parts():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return model, opt, sched


def test_roundtrip_restores_weights_and_rng(tmp_path):
    model, opt, sched = _parts()
    save_checkpoint(tmp_path, 5, model, opt, sched, {"x": 1}, keep=2)
    expected_next = torch.rand(3)
    other, opt2, sched2 = _parts()
    with torch.no_grad():
        other.weight.zero_()
    state = load_checkpoint(tmp_path / "step-00000005", other, opt2, sched2)
    assert state["step"] == 5 and state["x"] == 1
    assert torch.equal(other.weight, model.weight)
    assert torch.equal(torch.rand(3), expected_next)  # RNG restored to the saved point


def test_corrupt_checkpoint_falls_back_to_last_good(tmp_path):
    model, opt, sched = _parts()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, opt, sched, {}, keep=5)
    newest = tmp_path / "step-00000003" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:10])  # truncated
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        verify_checkpoint(newest.parent)
    assert latest_good_checkpoint(tmp_path).name == "step-00000002"
    (tmp_path / "step-00000002" / "manifest.json").unlink()  # writer killed before the manifest
    assert latest_good_checkpoint(tmp_path).name == "step-00000001"


def test_keep_prunes_old_checkpoints(tmp_path):
    model, opt, sched = _parts()
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, model, opt, sched, {}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000004", "step-00000005"]


def test_stage1_without_training_samples_is_a_clear_error(tmp_path):
    from helpers.synth import corpus, make_samples

    from mixtune.config import PipelineConfig
    from mixtune.errors import DataError
    from mixtune.model.tiny import make_test_model
    from mixtune.train.stage1 import train_stage1

    samples = [s for s in make_samples(n_per_task=6) if s.split == "val"]
    base = make_test_model(tmp_path / "m", corpus(samples))
    with pytest.raises(DataError, match="no stage-1 training samples"):
        train_stage1(PipelineConfig(), samples, str(base), tmp_path / "out", progress=False)


# ---- malformed manifests (issue 14): always CheckpointError, and resume falls back ----------------

def _good_manifest(tmp_path):
    import json

    model, opt, sched = _parts()
    for step in (1, 2):
        save_checkpoint(tmp_path, step, model, opt, sched, {}, keep=5)
    mf = tmp_path / "step-00000002" / "manifest.json"
    return mf, json.loads(mf.read_text())


def _malformed(good: dict) -> list:
    first = next(iter(good))
    no_size = {k: {"sha256": v["sha256"]} for k, v in good.items()}
    return [
        [], [1, 2], "text", 3, None, {},  # non-dict JSON, empty files list
        {k: v for k, v in good.items() if k != "model.safetensors"},  # a required file not listed
        no_size,  # missing keys
        {**good, first: "not a dict"},  # wrong types
        {**good, first: {"size": "12", "sha256": good[first]["sha256"]}},
        {**good, first: {"size": True, "sha256": good[first]["sha256"]}},
        {**good, first: {"size": good[first]["size"], "sha256": 5}},
        {**good, "../../outside": good[first]},  # a path outside the checkpoint
        {**good, "": good[first]},
    ]


def test_every_malformed_manifest_is_a_checkpoint_error_and_falls_back(tmp_path):
    import json

    mf, good = _good_manifest(tmp_path)
    cases = [json.dumps(m) for m in _malformed(good)] + ["{", "\xff\xfe", "[" * 100_000]
    for text in cases:
        mf.write_bytes(text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text)
        with pytest.raises(CheckpointError, match="manifest"):
            verify_checkpoint(mf.parent)
        assert latest_good_checkpoint(tmp_path).name == "step-00000001", text[:60]
    mf.write_bytes(b"\xff\xfe\x00")  # not UTF-8
    with pytest.raises(CheckpointError, match="manifest"):
        verify_checkpoint(mf.parent)


def test_random_manifest_json_never_escapes_as_another_exception(tmp_path):
    import json

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    mf, good = _good_manifest(tmp_path)
    leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
    values = st.recursive(leaf, lambda ch: st.lists(ch, max_size=3) | st.dictionaries(st.text(max_size=6), ch,
                                                                                         max_size=3), max_leaves=8)
    entries = st.dictionaries(st.sampled_from([*good, "x", "../y"]), values, max_size=5)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(doc=values | entries | entries.map(lambda d: {**good, **d}))
    def check(doc):
        mf.write_text(json.dumps(doc))
        try:
            verify_checkpoint(mf.parent)
        except CheckpointError:
            assert latest_good_checkpoint(tmp_path).name in ("step-00000001", "step-00000002")
        else:  # accepted only if it still describes the real files exactly
            assert {k: v for k, v in doc.items()} == good

    check()


def test_atomic_dir_replaces_whole_folder_or_nothing(tmp_path):
    from mixtune.train.checkpoint import atomic_dir

    target = tmp_path / "final" / "model"
    with atomic_dir(target) as tmp:
        assert tmp.parent == target.parent and tmp != target and not target.exists()
        (tmp / "model.safetensors").write_text("v1")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "config.json").write_text("{}")
    assert (target / "model.safetensors").read_text() == "v1" and (target / "sub" / "config.json").is_file()

    with pytest.raises(RuntimeError, match="killed"), atomic_dir(target) as tmp:
        (tmp / "model.safetensors").write_text("half")
        raise RuntimeError("killed mid-save")
    assert (target / "model.safetensors").read_text() == "v1"  # the old model survives a failed save

    with atomic_dir(target) as tmp:
        (tmp / "model.safetensors").write_text("v2")
    assert (target / "model.safetensors").read_text() == "v2"
    assert sorted(p.name for p in target.parent.iterdir()) == ["model"]  # no temp or old folders left
def test_stages_with_different_precisions_run_in_one_process(tmp_path):
    """``mixtune run`` trains both stages in one process; each builds its own accelerator."""
    from helpers.synth import corpus, make_samples

    from mixtune.config import PipelineConfig
    from mixtune.model.tiny import make_test_model
    from mixtune.train.stage1 import train_stage1
    from mixtune.train.stage2 import train_stage2

    samples = make_samples(twins=False)
    base = make_test_model(tmp_path / "base", corpus(samples))
    cfg = PipelineConfig.model_validate({"stage1": {"steps": 1, "batch_size": 4, "precision": "bf16"},
                                         "stage2": {"steps": 1, "batch_size": 4, "precision": "fp32"}})
    s1 = train_stage1(cfg, samples, str(base), tmp_path / "s1", progress=False)
    s2 = train_stage2(cfg, samples, str(s1), tmp_path / "s2", business_value={}, groups={}, families={},
                      chains=[], rejection={}, progress=False)
    assert (s2 / "model.safetensors").is_file()
