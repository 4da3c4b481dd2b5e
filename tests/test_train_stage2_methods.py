"""Every mixing method the config accepts runs inside stage 2 (size-based ones get the task sizes)."""

from __future__ import annotations

import json
import typing

import pytest

from mixtune.config import MixingConfig, PipelineConfig
from mixtune.model.tiny import make_test_model
from mixtune.train.stage2 import train_stage2

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("method", ["natural", "temperature"])
def test_size_based_methods_train_and_weight_by_task_size(tmp_path, method):
    from helpers.synth import corpus, make_samples

    samples = make_samples(twins=False)
    drop = [s for s in samples if s.task_id == "pii_mask" and s.split == "train"][4:]
    samples = [s for s in samples if s not in drop]  # pii_mask: 4 training samples, the others 10
    base = make_test_model(tmp_path / "base", corpus(samples))
    cfg = PipelineConfig.model_validate({"stage2": {
        "steps": 2, "batch_size": 4, "precision": "fp32", "warmup_steps": 0, "eval_every": 1000,
        "checkpoint_every": 1000, "context_orchestration": False, "curriculum": {"enabled": False},
        "modulation": {"enabled": False},
        "mixing": {"method": method, "uniform_mix": 0.0, "floor": 0.0, "cap": 1.0}}})
    out = train_stage2(cfg, samples, str(base), tmp_path / "s2", business_value={}, groups={}, families={},
                       chains=[], rejection={}, progress=False)
    w = json.loads((out.parent / "final_weights.json").read_text())
    assert w["pii_mask"] < w["calc_lcr"] == pytest.approx(w["concept_spread"])
    if method == "natural":
        assert w["pii_mask"] / w["calc_lcr"] == pytest.approx(4 / 10)


def test_the_config_offers_exactly_the_factory_methods():
    from mixtune.mixing.factory import POLICIES

    allowed = typing.get_args(MixingConfig.model_fields["method"].annotation)
    assert set(allowed) == set(POLICIES)
