"""Build a mixing policy by name, with flat typed arguments (never the config object)."""

from __future__ import annotations

from mixtune.errors import ConfigError
from mixtune.mixing.base import MixingPolicy
from mixtune.mixing.baselines import (
    DBLPolicy,
    Exp3Policy,
    NaturalPolicy,
    StaticPolicy,
    TemperaturePolicy,
    UniformPolicy,
)
from mixtune.mixing.heat import (
    DEFAULT_CAP,
    DEFAULT_EMA,
    DEFAULT_ETA,
    DEFAULT_FLOOR,
    DEFAULT_UNIFORM_MIX,
    HeatController,
)

POLICIES = {"heat": HeatController, "uniform": UniformPolicy, "static": StaticPolicy,
            "dbl": DBLPolicy, "exp3": Exp3Policy, "natural": NaturalPolicy, "temperature": TemperaturePolicy}


def make_policy(method: str, tasks: list[str], base: dict[str, float] | None = None, *, eta: float = DEFAULT_ETA,
                uniform_mix: float = DEFAULT_UNIFORM_MIX, floor: float = DEFAULT_FLOOR, cap: float = DEFAULT_CAP,
                ema: float = DEFAULT_EMA, heat_weights: dict[str, float] | None = None, seed: int = 0,
                ref_losses: dict[str, float] | None = None, sizes: dict[str, float] | None = None,
                tau: float = 3.0) -> MixingPolicy:
    """Return the policy named ``method`` ("heat" | "uniform" | "static" | "dbl" | "exp3" | "natural" |
    "temperature").

    ``ema`` smooths the heat controller only: DBL and EXP3 carry their own momentum in their
    logits. ``ref_losses`` is used by DBL only (else the first cycle's losses become the
    reference). ``sizes`` (per-task training-set counts) is required by ``natural`` and
    ``temperature`` (which also takes ``tau``) and ignored by the others.
    """
    if method not in POLICIES:
        raise ConfigError(f"unknown mixing method {method!r}; allowed: {sorted(POLICIES)}",
                          where="stage2.mixing.method")
    # ``ema`` is the heat controller's smoothing; the baselines run without it.
    kw = dict(eta=eta, uniform_mix=uniform_mix, floor=floor, cap=cap, heat_weights=heat_weights, seed=seed,
              ema=ema if method == "heat" else 0.0)
    if method == "dbl":
        return DBLPolicy(tasks, base, ref_losses=ref_losses, **kw)
    if method == "natural":
        return NaturalPolicy(tasks, base, sizes=sizes, **kw)
    if method == "temperature":
        return TemperaturePolicy(tasks, base, sizes=sizes, tau=tau, **kw)
    return POLICIES[method](tasks, base, **kw)
