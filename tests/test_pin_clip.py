"""Pinning tests for train/clip.py (issue 17): exact ZClip thresholds, schedules, validation, defaults."""

from __future__ import annotations

import math

import pytest
import torch

from mixtune.errors import CheckpointError, ConfigError
from mixtune.train.clip import ClipSchedule


def _raises(exc_type, where, starts, fn, *args, **kwargs):
    with pytest.raises(exc_type) as info:
        fn(*args, **kwargs)
    assert info.value.where == where, info.value.where
    assert info.value.message.startswith(starts), info.value.message


def _z(**kw):
    return ClipSchedule("zclip", **{"zclip_z": 2.5, "zclip_alpha": 0.97, "warmup": 3, **kw})


# ------------------------------------------------------------------ ZClip
def test_zclip_threshold_on_a_known_sequence():
    c = _z()
    for step, g in enumerate([1.0, 2.0, 3.0]):  # warm-up: statistics only, no threshold
        rec = c.record(g, step)
        assert rec == {"grad_norm": g, "clip_threshold": None, "clipped": False, "clip_fraction": 0.0}
    mean, var = 2.0, 2.0 / 3.0  # exact population mean/variance of the warm-up norms
    thr = mean + 2.5 * math.sqrt(var)
    assert c.threshold(3) == pytest.approx(thr, rel=1e-12)  # 4.0412...
    rec = c.record(10.0, 3)  # a spike: clipped, and the statistics see the clipped value
    assert rec["clipped"] is True and rec["clip_threshold"] == pytest.approx(thr, rel=1e-12)
    assert rec["clip_fraction"] == 0.25
    mean2 = 0.97 * mean + 0.03 * thr
    var2 = 0.97 * var + 0.03 * (thr - mean2) ** 2
    assert c.threshold(4) == pytest.approx(mean2 + 2.5 * math.sqrt(var2), rel=1e-12)
    c.record(1.5, 4)
    mean3 = 0.97 * mean2 + 0.03 * 1.5
    var3 = 0.97 * var2 + 0.03 * (1.5 - mean3) ** 2
    assert c.threshold(5) == pytest.approx(mean3 + 2.5 * math.sqrt(var3), rel=1e-12)
    s = c.state_dict()
    assert (s["n_obs"], s["n_steps"], s["n_clipped"]) == (5, 5, 1)
    assert s["m2"] == pytest.approx(2.0)


def test_zclip_large_norms_use_the_running_average_not_its_inverse():
    c = _z(warmup=2)
    c.record(40.0, 0)
    c.record(44.0, 1)
    assert c.threshold(2) == pytest.approx(42.0 + 2.5 * 2.0)
    c.record(42.0, 2)
    mean = 0.97 * 42.0 + 0.03 * 42.0
    var = 0.97 * 4.0 + 0.03 * (42.0 - mean) ** 2
    assert c.threshold(3) == pytest.approx(mean + 2.5 * math.sqrt(var), rel=1e-12)


def test_zclip_std_floor_for_constant_norms():
    c = _z()
    for s in range(3):
        c.record(2.0, s)
    assert c.threshold(3) == pytest.approx(2.0 + 2.5 * 2e-3, rel=1e-12)  # 0.1% of the mean
    zero = _z()
    for s in range(3):
        zero.record(0.0, s)
    assert zero.threshold(3) == pytest.approx(2.5e-12)
    assert zero.record(1e-13, 3)["clipped"] is False


def test_zclip_non_finite_and_missing_norms():
    c = _z(warmup=1)
    c.record(1.0, 0)
    before = c.state_dict()
    rec = c.record(float("nan"), 1)
    assert rec["clipped"] is True and rec["grad_norm"] != rec["grad_norm"]
    after = c.state_dict()
    assert (after["mean"], after["var"], after["n_obs"]) == (before["mean"], before["var"], 1)
    none = c.record(None, 2)
    assert none == {"grad_norm": None, "clip_threshold": c.threshold(2), "clipped": False,
                    "clip_fraction": pytest.approx(1 / 3)}
    assert c.record(torch.tensor(0.5), 3)["grad_norm"] == 0.5


def test_zclip_production_default_warmup_is_ten():
    c = ClipSchedule("zclip", zclip_z=2.5, zclip_alpha=0.97)
    assert c.warmup == 10
    for s in range(10):
        assert c.threshold(s) is None
        c.record(1.0 + 0.1 * (s % 2), s)
    assert c.threshold(10) is not None


def test_warmup_validation():
    _raises(ConfigError, "clip.warmup", "zclip warmup must be >= 1, got 0", ClipSchedule, "zclip", warmup=0)
    assert ClipSchedule("zclip", warmup=1).warmup == 1
    assert ClipSchedule("decay", warmup=0).warmup == 0  # only ZClip uses a warm-up


