"""Gradient modulation by task group (DESIGN.md §4, "Gradient modulation").

Micro-batches are task-homogeneous (see :mod:`mixtune.mixing.sampler`), so each backward pass
belongs to one group and the group's treatment is applied without extra passes:

- ``logic`` (numbers, citations): loss multiplied by ``logic_gain`` > 1;
- ``style`` (official writing, public-opinion replies): the group's gradient is replaced by its
  EMA over style micro-batches, damping the high-variance surface-form signal;
- ``safety`` (PII masking, prohibited promises): an unlikelihood term on rule-flagged spans with
  weight ``safety_unlikelihood``;
- ``general``: untouched.

The logic is pure Python/numpy; the trainer applies it. :func:`ema_update` uses only ``*`` and
``+`` so the trainer can call it on torch tensors per parameter as well.

Adaptive alternative behind the same interface: :class:`AdaptiveModulation` with uncertainty
weighting (Kendall et al., 2018) or FAMO (Liu et al., 2023), fed one loss per micro-batch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mixtune.errors import CheckpointError, ConfigError

GROUPS = ("logic", "style", "safety", "general")


def ema_update(prev: Any, new: Any, beta: float) -> Any:
    """``beta·prev + (1-beta)·new``; the first call (``prev is None``) returns a copy of ``new``.

    Starting from the first gradient instead of zeros avoids the start-up bias that would
    shrink early style updates. Works on numpy arrays, torch tensors and floats.
    """
    if isinstance(new, (list, tuple)):
        new = np.asarray(new, dtype=np.float64)
    if prev is None:
        return new * 1.0
    return prev * beta + new * (1.0 - beta)


def _check_group(group: str) -> str:
    if group not in GROUPS:
        raise ConfigError(f"unknown task group {group!r}; allowed: {list(GROUPS)}", where="modulation.group")
    return group


class GroupModulation:
    """Fixed per-group treatment: logic gain, style EMA, safety unlikelihood."""

    method = "groups"

    def __init__(self, logic_gain: float = 1.5, style_ema: float = 0.9, safety_unlikelihood: float = 0.5,
                 enabled: bool = True):
        if logic_gain <= 0 or not 0.0 <= style_ema < 1.0 or safety_unlikelihood < 0:
            raise ConfigError(f"need logic_gain > 0, 0 <= style_ema < 1, safety_unlikelihood >= 0; got "
                              f"{logic_gain}, {style_ema}, {safety_unlikelihood}", where="stage2.modulation")
        self.logic_gain, self.style_ema, self.safety_ul = logic_gain, style_ema, safety_unlikelihood
        self.enabled = enabled
        self.buffers: dict[str, Any] = {}

    def loss_scale(self, group: str) -> float:
        """Multiplier on a micro-batch's loss: ``logic_gain`` for logic, 1 otherwise."""
        _check_group(group)
        return self.logic_gain if self.enabled and group == "logic" else 1.0

    def unlikelihood_weight(self, group: str) -> float:
        """Weight of the unlikelihood term on flagged spans; > 0 only for safety."""
        _check_group(group)
        return self.safety_ul if self.enabled and group == "safety" else 0.0

    def smooth_style(self, grad: Any, key: str = "flat") -> Any:
        """Return the EMA of the style gradient stream ``key`` including ``grad``.

        ``key`` lets the trainer keep one buffer per parameter; when disabled the gradient is
        returned unchanged.
        """
        if not self.enabled:
            return grad
        self.buffers[key] = ema_update(self.buffers.get(key), grad, self.style_ema)
        return self.buffers[key]

    def observe(self, group: str, loss: float) -> None:
        """Fixed gains ignore losses; present so trainers treat all modulations alike."""
        _check_group(group)

    def factors(self) -> dict[str, float]:
        """Loss multiplier per group, for ``mixing_log.jsonl``."""
        return {g: self.loss_scale(g) for g in GROUPS}

    def state_dict(self, include_buffers: bool = True) -> dict:
        """JSON state; style buffers as lists (skip them if the trainer saves its own tensors)."""
        # tolist() exists on numpy arrays and torch tensors alike (CPU or GPU).
        bufs = {k: v.tolist() if hasattr(v, "tolist") else float(v)
                for k, v in self.buffers.items()} if include_buffers else {}
        return {"method": self.method, "buffers": bufs}

    def load_state_dict(self, d: dict) -> None:
        if d.get("method") != self.method:
            raise CheckpointError(f"modulation state is for {d.get('method')!r}, not {self.method!r}",
                                  where="modulation.state")
        self.buffers = {k: np.asarray(v, dtype=np.float64) for k, v in d.get("buffers", {}).items()}


