"""Baseline mixing methods behind the same interface as :class:`HeatController`.

Aioli (2024) found no mixing method consistently beats stratified sampling, so the controller is
only worth its complexity if it beats these in a seeded ablation:

- ``uniform``: stratified over tasks, ``1/K`` forever;
- ``natural``: proportional to each task's training-set size (what concatenating the data gives);
- ``temperature``: ``w_t ∝ n_t^(1/τ)`` (T5/mT5 temperature sampling; τ = 3 by default, τ = 1 is
  ``natural``, τ → ∞ is ``uniform``);
- ``static``: proportional to business value (uniform-mixed, floored, capped), never moves;
- ``dbl``: Sheared-LLaMA dynamic batch loading, ``w <- softmax(log w + η·max(loss - ref, 0))``;
- ``exp3``: Online Data Mixing's EXP3 bandit; each cycle one arm (task) is drawn from the current
  distribution with a seeded RNG, its reward (relative loss decrease, else score gain) is
  importance-weighted by ``1/p`` and added to that arm's cumulative estimate.
"""

from __future__ import annotations

import math

from mixtune.errors import ConfigError
from mixtune.mixing.base import normalise, rng_state_from_json, rng_state_to_json, softmax
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


class TemperaturePolicy(PolicyBase):
    """Size-based sampling ``w_t ∝ n_t^(1/τ)``, fixed for the whole run.

    The textbook definition: no uniform mix, floor or cap (those would make it a different
    baseline), so ``uniform_mix``/``floor``/``cap`` are ignored. ``sizes`` are the per-task counts
    of training samples; every task needs one, since guessing a size would silently change the mix.
    """

    method = "temperature"

    def __init__(self, tasks, base=None, *, sizes: dict[str, float] | None = None, tau: float = 3.0, **kw):
        if sizes is None:
            raise ConfigError(f"mixing method {self.method!r} needs the per-task training-set sizes (sizes=...)",
                              where="stage2.mixing.method")
        missing = sorted(set(tasks) - set(sizes))
        bad = {t: v for t, v in sizes.items() if not (math.isfinite(v) and v >= 0)}
        if missing or bad or set(sizes) - set(tasks):
            raise ConfigError(f"sizes must give a finite count >= 0 for exactly the tasks {list(tasks)}; "
                              f"missing {missing}, invalid {bad}, unknown {sorted(set(sizes) - set(tasks))}",
                              where="mixing.sizes")
        if not (math.isfinite(tau) and tau > 0):
            raise ConfigError(f"temperature tau must be finite and > 0, got {tau}", where="mixing.tau")
        self.sizes = {t: float(sizes[t]) for t in tasks}
        self.tau = float(tau)
        super().__init__(tasks, base, **kw)

    def initial(self) -> dict[str, float]:
        return {t: self.sizes[t] ** (1.0 / self.tau) for t in self.tasks}

    def finalise(self, target: dict[str, float]) -> dict[str, float]:
        """Plain normalisation (see the class docstring)."""
        return normalise(target)

    def update(self, cycle, step, scores, per_sample, losses, rejection) -> dict:
        """Record the cycle's diagnostics; the weights do not change."""
        heat = self._begin(scores, per_sample, losses, rejection)
        return self._record(cycle, step, scores, losses, heat, tau=self.tau)


class NaturalPolicy(TemperaturePolicy):
    """Proportional to training-set size ("natural" mixing): temperature sampling with τ = 1."""

    method = "natural"

    def __init__(self, tasks, base=None, *, sizes: dict[str, float] | None = None, **kw):
        kw.pop("tau", None)
        super().__init__(tasks, base, sizes=sizes, tau=1.0, **kw)


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
