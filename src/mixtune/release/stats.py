"""Release statistics: paired bootstrap intervals and an anytime-valid sequential test.

Both compare a candidate with the champion on *paired* per-sample scores (the same prompt
answered by both models), which removes the prompt-difficulty variance that dominates unpaired
comparisons.

* :func:`paired_bootstrap` — percentile interval for the mean paired difference, used by the
  evaluation gates where the sample size is fixed in advance.
* :class:`SequentialTest` — a betting confidence sequence (Waudby-Smith & Ramdas, 2023,
  "Estimating means of bounded random variables by betting") for the mean of differences bounded
  in [-1, 1]. Its intervals hold simultaneously over all sample sizes (Ville's inequality), so a
  shadow/canary run may look after every request and stop as soon as the sequence excludes 0
  without inflating the false-positive rate the way repeated fixed-n tests do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from mixtune.errors import DataError

Decision = Literal["candidate_better", "champion_better", "continue"]

# Upper bound on bootstrap index-matrix cells held at once (~64 MB of int64): large eval sets are
# resampled in chunks of replicates instead of one n_boot x n matrix.
_MAX_CELLS = 8_000_000
# Rows of the (observations x grid) capital matrix processed at once in SequentialTest.update.
_UPDATE_CHUNK = 4096


@dataclass(frozen=True)
class BootstrapResult:
    """Mean paired difference ``delta`` with its percentile interval [lo, hi] over ``n`` pairs."""

    delta: float
    lo: float
    hi: float
    n: int
    confidence: float = 0.95
    n_boot: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _as_finite_array(values: Sequence[float], what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise DataError(f"{what} must be a flat sequence of numbers (got shape {arr.shape})")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise DataError(f"{what} has a non-finite value at position {int(bad[0])}")
    return arr


def paired_bootstrap(
    candidate: Sequence[float],
    champion: Sequence[float],
    *,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapResult:
    """Paired percentile bootstrap of ``mean(candidate - champion)``.

    Position i of both sequences must be the same sample. Pairs are resampled together (one index
    draw per replicate) so the interval reflects per-sample correlation between the two models.
    Deterministic for a given ``seed``.
    """
    cand = _as_finite_array(candidate, "candidate scores")
    champ = _as_finite_array(champion, "champion scores")
    if cand.shape != champ.shape:
        raise DataError(f"paired scores need equal lengths (candidate {cand.size}, champion {champ.size})")
    n = int(cand.size)
    if n == 0:
        raise DataError("paired bootstrap needs at least one paired sample")
    if n_boot < 1:
        raise DataError(f"n_boot must be >= 1 (got {n_boot})")
    if not 0.0 < confidence < 1.0:
        raise DataError(f"confidence must be in (0, 1) (got {confidence})")

    diffs = cand - champ
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot, dtype=np.float64)
    per_chunk = max(1, _MAX_CELLS // n)
    for start in range(0, n_boot, per_chunk):
        stop = min(n_boot, start + per_chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = diffs[idx].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return BootstrapResult(
        delta=float(diffs.mean()), lo=float(lo), hi=float(hi), n=n, confidence=confidence, n_boot=n_boot
    )


class SequentialTest:
    """Anytime-valid two-sided test of ``E[candidate - champion] = 0`` for diffs in [-1, 1].

    For every candidate mean ``m`` on a grid, two nonnegative "capital" processes bet that the
    true mean is above / below ``m``:  K+_t(m) = prod(1 + l_i (d_i - m)),  K-_t(m) = prod(1 - l_i
    (d_i - m)). Under mean ``m`` each is a nonnegative martingale, so by Ville's inequality it ever
    exceeds 2/alpha with probability <= alpha/2. The confidence sequence is the set of ``m`` whose
    capitals never crossed; the decision reads it at ``m = 0``. Bet sizes ``l_i`` are predictable
    (computed from earlier observations only: WSR's predictable plug-in), which is what keeps the
    guarantee valid under continuous peeking.

    The decision is sticky: once reached, further updates are ignored (the test has stopped).
    """

    def __init__(self, alpha: float = 0.05, *, grid: int = 401, max_bet: float = 0.5):
        if not 0.0 < alpha < 1.0:
            raise DataError(f"alpha must be in (0, 1) (got {alpha})")
        if grid < 3:
            raise DataError(f"grid must have at least 3 points (got {grid})")
        if not 0.0 < max_bet < 1.0:
            raise DataError(f"max_bet must be in (0, 1) (got {max_bet})")
        self.alpha = float(alpha)
        self.max_bet = float(max_bet)
        # An odd grid over [-1, 1] contains 0 exactly, the null the decision is read at.
        self.grid_size = grid + 1 if grid % 2 == 0 else grid
        self._grid = np.linspace(-1.0, 1.0, self.grid_size)
        self._zero = self.grid_size // 2
        self._threshold = math.log(2.0 / self.alpha)
        self.reset()

    def reset(self) -> None:
        """Forget all observations."""
        self.n = 0
        self._sum = 0.0
        self._sq_resid = 0.0
        self._log_kp = np.zeros(self.grid_size)
        self._log_km = np.zeros(self.grid_size)
        self._max_kp = np.zeros(self.grid_size)
        self._max_km = np.zeros(self.grid_size)
        self.decision: Decision = "continue"
        self.stopped_at: int | None = None

    def _bets(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predictable bet sizes for observations n+1 .. n+len(x) (each uses only earlier data)."""
        i = self.n + np.arange(1, x.size + 1, dtype=np.float64)  # 1-based index of each observation
        prev_sum = self._sum + np.cumsum(x) - x
        # Mean/variance estimates carry one pseudo-observation (mean 0, variance 1: the widest
        # plausible for [-1, 1]) so the first bets are cautious rather than undefined.
        mu_prev = prev_sum / i
        resid2 = (x - mu_prev) ** 2
        prev_sq = self._sq_resid + np.cumsum(resid2) - resid2
        var_prev = (1.0 + prev_sq) / i
        lam = np.sqrt(2.0 * self._threshold / (var_prev * i * np.log1p(i)))
        return lam, resid2

    def update(self, diffs: Sequence[float] | float) -> Decision:
        """Add paired differences (candidate - champion, each in [-1, 1]) and return the decision.

        Observations are processed in order; the test stops at the first one at which the
        confidence sequence excludes 0, and later observations are not consumed.
        """
        x = np.atleast_1d(_as_finite_array(np.atleast_1d(diffs), "paired differences"))
        if x.size and (x.min() < -1.0 or x.max() > 1.0):
            raise DataError("paired differences must lie in [-1, 1]; rescale the metric first")
        if self.decision != "continue" or x.size == 0:
            return self.decision
        for start in range(0, x.size, _UPDATE_CHUNK):
            if self._consume(x[start : start + _UPDATE_CHUNK]):
                break
        return self.decision

    def _consume(self, x: np.ndarray) -> bool:
        lam, resid2 = self._bets(x)
        dev = x[:, None] - self._grid[None, :]
        with np.errstate(divide="ignore"):
            # Truncation keeps every factor >= 1 - max_bet > 0 whatever the next value in [-1, 1].
            cap_p = self.max_bet / (1.0 + self._grid)
            cap_m = self.max_bet / (1.0 - self._grid)
        lam_p = np.minimum(lam[:, None], cap_p[None, :])
        lam_m = np.minimum(lam[:, None], cap_m[None, :])
        log_kp = self._log_kp + np.cumsum(np.log1p(lam_p * dev), axis=0)
        log_km = self._log_km + np.cumsum(np.log1p(-lam_m * dev), axis=0)

        up = np.flatnonzero(log_kp[:, self._zero] >= self._threshold)
        down = np.flatnonzero(log_km[:, self._zero] >= self._threshold)
        first_up = int(up[0]) if up.size else x.size
        first_down = int(down[0]) if down.size else x.size
        stop = min(first_up, first_down)
        used = x.size if stop == x.size else stop + 1

        self._log_kp, self._log_km = log_kp[used - 1], log_km[used - 1]
        self._max_kp = np.maximum(self._max_kp, log_kp[:used].max(axis=0))
        self._max_km = np.maximum(self._max_km, log_km[:used].max(axis=0))
        self._sum += float(x[:used].sum())
        self._sq_resid += float(resid2[:used].sum())
        self.n += used
        if stop < x.size:
            self.decision = "candidate_better" if first_up <= first_down else "champion_better"
            self.stopped_at = self.n
            return True
        return False

    def interval(self) -> tuple[float, float]:
        """Running-intersection confidence sequence for the mean difference (grid resolution)."""
        alive = (self._max_kp < self._threshold) & (self._max_km < self._threshold)
        step = float(self._grid[1] - self._grid[0])
        if not alive.any():
            # Every grid point rejected: the mean difference lies between grid points. Report the grid
            # cell around the running mean (a point interval would exclude a true mean off the grid).
            centre = self._sum / max(self.n, 1)
            i = int(np.searchsorted(self._grid, centre))
            lo, hi = float(self._grid[max(0, i - 1)]), float(self._grid[min(len(self._grid) - 1, i)])
            if lo == hi:
                lo, hi = lo - step, hi + step
            return (max(-1.0, lo), min(1.0, hi))
        pts = self._grid[alive]
        # A rejected neighbour means the true boundary lies within one grid step: widen to stay valid.
        return (max(-1.0, float(pts.min()) - step), min(1.0, float(pts.max()) + step))

    def summary(self) -> dict[str, Any]:
        """Evidence for logs and gate records."""
        lo, hi = self.interval()
        return {
            "decision": self.decision,
            "n": self.n,
            "mean": self._sum / self.n if self.n else 0.0,
            "cs_lo": lo,
            "cs_hi": hi,
            "alpha": self.alpha,
            "stopped_at": self.stopped_at,
        }

    def state_dict(self) -> dict[str, Any]:
        """Serialisable state (JSON-friendly lists), enough to resume exactly."""
        return {
            "alpha": self.alpha,
            "grid": self.grid_size,
            "max_bet": self.max_bet,
            "n": self.n,
            "sum": self._sum,
            "sq_resid": self._sq_resid,
            "log_kp": self._log_kp.tolist(),
            "log_km": self._log_km.tolist(),
            "max_kp": self._max_kp.tolist(),
            "max_km": self._max_km.tolist(),
            "decision": self.decision,
            "stopped_at": self.stopped_at,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; settings must match this instance's."""
        for key, mine in (("alpha", self.alpha), ("grid", self.grid_size), ("max_bet", self.max_bet)):
            if state.get(key) != mine:
                raise DataError(f"sequential test state has {key}={state.get(key)!r}, this test uses {mine!r}")
        self.n = int(state["n"])
        self._sum = float(state["sum"])
        self._sq_resid = float(state["sq_resid"])
        self._log_kp = np.asarray(state["log_kp"], dtype=np.float64)
        self._log_km = np.asarray(state["log_km"], dtype=np.float64)
        self._max_kp = np.asarray(state["max_kp"], dtype=np.float64)
        self._max_km = np.asarray(state["max_km"], dtype=np.float64)
        self.decision = state["decision"]
        self.stopped_at = state["stopped_at"]
