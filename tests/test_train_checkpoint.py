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
