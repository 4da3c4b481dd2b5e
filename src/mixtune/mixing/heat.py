"""Task heat and the closed-loop mixing controller (DESIGN.md §4, "Task selection (heat)").

Per evaluation cycle and task t, four components, each on a [0, 1] scale so their weights mean
what they say:

- ``decay``: drop from the task's best validation score so far (forgetting),
- ``cv``: coefficient of variation of per-sample scores, squashed as cv/(1+cv) (instability),
- ``rejection``: human rejection rate from review data,
- ``gap``: 1 - current score (how far from mastery, so a task that is simply weak gets heat
  even if it never decayed).

``raw_t`` is their weighted mean; heat is normalised across tasks by min-max with a floored
range, so the hottest task gets heat 1 only when tasks really differ — measurement noise between
near-identical tasks is not blown up into large weight swings. Then
``w_t ∝ base_t·exp(η·heat_t)``, ``w <- (1-c)·w + c/K``, floor/cap, and EMA over cycles.
"""

from __future__ import annotations

import math
import random

from mixtune.errors import CheckpointError, ConfigError, DataError
from mixtune.mixing.base import (
    base_weights,
    check_bounds,
    check_known,
    check_tasks,
    ema_mix,
    mix_uniform,
    normalise,
    project_bounded,
)

COMPONENTS = ("decay", "cv", "rejection", "gap")
# The one home of the mixing-policy defaults: factory.py and config.py import these.
DEFAULT_ETA = 2.0
DEFAULT_UNIFORM_MIX = 0.1
DEFAULT_FLOOR = 0.03
DEFAULT_CAP = 0.5
DEFAULT_EMA = 0.5
DEFAULT_HEAT_WEIGHTS = {"decay": 1.0, "cv": 0.5, "rejection": 0.5, "gap": 1.0}


class HeatTracker:
    """Keeps best/last scores per task and turns one cycle's metrics into heat components."""

    def __init__(self, tasks: list[str], heat_weights: dict[str, float] | None = None,
                 norm_floor: float = 0.1):
        hw = dict(heat_weights if heat_weights is not None else {c: 1.0 for c in COMPONENTS})
        unknown = sorted(set(hw) - set(COMPONENTS))
        if unknown:
            raise ConfigError(f"unknown heat components {unknown}; allowed: {list(COMPONENTS)}",
                              where="mixing.heat_weights")
        if any(v < 0 or not math.isfinite(v) for v in hw.values()):
            raise ConfigError(f"heat weights must be finite and >= 0, got {hw}", where="mixing.heat_weights")
        self.tasks = list(tasks)
        self.hw = {c: float(hw.get(c, 0.0)) for c in COMPONENTS}
        self.norm_floor = norm_floor
        self.best: dict[str, float] = {}
        # Last known component values: a task missing from one cycle's metrics keeps its evidence.
        self.last: dict[str, dict[str, float]] = {t: {c: 0.0 for c in COMPONENTS} for t in tasks}

    def observe(self, scores: dict[str, float], per_sample: dict[str, list[float]],
                rejection: dict[str, float]) -> dict[str, dict[str, float]]:
        """Update best scores and return ``task -> {heat, raw, decay, cv, rejection, gap}``."""
        comps: dict[str, dict[str, float]] = {}
        for t in self.tasks:
            c = dict(self.last[t])
            if t in scores:
                s = float(scores[t])
                best = max(self.best.get(t, s), s)
                self.best[t] = best
                c["decay"] = max(best - s, 0.0)
                c["gap"] = min(max(1.0 - s, 0.0), 1.0)
            if per_sample.get(t):
                c["cv"] = coefficient_of_variation(per_sample[t])
            if t in rejection:
                c["rejection"] = min(max(float(rejection[t]), 0.0), 1.0)
            self.last[t] = dict(c)
            comps[t] = c
        wsum = sum(self.hw.values())
        raw = {}
        for t, c in comps.items():
            cv_unit = c["cv"] / (1.0 + c["cv"])  # unbounded CV mapped into [0, 1)
            parts = {"decay": c["decay"], "cv": cv_unit, "rejection": c["rejection"], "gap": c["gap"]}
            raw[t] = sum(self.hw[k] * parts[k] for k in COMPONENTS) / wsum if wsum > 0 else 0.0
        lo, hi = min(raw.values()), max(raw.values())
        span = max(hi - lo, self.norm_floor)
        return {t: {"heat": (raw[t] - lo) / span, "raw": raw[t], **comps[t]} for t in self.tasks}

    def state_dict(self) -> dict:
        return {"best": dict(self.best), "last": {t: dict(c) for t, c in self.last.items()}}

    def load_state_dict(self, d: dict) -> None:
        self.best = {t: float(v) for t, v in d["best"].items()}
        self.last = {t: {c: float(v) for c, v in comp.items()} for t, comp in d["last"].items()}


def coefficient_of_variation(xs: list[float]) -> float:
    """Population std / mean; 0 for constant samples, 1 when the mean is ~0 but scores vary."""
    n = len(xs)
    mean = sum(xs) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / n)
    if abs(mean) < 1e-9:
        return 1.0 if std > 0 else 0.0
    return std / abs(mean)


