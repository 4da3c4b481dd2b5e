"""Baseline mixing methods behind the same interface as :class:`HeatController`.

Aioli (2024) found no mixing method consistently beats stratified sampling, so the controller is
only worth its complexity if it beats these in a seeded ablation:

- ``uniform``: stratified over tasks, ``1/K`` forever;
- ``static``: proportional to business value (uniform-mixed, floored, capped), never moves;
- ``dbl``: Sheared-LLaMA dynamic batch loading, ``w <- softmax(log w + η·max(loss - ref, 0))``;
- ``exp3``: Online Data Mixing's EXP3 bandit; each cycle one arm (task) is drawn from the current
  distribution with a seeded RNG, its reward (relative loss decrease, else score gain) is
  importance-weighted by ``1/p`` and added to that arm's cumulative estimate.
"""

from __future__ import annotations

import math

from mixtune.errors import ConfigError
from mixtune.mixing.base import rng_state_from_json, rng_state_to_json, softmax
from mixtune.mixing.heat import PolicyBase


class UniformPolicy(PolicyBase):
    """Stratified sampling: every task equally likely, whatever the metrics say."""

    method = "uniform"

    def initial(self) -> dict[str, float]:
        return {t: 1.0 for t in self.tasks}

    def update(self, cycle, step, scores, per_sample, losses, rejection) -> dict:
        """Record the cycle's diagnostics; the weights do not change."""
        heat = self._begin(scores, per_sample, losses, rejection)
        return self._record(cycle, step, scores, losses, heat)


class StaticPolicy(PolicyBase):
    """Fixed business-value mix (after uniform mixing, floor and cap)."""

    method = "static"

    def update(self, cycle, step, scores, per_sample, losses, rejection) -> dict:
        """Record the cycle's diagnostics; the weights do not change."""
        heat = self._begin(scores, per_sample, losses, rejection)
        return self._record(cycle, step, scores, losses, heat)


class DBLPolicy(PolicyBase):
    """Loss-gap dynamic batch loading (Xia et al., Sheared-LLaMA, 2023).

    Reference losses are given (e.g. from a larger model or a target) or taken from the first
    cycle that reports a task's loss; a task whose loss rises above its reference gains weight.
    """

    method = "dbl"

    def __init__(self, tasks, base=None, *, ref_losses: dict[str, float] | None = None, **kw):
        super().__init__(tasks, base, **kw)
        unknown = sorted(set(ref_losses or {}) - set(self.tasks))
        if unknown:
            raise ConfigError(f"reference losses for unknown tasks {unknown}", where="mixing.ref_losses")
        self.ref: dict[str, float] = {t: float(v) for t, v in (ref_losses or {}).items()}

    def update(self, cycle, step, scores, per_sample, losses, rejection) -> dict:
        """Apply one DBL step on the current weights; returns the record with the loss gaps."""
        heat = self._begin(scores, per_sample, losses, rejection)
        losses = losses or {}
        newly_ref = [t for t in self.tasks if t in losses and t not in self.ref]
        for t in newly_ref:
            self.ref[t] = float(losses[t])
        delta = {t: max(float(losses[t]) - self.ref[t], 0.0) if t in losses else 0.0 for t in self.tasks}
        logits = {t: math.log(max(self._w[t], 1e-300)) + self.eta * delta[t] for t in self.tasks}
        self._w = self.finalise(softmax(logits))
        return self._record(cycle, step, scores, losses, heat, loss_gap=delta,
                            reference=dict(self.ref), reference_set=newly_ref)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "ref": dict(self.ref)}

    def load_state_dict(self, d: dict) -> None:
        super().load_state_dict(d)
        self.ref = {t: float(v) for t, v in d["ref"].items()}


class Exp3Policy(PolicyBase):
    """EXP3 over tasks (Albalak et al., Online Data Mixing, 2023), cycle-level.

    ``uniform_mix`` plays the role of EXP3's exploration rate γ; ``eta`` is its learning rate.
    Rewards are clipped to [-1, 1] before importance weighting so one noisy cycle cannot
    saturate the distribution.
    """

    method = "exp3"

    def __init__(self, tasks, base=None, **kw):
        super().__init__(tasks, base, **kw)
        self.cum = {t: 0.0 for t in self.tasks}
        self.prev_loss: dict[str, float] = {}
        self.prev_score: dict[str, float] = {}

    def initial(self) -> dict[str, float]:
        return {t: 1.0 for t in self.tasks}

    def update(self, cycle, step, scores, per_sample, losses, rejection) -> dict:
        """Draw an arm, reward it, and move the distribution; returns arm, reward and p."""
        heat = self._begin(scores, per_sample, losses, rejection)
        scores, losses = scores or {}, losses or {}
        p = self.weights()
        arm = self.rng.choices(self.tasks, weights=[p[t] for t in self.tasks])[0]
        if arm in losses and arm in self.prev_loss:
            prev = self.prev_loss[arm]
            reward = (prev - float(losses[arm])) / max(abs(prev), 1e-12)
            source = "loss"
        elif arm in scores and arm in self.prev_score:
            reward = float(scores[arm]) - self.prev_score[arm]
            source = "score"
        else:
            reward, source = 0.0, "none"
        reward = min(max(reward, -1.0), 1.0)
        estimate = reward / p[arm]
        self.cum[arm] += estimate
        self.prev_loss.update({t: float(v) for t, v in losses.items()})
        self.prev_score.update({t: float(v) for t, v in scores.items()})
        self._w = self.finalise(softmax({t: self.eta * v for t, v in self.cum.items()}))
        return self._record(cycle, step, scores, losses, heat, arm=arm, reward=reward,
                            reward_source=source, probability=p[arm], estimate=estimate)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "cum": dict(self.cum), "prev_loss": dict(self.prev_loss),
                "prev_score": dict(self.prev_score), "rng": rng_state_to_json(self.rng.getstate())}

    def load_state_dict(self, d: dict) -> None:
        super().load_state_dict(d)
        self.cum = {t: float(d["cum"][t]) for t in self.tasks}
        self.prev_loss = {t: float(v) for t, v in d["prev_loss"].items()}
        self.prev_score = {t: float(v) for t, v in d["prev_score"].items()}
        self.rng.setstate(rng_state_from_json(d["rng"]))
