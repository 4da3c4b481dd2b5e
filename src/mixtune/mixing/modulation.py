"""Gradient modulation by task group (DESIGN.md §4, "Gradient modulation").

Micro-batches are task-homogeneous (see :mod:`mixtune.mixing.sampler`), so each backward pass
belongs to one group and the group's treatment is applied without extra passes:

- ``logic`` (numbers, citations): loss multiplied by ``logic_gain`` > 1;
- ``style`` (official writing, public-opinion replies): the group's gradient is replaced by its
  EMA over style micro-batches, damping the high-variance surface-form signal;
- ``safety`` (PII masking, prohibited promises): an unlikelihood term on rule-flagged spans with
  weight ``safety_unlikelihood``;
- ``general``: untouched.

The trainer applies the loss factors; the style EMA is applied by the modulation object itself,
in place on the gradients (:meth:`GroupModulation.smooth_style_`), and its buffers are part of
the training checkpoint (:meth:`GroupModulation.style_buffers`).

Adaptive alternative behind the same interface: :class:`AdaptiveModulation` with uncertainty
weighting (Kendall et al., 2018) or FAMO (Liu et al., 2023), fed one loss per micro-batch.
"""

from __future__ import annotations

import math

from mixtune.errors import CheckpointError, ConfigError

GROUPS = ("logic", "style", "safety", "general")
# The one home of the modulation defaults (config.py imports them).
DEFAULT_LOGIC_GAIN = 1.5
DEFAULT_STYLE_EMA = 0.9
DEFAULT_SAFETY_UNLIKELIHOOD = 0.5
DEFAULT_ADAPTIVE_LR = 0.025


def _check_group(group: str) -> str:
    if group not in GROUPS:
        raise ConfigError(f"unknown task group {group!r}; allowed: {list(GROUPS)}", where="modulation.group")
    return group


class GroupModulation:
    """Fixed per-group treatment: logic gain, style EMA, safety unlikelihood."""

    method = "groups"

    def __init__(self, logic_gain: float = DEFAULT_LOGIC_GAIN, style_ema: float = DEFAULT_STYLE_EMA,
                 safety_unlikelihood: float = DEFAULT_SAFETY_UNLIKELIHOOD, enabled: bool = True):
        if logic_gain <= 0 or not 0.0 <= style_ema < 1.0 or safety_unlikelihood < 0:
            raise ConfigError(f"need logic_gain > 0, 0 <= style_ema < 1, safety_unlikelihood >= 0; got "
                              f"{logic_gain}, {style_ema}, {safety_unlikelihood}", where="stage2.modulation")
        self.logic_gain, self.style_ema, self.safety_ul = logic_gain, style_ema, safety_unlikelihood
        self.enabled = enabled
        # Style EMA, one per trainable parameter (lazy). Tensors are used through their own methods,
        # so the mixing package never imports torch and its maths stays testable alone.
        self.buffers: list = []
        self.style_steps = 0

    def loss_scale(self, group: str) -> float:
        """Multiplier on a micro-batch's loss: ``logic_gain`` for logic, 1 otherwise."""
        _check_group(group)
        return self.logic_gain if self.enabled and group == "logic" else 1.0

    def unlikelihood_weight(self, group: str) -> float:
        """Weight of the unlikelihood term on flagged spans; > 0 only for safety."""
        _check_group(group)
        return self.safety_ul if self.enabled and group == "safety" else 0.0

    def smooth_style_(self, params: list) -> None:
        """Replace each parameter's gradient, in place, by the bias-corrected EMA of the style gradients.

        ``buf <- β·buf + (1-β)·grad`` from zero buffers, then ``grad <- buf / (1 - β^n)`` after the
        n-th style step: the first style step passes its gradient unchanged, later ones are damped.
        Parameters without a gradient keep their buffer. Call it after the backward passes of a
        style step; when disabled it does nothing.
        """
        if not self.enabled:
            return
        if len(self.buffers) != len(params):
            self.buffers = [p.detach().new_zeros(p.shape) for p in params]
        self.style_steps += 1
        corr = 1 - self.style_ema ** self.style_steps
        for p, buf in zip(params, self.buffers):
            if p.grad is not None:
                buf.mul_(self.style_ema).add_(p.grad, alpha=1 - self.style_ema)
                p.grad.copy_(buf / corr)

    def style_buffers(self) -> list:
        """The EMA buffers on the CPU, one per parameter (saved beside the checkpoint's weights)."""
        return [b.detach().cpu() for b in self.buffers]

    def load_style_buffers(self, buffers: list, params: list) -> None:
        """Restore buffers saved by :meth:`style_buffers` onto the parameters' devices."""
        if buffers and len(buffers) != len(params):
            raise CheckpointError(f"{len(buffers)} style buffers for {len(params)} parameters",
                                  where="modulation.style_ema")
        self.buffers = [b.to(p.device, copy=True) for b, p in zip(buffers, params)]

    def observe(self, group: str, loss: float) -> None:
        """Fixed gains ignore losses; present so trainers treat all modulations alike."""
        _check_group(group)

    def factors(self) -> dict[str, float]:
        """Loss multiplier per group, for ``mixing_log.jsonl``."""
        return {g: self.loss_scale(g) for g in GROUPS}

    def state_dict(self) -> dict:
        """JSON state (the style step count); the tensors go through :meth:`style_buffers`."""
        return {"method": self.method, "style_steps": self.style_steps}

    def load_state_dict(self, d: dict) -> None:
        if d.get("method") != self.method:
            raise CheckpointError(f"modulation state is for {d.get('method')!r}, not {self.method!r}",
                                  where="modulation.state")
        self.style_steps = int(d.get("style_steps", 0))


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
                 lr: float = DEFAULT_ADAPTIVE_LR, seed: int = 0,
                 safety_unlikelihood: float = DEFAULT_SAFETY_UNLIKELIHOOD, decay: float = 1e-3):
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

    def smooth_style_(self, params: list) -> None:
        """Adaptive methods reweight losses only; gradients are left unchanged."""

    def style_buffers(self) -> list:
        return []

    def load_style_buffers(self, buffers: list, params: list) -> None:
        """Nothing to restore: adaptive methods keep no gradient buffers."""

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


def make_modulation(method: str = "groups", *, enabled: bool = True, logic_gain: float = DEFAULT_LOGIC_GAIN,
                    style_ema: float = DEFAULT_STYLE_EMA, safety_unlikelihood: float = DEFAULT_SAFETY_UNLIKELIHOOD,
                    lr: float = DEFAULT_ADAPTIVE_LR, seed: int = 0, groups: list[str] | tuple[str, ...] = GROUPS):
    """Build ``groups`` (fixed) or ``famo`` / ``uncertainty`` (adaptive) modulation."""
    if method == "groups" or not enabled:
        return GroupModulation(logic_gain, style_ema, safety_unlikelihood, enabled=enabled)
    return AdaptiveModulation(groups, method=method, lr=lr, seed=seed, safety_unlikelihood=safety_unlikelihood)
