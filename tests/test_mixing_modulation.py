"""Gradient modulation: fixed group treatment and the adaptive alternatives."""

import json

import numpy as np
import pytest
import torch

from mixtune.errors import CheckpointError, ConfigError
from mixtune.mixing import AdaptiveModulation, GroupModulation, make_modulation


def test_group_factors():
    m = GroupModulation(logic_gain=1.5, style_ema=0.9, safety_unlikelihood=0.5)
    assert m.loss_scale("logic") == 1.5 and m.loss_scale("style") == 1.0 and m.loss_scale("general") == 1.0
    assert m.unlikelihood_weight("safety") == 0.5 and m.unlikelihood_weight("logic") == 0.0
    assert m.factors() == {"logic": 1.5, "style": 1.0, "safety": 1.0, "general": 1.0}
    off = GroupModulation(enabled=False)
    assert off.loss_scale("logic") == 1.0 and off.unlikelihood_weight("safety") == 0.0
    with pytest.raises(ConfigError, match="allowed"):
        m.loss_scale("humour")


def _params(*grads):
    out = []
    for g in grads:
        p = torch.zeros(len(g), requires_grad=True)
        p.grad = torch.tensor(g, dtype=torch.float32)
        out.append(p)
    return out


def _set_grads(params, *grads):
    for p, g in zip(params, grads):
        p.grad = None if g is None else torch.tensor(g, dtype=torch.float32)


def test_style_ema_is_bias_corrected_and_damps_alternating_gradients():
    m = GroupModulation(style_ema=0.9)
    g1, g2 = [1.0, -1.0], [-1.0, 1.0]
    params = _params(g1)
    m.smooth_style_(params)
    assert torch.allclose(params[0].grad, torch.tensor(g1))  # bias correction: the first step passes unchanged
    _set_grads(params, g2)
    m.smooth_style_(params)
    # buf = 0.9·0.1·g1 + 0.1·g2, divided by 1 - 0.9²
    expect = (0.09 * torch.tensor(g1) + 0.1 * torch.tensor(g2)) / (1 - 0.81)
    assert torch.allclose(params[0].grad, expect)
    for i in range(50):
        _set_grads(params, g1 if i % 2 else g2)
        m.smooth_style_(params)
    assert params[0].grad.abs().max() < 0.2  # raw gradients have magnitude 1
    assert m.style_steps == 52


def test_style_ema_keeps_one_buffer_per_parameter_and_skips_missing_grads():
    m = GroupModulation(style_ema=0.5)
    params = _params([2.0], [4.0, 4.0])
    m.smooth_style_(params)
    _set_grads(params, [0.0], None)
    m.smooth_style_(params)
    assert params[1].grad is None
    assert torch.allclose(m.buffers[1], torch.tensor([2.0, 2.0]))  # untouched by the step without a gradient
    assert torch.allclose(params[0].grad, torch.tensor([(0.5 * 0.5 * 2.0) / (1 - 0.25)]))
    off = GroupModulation(enabled=False)
    params = _params([3.0])
    off.smooth_style_(params)
    assert params[0].grad.item() == 3.0 and off.buffers == [] and off.style_steps == 0


def test_group_state_round_trip():
    m = GroupModulation()
    params = _params([1.0, 2.0])
    m.smooth_style_(params)
    _set_grads(params, [3.0, 0.0])
    m.smooth_style_(params)
    state = json.loads(json.dumps(m.state_dict()))
    n = GroupModulation()
    n.load_state_dict(state)
    n.load_style_buffers(m.style_buffers(), params)
    a, b = _params([0.5, 0.5]), _params([0.5, 0.5])
    m.smooth_style_(a)
    n.smooth_style_(b)
    assert torch.equal(a[0].grad, b[0].grad)
    with pytest.raises(CheckpointError):
        AdaptiveModulation(method="famo").load_state_dict(state)
    with pytest.raises(CheckpointError, match="style buffers"):
        n.load_style_buffers(m.style_buffers(), params + _params([1.0]))


def test_uncertainty_weighting_downweights_noisy_group():
    m = AdaptiveModulation(["logic", "style"], method="uncertainty", lr=0.1)
    for _ in range(200):
        m.observe("logic", 4.0)
        m.observe("style", 0.5)
    # fixed point exp(s) = L: weights ∝ 1/L, normalised to mean 1
    assert m.loss_scale("logic") < 1.0 < m.loss_scale("style")
    assert m.loss_scale("style") / m.loss_scale("logic") == pytest.approx(8.0, rel=0.05)
    assert np.mean(list(m.factors().values())) == pytest.approx(1.0)


def test_famo_favours_group_whose_loss_falls_slowly():
    m = AdaptiveModulation(["logic", "style"], method="famo", lr=0.5)
    fast, slow = 2.0, 2.0
    for _ in range(60):
        fast *= 0.9
        slow *= 0.995
        m.observe("logic", fast)
        m.observe("style", slow)
    z = m._z()
    assert z["style"] > z["logic"]
    assert m.unlikelihood_weight("safety") == 0.5
    params = _params([3.0])
    m.smooth_style_(params)  # adaptive methods reweight losses only
    assert params[0].grad.item() == 3.0 and m.style_buffers() == []


def test_adaptive_state_round_trip_and_factory():
    a = AdaptiveModulation(method="famo", lr=0.3)
    for i in range(10):
        a.observe("logic", 1.0 / (i + 1))
        a.observe("safety", 1.0)
    b = AdaptiveModulation(method="famo", lr=0.3)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    a.observe("logic", 0.05)
    b.observe("logic", 0.05)
    assert a.factors() == b.factors()
    assert isinstance(make_modulation("groups"), GroupModulation)
    assert isinstance(make_modulation("uncertainty"), AdaptiveModulation)
    assert isinstance(make_modulation("famo", enabled=False), GroupModulation)
    with pytest.raises(ConfigError):
        make_modulation("pcgrad")