class AdaptiveModulation:
    """Learned per-group loss weights: uncertainty weighting or FAMO.

    ``uncertainty``: one log-variance ``s_g`` per group, descended on ``exp(-s)·L + s`` with
    ``ds = 1 - exp(-s)·L``; weights ``exp(-s_g)`` rescaled to mean 1 so the method redistributes
    emphasis without silently changing the effective learning rate.

    ``famo``: logits ``ξ``, ``z = softmax(ξ)``; after consecutive losses of group ``g`` the
    log-loss decrease ``δ_g`` drives ``ξ <- ξ - lr·((diag z - z zᵀ)δ + decay·ξ)``, so a group whose
    loss falls fastest loses weight. Scale of group ``g`` is ``K·c·z_g/ℓ_g`` with
    ``c = 1/Σ z_i/ℓ_i`` (gradient of ``Σ z_i log ℓ_i``, normalised).
    """

    def __init__(self, groups: list[str] | tuple[str, ...] = GROUPS, method: str = "uncertainty",
                 lr: float = 0.025, seed: int = 0, safety_unlikelihood: float = 0.5, decay: float = 1e-3):
        if method not in ("uncertainty", "famo"):
            raise ConfigError(f"unknown adaptive method {method!r}; allowed: ['famo', 'uncertainty']",
                              where="stage2.modulation.method")
        self.groups = [_check_group(g) for g in groups]
        self.method, self.lr, self.decay = method, float(lr), float(decay)
        self.seed = seed  # both methods are deterministic; kept so every policy is built alike
        self.safety_ul = safety_unlikelihood
        self.param = {g: 0.0 for g in self.groups}  # s_g (uncertainty) or ξ_g (famo)
        self.last_loss: dict[str, float] = {}

    def _z(self) -> dict[str, float]:
        m = max(self.param.values())
        ex = {g: math.exp(v - m) for g, v in self.param.items()}
        s = sum(ex.values())
        return {g: v / s for g, v in ex.items()}

    def observe(self, group: str, loss: float) -> None:
        """Feed the loss of one micro-batch of ``group`` (before scaling)."""
        _check_group(group)
        if group not in self.param:
            raise ConfigError(f"group {group!r} not among {self.groups}", where="modulation.observe")
        loss = max(float(loss), 1e-8)
        if self.method == "uncertainty":
            s = self.param[group]
            self.param[group] = s - self.lr * (1.0 - math.exp(-s) * loss)
        elif group in self.last_loss:
            delta = math.log(self.last_loss[group]) - math.log(loss)
            z = self._z()
            zd = z[group] * delta  # z·δ with δ non-zero only at the observed group
            for g in self.groups:
                grad = z[g] * ((delta if g == group else 0.0) - zd)
                self.param[g] -= self.lr * (grad + self.decay * self.param[g])
        self.last_loss[group] = loss

    def loss_scale(self, group: str) -> float:
        """Multiplier on a micro-batch loss of ``group``."""
        _check_group(group)
        if group not in self.param:
            return 1.0
        if self.method == "uncertainty":
            w = {g: math.exp(-s) for g, s in self.param.items()}
            return w[group] * len(w) / sum(w.values())
        known = [g for g in self.groups if g in self.last_loss]
        if group not in known:
            return 1.0
        z = self._z()
        c = 1.0 / sum(z[g] / self.last_loss[g] for g in known)
        return len(known) * c * z[group] / self.last_loss[group]

    def unlikelihood_weight(self, group: str) -> float:
        """Unlikelihood stays a safety-only term under adaptive weighting."""
        _check_group(group)
        return self.safety_ul if group == "safety" else 0.0

    def smooth_style(self, grad: Any, key: str = "flat") -> Any:
        """Adaptive methods reweight losses only; gradients pass through unchanged."""
        return grad

    def factors(self) -> dict[str, float]:
        """Loss multiplier per group, for ``mixing_log.jsonl``."""
        return {g: self.loss_scale(g) for g in self.groups}

    def state_dict(self) -> dict:
        return {"method": self.method, "param": dict(self.param), "last_loss": dict(self.last_loss)}

    def load_state_dict(self, d: dict) -> None:
        if d.get("method") != self.method or set(d.get("param", {})) != set(self.groups):
            raise CheckpointError(f"modulation state is for {d.get('method')!r} over {sorted(d.get('param', {}))}",
                                  where="modulation.state")
        self.param = {g: float(d["param"][g]) for g in self.groups}
        self.last_loss = {g: float(v) for g, v in d["last_loss"].items()}


def make_modulation(method: str = "groups", *, enabled: bool = True, logic_gain: float = 1.5,
                    style_ema: float = 0.9, safety_unlikelihood: float = 0.5, lr: float = 0.025,
                    seed: int = 0, groups: list[str] | tuple[str, ...] = GROUPS):
    """Build ``groups`` (fixed) or ``famo`` / ``uncertainty`` (adaptive) modulation."""
    if method == "groups" or not enabled:
        return GroupModulation(logic_gain, style_ema, safety_unlikelihood, enabled=enabled)
    return AdaptiveModulation(groups, method=method, lr=lr, seed=seed, safety_unlikelihood=safety_unlikelihood)
