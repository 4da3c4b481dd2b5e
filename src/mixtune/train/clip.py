"""Gradient-clipping policies: none, constant, decaying threshold, and ZClip.

The loop owns the actual clipping so it can use ``accelerator.clip_grad_norm_`` (which knows about
sharded / DeepSpeed parameters). A policy only decides the threshold and books what happened::

    thr = policy.threshold(step)                       # None: do not clip
    norm = accelerator.clip_grad_norm_(params, thr if thr is not None else float("inf"))
    rec = policy.record(norm, step)                    # {"grad_norm", "clip_threshold", "clipped", ...}

Outside accelerate, ``policy.clip(model.parameters(), step)`` does both halves with
``torch.nn.utils.clip_grad_norm_``.

ZClip (Kumar et al., 2025) keeps an exponential moving mean/variance of the total grad norm and
clips a step whose z-score exceeds ``zclip_z`` down to ``mean + z * std``; the first ``warmup``
observations only collect statistics. The statistics are fed the *clipped* norm so one spike does
not inflate the variance and open the door for the next one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from mixtune.errors import CheckpointError, ConfigError

POLICIES = ("none", "constant", "decay", "zclip")
SCHEDULES = ("linear", "cosine", "exponential")


def _as_float(norm: Any) -> float:
    """Accept a Python number or a 0-d tensor (what ``clip_grad_norm_`` returns)."""
    if hasattr(norm, "item"):
        norm = norm.item()
    return float(norm)


class ClipSchedule:
    """A checkpointable clipping policy (no randomness); see the module docstring for the loop contract."""

    def __init__(
        self,
        policy: str,
        schedule: str = "cosine",
        start: float = 5.0,
        end: float = 1.0,
        total_steps: int = 1,
        zclip_z: float = 2.5,
        zclip_alpha: float = 0.97,
        warmup: int = 10,
    ):
        if policy not in POLICIES:
            raise ConfigError(f"unknown clip policy {policy!r}; allowed: {', '.join(POLICIES)}", "clip.policy")
        if schedule not in SCHEDULES:
            raise ConfigError(f"unknown clip schedule {schedule!r}; allowed: {', '.join(SCHEDULES)}",
                              "clip.schedule")
        if policy in ("constant", "decay") and not (start > 0 and end > 0):
            raise ConfigError(f"clip thresholds must be > 0 (start={start}, end={end})", "clip.start/end")
        if total_steps < 1:
            raise ConfigError(f"total_steps must be >= 1, got {total_steps}", "clip.total_steps")
        if zclip_z <= 0:
            raise ConfigError(f"zclip_z must be > 0, got {zclip_z}", "clip.zclip_z")
        if not 0 < zclip_alpha < 1:
            raise ConfigError(f"zclip_alpha must be in (0, 1), got {zclip_alpha}", "clip.zclip_alpha")
        if warmup < 1 and policy == "zclip":
            # With no warm-up the first z-score would be computed against an empty history.
            raise ConfigError(f"zclip warmup must be >= 1, got {warmup}", "clip.warmup")
        self.policy, self.schedule = policy, schedule
        self.start, self.end, self.total_steps = float(start), float(end), int(total_steps)
        self.zclip_z, self.zclip_alpha, self.warmup = float(zclip_z), float(zclip_alpha), int(warmup)
        # Running statistics (ZClip) and counters (all policies); everything here is checkpointed.
        self._n_obs = 0          # finite norms folded into the statistics
        self._mean = 0.0
        self._var = 0.0
        self._m2 = 0.0           # Welford sum of squares, used only during warm-up
        self._n_steps = 0        # steps recorded
        self._n_clipped = 0

    # ------------------------------------------------------------------ thresholds
    def _decay(self, step: int) -> float:
        p = min(max(step, 0), self.total_steps) / self.total_steps
        # Exact endpoints: floating-point formulas (cos(pi), exp/log) are not exact at 0 and 1.
        if p <= 0.0:
            return self.start
        if p >= 1.0:
            return self.end
        if self.schedule == "linear":
            return self.start + (self.end - self.start) * p
        if self.schedule == "cosine":
            return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * p))
        return self.start * (self.end / self.start) ** p  # exponential (geometric interpolation)

    def _std(self) -> float:
        # A floor relative to the mean: when norms are nearly constant the raw std is ~0 and any
        # rounding-level wobble would count as a "spike" and inflate the clipped fraction.
        return max(math.sqrt(max(self._var, 0.0)), 1e-3 * abs(self._mean), 1e-12)

    def threshold(self, step: int) -> float | None:
        """Clip threshold for ``step``; ``None`` means "do not clip" (policy none, ZClip warm-up)."""
        if self.policy == "none":
            return None
        if self.policy == "constant":
            return self.start
        if self.policy == "decay":
            return self._decay(step)
        if self._n_obs < self.warmup:
            return None
        return self._mean + self.zclip_z * self._std()

    # ------------------------------------------------------------------ bookkeeping
    def record(self, norm: Any, step: int) -> dict[str, Any]:
        """Book the pre-clip total grad norm of ``step`` (as returned by ``clip_grad_norm_``).

        Must follow ``threshold(step)`` for the same step, before the next ``threshold`` call:
        ZClip's threshold depends on the statistics this call updates. Returns
        ``{"grad_norm", "clip_threshold", "clipped", "clip_fraction"}``.
        """
        thr = self.threshold(step)
        if norm is None:
            # accelerate under DeepSpeed returns None when the engine has no norm yet (DeepSpeed
            # clips by its own config there); book the step without inventing a value.
            self._n_steps += 1
            return {"grad_norm": None, "clip_threshold": thr, "clipped": False,
                    "clip_fraction": self.clip_fraction}
        g = _as_float(norm)
        finite = math.isfinite(g)
        # A non-finite norm is always reported as clipped: the step's gradient is unusable.
        clipped = (not finite) or (thr is not None and g > thr)
        self._n_steps += 1
        self._n_clipped += int(clipped)
        if self.policy == "zclip" and finite:
            self._update_stats(min(g, thr) if thr is not None else g)
        return {"grad_norm": g, "clip_threshold": thr, "clipped": bool(clipped),
                "clip_fraction": self.clip_fraction}

    observe = record  # alias: "observe a precomputed norm"

    def _update_stats(self, x: float) -> None:
        if self._n_obs < self.warmup:
            # Warm-up: exact running mean/variance (Welford) so the EMA starts from real statistics.
            self._n_obs += 1
            delta = x - self._mean
            self._mean += delta / self._n_obs
            self._m2 += delta * (x - self._mean)
            self._var = self._m2 / self._n_obs
            return
        self._n_obs += 1
        a = self.zclip_alpha
        self._mean = a * self._mean + (1 - a) * x
        self._var = a * self._var + (1 - a) * (x - self._mean) ** 2

    def clip(self, parameters: Iterable[Any], step: int) -> dict[str, Any]:
        """Clip ``parameters``' gradients in place for ``step`` and return the ``record`` dict."""
        thr = self.threshold(step)
        norm = torch.nn.utils.clip_grad_norm_(list(parameters), thr if thr is not None else float("inf"))
        return self.record(norm, step)

    @property
    def clip_fraction(self) -> float:
        """Fraction of recorded steps that were clipped (0.0 before any step)."""
        return self._n_clipped / self._n_steps if self._n_steps else 0.0

    # ------------------------------------------------------------------ checkpointing
    def _identity(self) -> dict[str, Any]:
        return {"policy": self.policy, "schedule": self.schedule, "start": self.start, "end": self.end,
                "total_steps": self.total_steps, "zclip_z": self.zclip_z, "zclip_alpha": self.zclip_alpha,
                "warmup": self.warmup}

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: the settings it was built with plus running statistics."""
        return {**self._identity(), "n_obs": self._n_obs, "mean": self._mean, "var": self._var,
                "m2": self._m2, "n_steps": self._n_steps, "n_clipped": self._n_clipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore running statistics; refuses a state saved under a different policy."""
        try:
            saved = {k: state[k] for k in self._identity()}
            if saved["policy"] != self.policy:
                raise CheckpointError(
                    f"checkpoint used clip policy {saved['policy']!r}, config asks for {self.policy!r}",
                    "clip state")
            # Schedule settings may legitimately change on resume (e.g. more total steps); keep the
            # configured ones and only restore what was learned.
            self._n_obs, self._n_steps, self._n_clipped = (int(state["n_obs"]), int(state["n_steps"]),
                                                           int(state["n_clipped"]))
            self._mean, self._var, self._m2 = float(state["mean"]), float(state["var"]), float(state["m2"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"corrupt clip policy state ({exc!r})", "clip state") from exc
