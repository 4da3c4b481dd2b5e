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
from mixtune.mixing.heat import HeatController

POLICIES = {"heat": HeatController, "uniform": UniformPolicy, "static": StaticPolicy,
            "dbl": DBLPolicy, "exp3": Exp3Policy, "natural": NaturalPolicy, "temperature": TemperaturePolicy}


def make_policy(method: str, tasks: list[str], base: dict[str, float] | None = None, *, eta: float = 2.0,
                uniform_mix: float = 0.1, floor: float = 0.03, cap: float = 0.5, ema: float = 0.5,
                heat_weights: dict[str, float] | None = None, seed: int = 0,
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
    kw = dict(eta=eta, uniform_mix=uniform_mix, floor=floor, cap=cap, heat_weights=heat_weights, seed=seed)
    if method == "heat":
        kw["ema"] = ema
    if method == "dbl":
        return DBLPolicy(tasks, base, ref_losses=ref_losses, **kw)
    if method == "natural":
        return NaturalPolicy(tasks, base, sizes=sizes, **kw)
    if method == "temperature":
        return TemperaturePolicy(tasks, base, sizes=sizes, tau=tau, **kw)
    return POLICIES[method](tasks, base, **kw)
