"""Shared pieces of every mixing policy: the protocol, weight arithmetic, input checks.

All weights here are plain ``dict[str, float]`` over a fixed, ordered task list. Nothing needs
torch: the trainer calls :meth:`MixingPolicy.update` once per evaluation cycle and saves
``state_dict()`` (JSON) next to the optimizer.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

from mixtune.errors import ConfigError, DataError


@runtime_checkable
class MixingPolicy(Protocol):
    """What the trainer and the sampler need from any task-mixing method."""

    tasks: list[str]
    method: str

    def weights(self) -> dict[str, float]:
        """Current sampling weights over ``tasks``; they sum to 1."""
        ...

    def update(self, cycle: int, step: int, scores: dict[str, float], per_sample: dict[str, list[float]],
               losses: dict[str, float], rejection: dict[str, float]) -> dict:
        """Consume one evaluation cycle's metrics; return the decision record (JSON-able)."""
        ...

    def state_dict(self) -> dict:
        ...

    def load_state_dict(self, d: dict) -> None:
        ...


def normalise(w: dict[str, float]) -> dict[str, float]:
    """Scale non-negative weights to sum 1; all-zero becomes uniform (no task is favoured)."""
    total = sum(w.values())
    if not math.isfinite(total) or total <= 0:
        return {t: 1.0 / len(w) for t in w}
    return {t: v / total for t, v in w.items()}


def mix_uniform(w: dict[str, float], c: float) -> dict[str, float]:
    """``w <- (1-c)·w + c/K``: keeps every task reachable whatever the signal says."""
    k = len(w)
    return {t: (1.0 - c) * v + c / k for t, v in w.items()}


def check_bounds(k: int, floor: float, cap: float) -> None:
    """Raise :class:`ConfigError` unless K weights can sum to 1 within [floor, cap]."""
    if not (0.0 <= floor < 1.0) or not (0.0 < cap <= 1.0) or floor > cap:
        raise ConfigError(f"need 0 <= floor <= cap <= 1, got floor={floor}, cap={cap}", where="mixing")
    if k * floor > 1.0 + 1e-12:
        raise ConfigError(f"floor={floor} with {k} tasks cannot hold ({k}×{floor} > 1); "
                          f"set it <= {1 / k:.4g}", where="mixing.floor")
    if k * cap < 1.0 - 1e-12:
        raise ConfigError(f"cap={cap} with {k} tasks cannot hold ({k}×{cap} < 1); "
                          f"set it >= {1 / k:.4g}", where="mixing.cap")


def project_bounded(w: dict[str, float], floor: float, cap: float) -> dict[str, float]:
    """Return weights summing to 1 with ``floor <= w_t <= cap`` and order preserved.

    Clipping then renormalising breaks the bounds again (renormalising a capped weight pushes it
    back over the cap), so instead solve exactly for the scale ``s`` with
    ``sum_t clip(s·w_t, floor, cap) = 1``. The sum is piecewise linear and nondecreasing in ``s``
    with breakpoints at ``floor/w_t`` and ``cap/w_t``; find the segment, solve the linear piece.
    """
    check_bounds(len(w), floor, cap)
    # A zero weight would stay pinned at the floor for every s; a tiny positive value lets the
    # equation always have a solution while changing nothing measurable.
    vals = {t: max(float(v), 1e-12) for t, v in w.items()}

    def total(s: float) -> float:
        return sum(min(max(s * v, floor), cap) for v in vals.values())

    points = sorted({b / v for v in vals.values() for b in (floor, cap) if b > 0})
    lo = 0.0
    for p in points:
        if total(p) >= 1.0:
            break
        lo = p
    else:  # unreachable when k·cap >= 1, kept so a float edge never loops on garbage
        p = points[-1]
    mid = (lo + p) / 2.0
    fixed = 0.0
    free = 0.0
    for v in vals.values():
        x = mid * v
        if x <= floor:
            fixed += floor
        elif x >= cap:
            fixed += cap
        else:
            free += v
    s = (1.0 - fixed) / free if free > 0 else p
    out = {t: min(max(s * v, floor), cap) for t, v in vals.items()}
    # Remove the last ulp-level residual on an unclamped entry so the sum is 1 to machine precision.
    resid = 1.0 - sum(out.values())
    inner = [t for t, x in out.items() if floor < x < cap]
    if inner and abs(resid) > 0:
        t = max(inner, key=lambda u: out[u])
        out[t] = min(max(out[t] + resid, floor), cap)
    return out


def ema_mix(prev: dict[str, float], target: dict[str, float], beta: float) -> dict[str, float]:
    """``beta·prev + (1-beta)·target``; a convex mix of bounded simplex points stays bounded."""
    return {t: beta * prev[t] + (1.0 - beta) * target[t] for t in prev}


def check_tasks(tasks: list[str]) -> list[str]:
    """Validate a policy's task list (non-empty, unique ids)."""
    if not tasks:
        raise ConfigError("at least one task is needed", where="mixing.tasks")
    if len(set(tasks)) != len(tasks):
        dup = sorted({t for t in tasks if tasks.count(t) > 1})
        raise ConfigError(f"duplicate task ids: {dup}", where="mixing.tasks")
    return list(tasks)


def check_known(tasks: list[str], mapping: dict, what: str) -> None:
    """Metrics for a task the policy does not know mean the caller wired the wrong run."""
    unknown = sorted(set(mapping) - set(tasks))
    if unknown:
        raise DataError(f"{what} names unknown tasks {unknown}; known: {tasks}", where="mixing.update")


def base_weights(tasks: list[str], base: dict[str, float] | None) -> dict[str, float]:
    """Business-value weights, normalised; a task missing from ``base`` counts as value 1."""
    base = dict(base or {})
    unknown = sorted(set(base) - set(tasks))
    if unknown:
        raise ConfigError(f"business value given for unknown tasks {unknown}", where="mixing.base")
    for t, v in base.items():
        if not math.isfinite(v) or v < 0:
            raise ConfigError(f"business value must be finite and >= 0, got {v}", where=f"mixing.base.{t}")
    return normalise({t: float(base.get(t, 1.0)) for t in tasks})


def softmax(logits: dict[str, float]) -> dict[str, float]:
    """Numerically stable softmax over a dict."""
    m = max(logits.values())
    ex = {t: math.exp(v - m) for t, v in logits.items()}
    return normalise(ex)


def rng_state_to_json(state: tuple) -> list:
    """``random.Random.getstate()`` as JSON-able lists."""
    version, internal, gauss = state
    return [version, list(internal), gauss]


def rng_state_from_json(d: list) -> tuple:
    """Inverse of :func:`rng_state_to_json`."""
    version, internal, gauss = d
    return (version, tuple(internal), gauss)