# ------------------------------------------------------------------ schedules
@pytest.mark.parametrize("schedule,step,expect", [
    ("linear", 5, 3.0), ("cosine", 5, 3.0), ("exponential", 5, 5.0 * 0.2 ** 0.5),
    ("linear", 2, 4.2), ("cosine", 2, 1.0 + 4.0 * 0.5 * (1 + math.cos(math.pi * 0.2))),
    ("exponential", 2, 5.0 * 0.2 ** 0.2),
])
def test_decay_interior_points(schedule, step, expect):
    c = ClipSchedule("decay", schedule, start=5.0, end=1.0, total_steps=10)
    assert c.threshold(step) == pytest.approx(expect, rel=1e-12)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "exponential"])
def test_decay_endpoints_are_exact(schedule):
    # 0.9 -> 0.2: values where the closed forms are off by one ulp at p = 0 (cosine) and p = 1 (linear)
    c = ClipSchedule("decay", schedule, start=0.9, end=0.2, total_steps=7)
    assert c.threshold(0) == 0.9 and c.threshold(-5) == 0.9
    assert c.threshold(7) == 0.2 and c.threshold(70) == 0.2


def test_constant_and_none_and_exact_threshold_is_not_clipped():
    c = ClipSchedule("constant", start=2.0, end=1.0, total_steps=5)
    assert c.threshold(3) == 2.0
    assert c.record(2.0, 0)["clipped"] is False and c.record(2.0001, 1)["clipped"] is True
    assert c.clip_fraction == 0.5
    n = ClipSchedule("none", start=0.0, end=0.0, total_steps=5)
    assert n.threshold(0) is None and n.record(1e9, 0)["clipped"] is False
    assert ClipSchedule("none", warmup=0).threshold(0) is None  # not a ZClip without warm-up
    assert ClipSchedule("none").clip_fraction == 0.0


def test_defaults_are_pinned():
    c = ClipSchedule("decay")
    ident = {"policy": "decay", "schedule": "cosine", "start": 5.0, "end": 1.0, "total_steps": 1,
             "zclip_z": 2.5, "zclip_alpha": 0.97, "warmup": 10}
    assert c.state_dict() == {**ident, "n_obs": 0, "mean": 0.0, "var": 0.0, "m2": 0.0, "n_steps": 0,
                              "n_clipped": 0}


@pytest.mark.parametrize("args,kw,where,starts", [
    (("clamp",), {}, "clip.policy", "unknown clip policy 'clamp'; allowed: none, constant, decay, zclip"),
    (("decay", "step"), {}, "clip.schedule", "unknown clip schedule 'step'; allowed: linear, cosine, exponential"),
    (("decay",), dict(start=0.0), "clip.start/end", "clip thresholds must be > 0 (start=0.0, end=1.0)"),
    (("constant",), dict(end=0.0), "clip.start/end", "clip thresholds must be > 0 (start=5.0, end=0.0)"),
    (("decay",), dict(total_steps=0), "clip.total_steps", "total_steps must be >= 1, got 0"),
    (("zclip",), dict(zclip_z=0.0), "clip.zclip_z", "zclip_z must be > 0, got 0.0"),
    (("zclip",), dict(zclip_alpha=0.0), "clip.zclip_alpha", "zclip_alpha must be in (0, 1), got 0.0"),
    (("zclip",), dict(zclip_alpha=1.0), "clip.zclip_alpha", "zclip_alpha must be in (0, 1), got 1.0"),
    (("zclip",), dict(zclip_alpha=1.5), "clip.zclip_alpha", "zclip_alpha must be in (0, 1)"),
])
def test_constructor_validation(args, kw, where, starts):
    _raises(ConfigError, where, starts, ClipSchedule, *args, **kw)


def test_constructor_edges_accepted():
    assert ClipSchedule("zclip", zclip_z=0.5).zclip_z == 0.5
    assert ClipSchedule("none", start=0.0, end=-1.0).policy == "none"
    assert ClipSchedule("decay", total_steps=1).total_steps == 1


# ------------------------------------------------------------------ torch and checkpoints
def test_clip_applies_the_scheduled_threshold_to_gradients():
    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.full((4,), 2.0)  # norm 4
    c = ClipSchedule("decay", "linear", start=3.0, end=1.0, total_steps=4)
    rec = c.clip([p], 2)
    assert rec["grad_norm"] == pytest.approx(4.0) and rec["clip_threshold"] == 2.0 and rec["clipped"] is True
    assert float(p.grad.norm()) == pytest.approx(2.0, rel=1e-5)


def test_state_round_trip_and_refusals():
    c = _z()
    for s, g in enumerate([1.0, 3.0, 2.0, 9.0]):
        c.record(g, s)
    d = _z()
    d.load_state_dict(c.state_dict())
    assert d.state_dict() == c.state_dict() and d.threshold(9) == c.threshold(9)
    _raises(CheckpointError, "clip state", "checkpoint used clip policy 'zclip', config asks for 'decay'",
            ClipSchedule("decay").load_state_dict, c.state_dict())
    bad = {**c.state_dict(), "mean": "x"}
    _raises(CheckpointError, "clip state", "corrupt clip policy state (ValueError(", d.load_state_dict, bad)
    missing = {k: v for k, v in c.state_dict().items() if k != "n_obs"}
    _raises(CheckpointError, "clip state", "corrupt clip policy state (KeyError('n_obs')", d.load_state_dict, missing)