class PolicyBase:
    """Common plumbing: validated bounds, a heat tracker for diagnostics, the final projection.

    Every method logs the same heat components (so baselines are comparable in
    ``mixing_log.jsonl``) even when, like ``uniform``, it ignores them.
    """

    method = "base"

    def __init__(self, tasks: list[str], base: dict[str, float] | None = None, *, eta: float = DEFAULT_ETA,
                 uniform_mix: float = DEFAULT_UNIFORM_MIX, floor: float = DEFAULT_FLOOR, cap: float = DEFAULT_CAP,
                 ema: float = DEFAULT_EMA, heat_weights: dict[str, float] | None = None, seed: int = 0):
        self.tasks = check_tasks(tasks)
        check_bounds(len(self.tasks), floor, cap)
        if not 0.0 <= uniform_mix <= 1.0:
            raise ConfigError(f"uniform_mix must be in [0, 1], got {uniform_mix}", where="mixing.uniform_mix")
        if not 0.0 <= ema < 1.0:
            raise ConfigError(f"ema must be in [0, 1), got {ema}", where="mixing.ema")
        if eta < 0 or not math.isfinite(eta):
            raise ConfigError(f"eta must be finite and >= 0, got {eta}", where="mixing.eta")
        self.base = base_weights(self.tasks, base)
        self.eta, self.c, self.floor, self.cap, self.ema = eta, uniform_mix, floor, cap, ema
        self.seed = seed
        self.rng = random.Random(seed)
        self.tracker = HeatTracker(self.tasks, DEFAULT_HEAT_WEIGHTS if heat_weights is None else heat_weights)
        self._w = self.finalise(self.initial())
        self.cycles = 0

    def initial(self) -> dict[str, float]:
        """Unprojected weights before any evidence (business value by default)."""
        return dict(self.base)

    def finalise(self, target: dict[str, float]) -> dict[str, float]:
        """Normalise, mix with uniform, then enforce floor/cap exactly."""
        return project_bounded(mix_uniform(normalise(target), self.c), self.floor, self.cap)

    def weights(self) -> dict[str, float]:
        """Current sampling weights (a copy), summing to 1."""
        return dict(self._w)

    def _begin(self, scores, per_sample, losses, rejection) -> dict[str, dict[str, float]]:
        for name, m in (("scores", scores), ("per_sample", per_sample), ("losses", losses),
                        ("rejection", rejection)):
            check_known(self.tasks, m or {}, name)
        for name, m in (("scores", scores), ("losses", losses), ("rejection", rejection)):
            bad = {t: v for t, v in (m or {}).items() if not math.isfinite(float(v))}
            if bad:  # a NaN here would silently poison every weight through the normalisation
                raise DataError(f"{name} are not finite: {bad}", where="mixing.update")
        self.cycles += 1
        return self.tracker.observe(scores or {}, per_sample or {}, rejection or {})

    def _record(self, cycle: int, step: int, scores, losses, heat, **extra) -> dict:
        return {"method": self.method, "cycle": cycle, "step": step,
                "scores": {t: float(v) for t, v in (scores or {}).items()},
                "losses": {t: float(v) for t, v in (losses or {}).items()},
                "heat": heat, "weights": self.weights(), **extra}

    def state_dict(self) -> dict:
        """JSON-serialisable state; subclasses add their own keys."""
        return {"method": self.method, "tasks": list(self.tasks), "weights": dict(self._w),
                "cycles": self.cycles, "tracker": self.tracker.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        """Restore from :meth:`state_dict`; refuses a state from another method or task set."""
        if d.get("method") != self.method or d.get("tasks") != self.tasks:
            raise CheckpointError(
                f"mixing state is for method={d.get('method')!r} tasks={d.get('tasks')}, "
                f"not method={self.method!r} tasks={self.tasks}", where="mixing.state")
        self._w = {t: float(d["weights"][t]) for t in self.tasks}
        self.cycles = int(d["cycles"])
        self.tracker.load_state_dict(d["tracker"])


class HeatController(PolicyBase):
    """The closed-loop controller: ``w ∝ base·exp(η·heat)``, uniform mix, floor/cap, EMA."""

    method = "heat"

    def update(self, cycle: int, step: int, scores: dict[str, float], per_sample: dict[str, list[float]],
               losses: dict[str, float], rejection: dict[str, float]) -> dict:
        """Recompute heat from this cycle's metrics and move the weights; return the record."""
        heat = self._begin(scores, per_sample, losses, rejection)
        raw = {t: self.base[t] * math.exp(self.eta * heat[t]["heat"]) for t in self.tasks}
        target = self.finalise(raw)
        # EMA of two bounded simplex points is bounded; re-project only to absorb float error.
        self._w = project_bounded(ema_mix(self._w, target, self.ema), self.floor, self.cap)
        return self._record(cycle, step, scores, losses, heat, target=target)
