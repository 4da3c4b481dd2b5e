"""Difficulty curriculum: pacing over training progress and per-task mastery promotion.

Levels are 1..5 (DESIGN.md §4, "Difficulty"). Three anchor distributions (early / middle / late)
are blended by training progress:

- ``thirds``: early for progress < 1/3, middle < 2/3, late after (step changes),
- ``linear``: piecewise-linear interpolation early → middle → late over progress 0 → 0.5 → 1,
- ``competence``: like ``linear`` but on the root competence ``c(p) = sqrt(p·(1-c0²) + c0²)``
  (Platanios et al., 2019), which spends less time on the easy end.

Mastery: a task whose validation score exceeds its threshold for ``mastery_cycles`` consecutive
cycles is promoted one level — its whole distribution shifts up one level (mass beyond level 5
stays on level 5) — and its streak restarts, so the next promotion needs fresh evidence.
"""

from __future__ import annotations

import math

from mixtune.errors import CheckpointError, ConfigError

LEVELS = 5
PACINGS = ("thirds", "linear", "competence")
# The one home of the curriculum defaults (config.py imports them).
DEFAULT_EARLY = (0.5, 0.4, 0.1, 0.0, 0.0)
DEFAULT_MIDDLE = (0.1, 0.3, 0.3, 0.3, 0.0)
DEFAULT_LATE = (0.0, 0.1, 0.3, 0.3, 0.3)
DEFAULT_MASTERY_THRESHOLD = 0.8
DEFAULT_MASTERY_CYCLES = 5
DEFAULT_PACING = "thirds"
DEFAULT_C0 = 0.1


def _check_dist(name: str, d: list[float]) -> list[float]:
    if len(d) != LEVELS:
        raise ConfigError(f"needs {LEVELS} probabilities (levels 1..5), got {len(d)}",
                          where=f"stage2.curriculum.{name}")
    if any(x < 0 or not math.isfinite(x) for x in d) or sum(d) <= 0:
        raise ConfigError(f"probabilities must be finite, >= 0 and not all zero: {d}",
                          where=f"stage2.curriculum.{name}")
    s = sum(d)
    return [float(x) / s for x in d]


def shift_up(dist: list[float], k: int) -> list[float]:
    """Move every level's mass ``k`` levels up; mass pushed past the top piles on level 5."""
    out = [0.0] * LEVELS
    for i, p in enumerate(dist):
        out[min(i + k, LEVELS - 1)] += p
    return out


class Curriculum:
    """Level pacing plus mastery promotion; seeded-free (it draws nothing), JSON state."""

    def __init__(self, tasks: list[str], early: list[float], middle: list[float], late: list[float],
                 mastery_threshold: float = DEFAULT_MASTERY_THRESHOLD,
                 mastery_cycles: int = DEFAULT_MASTERY_CYCLES, enabled: bool = True,
                 pacing: str = DEFAULT_PACING, c0: float = DEFAULT_C0,
                 thresholds: dict[str, float] | None = None):
        if pacing not in PACINGS:
            raise ConfigError(f"unknown pacing {pacing!r}; allowed: {list(PACINGS)}",
                              where="stage2.curriculum.pacing")
        if mastery_cycles < 1:
            raise ConfigError(f"must be >= 1, got {mastery_cycles}", where="stage2.curriculum.mastery_cycles")
        self.tasks = list(tasks)
        self.anchors = [_check_dist("early", early), _check_dist("middle", middle), _check_dist("late", late)]
        self.threshold = float(mastery_threshold)
        # Per-task thresholds (e.g. from the ontology) override the global one.
        self.thresholds = {t: float((thresholds or {}).get(t, self.threshold)) for t in self.tasks}
        self.mastery_cycles = int(mastery_cycles)
        self.enabled = enabled
        self.pacing = pacing
        self.c0 = c0
        self.streak = {t: 0 for t in self.tasks}
        self.promotions = {t: 0 for t in self.tasks}
        self.history: list[dict] = []

    def base_distribution(self, progress: float) -> list[float]:
        """The pacing distribution at ``progress`` in [0, 1], before any promotion."""
        p = min(max(float(progress), 0.0), 1.0)
        early, middle, late = self.anchors
        if self.pacing == "thirds":
            return list(early if p < 1 / 3 else middle if p < 2 / 3 else late)
        if self.pacing == "competence":
            p = math.sqrt(p * (1.0 - self.c0 ** 2) + self.c0 ** 2)
            p = (p - self.c0) / (1.0 - self.c0)  # rescale so progress 0 still means "early"
        a, b, u = (early, middle, p / 0.5) if p <= 0.5 else (middle, late, (p - 0.5) / 0.5)
        return [(1.0 - u) * x + u * y for x, y in zip(a, b, strict=True)]

    def level_distribution(self, task: str, progress: float, present: list[int] | None = None) -> list[float]:
        """Probabilities of levels 1..5 for ``task`` at ``progress``.

        When disabled: uniform over ``present`` levels (all five if not given). When enabled,
        the pacing distribution shifted up by the task's promotions; the sampler handles levels
        without samples by falling back to the nearest present one.
        """
        if not self.enabled:
            lv = sorted(set(present)) if present else list(range(1, LEVELS + 1))
            return [1.0 / len(lv) if i + 1 in lv else 0.0 for i in range(LEVELS)]
        if task not in self.promotions:
            raise ConfigError(f"unknown task {task!r}", where="curriculum.level_distribution")
        return shift_up(self.base_distribution(progress), self.promotions[task])

    def update(self, cycle: int, scores: dict[str, float]) -> list[str]:
        """Count mastery streaks from one evaluation cycle; return the tasks promoted now.

        A score at or below the threshold resets the streak; a task missing from ``scores``
        keeps its streak (no evidence either way).
        """
        promoted: list[str] = []
        if not self.enabled:
            return promoted
        for t in self.tasks:
            if t not in scores:
                continue
            self.streak[t] = self.streak[t] + 1 if float(scores[t]) > self.thresholds[t] else 0
            if self.streak[t] >= self.mastery_cycles and self.promotions[t] < LEVELS - 1:
                self.promotions[t] += 1
                self.streak[t] = 0
                promoted.append(t)
                self.history.append({"cycle": cycle, "task": t, "level": 1 + self.promotions[t],
                                     "score": float(scores[t]), "threshold": self.thresholds[t]})
        return promoted

    def levels(self) -> dict[str, int]:
        """Current minimum level offset per task: 1 + number of promotions."""
        return {t: 1 + n for t, n in self.promotions.items()}

    def state_dict(self) -> dict:
        return {"tasks": list(self.tasks), "streak": dict(self.streak), "promotions": dict(self.promotions),
                "history": [dict(h) for h in self.history]}

    def load_state_dict(self, d: dict) -> None:
        """Restore streaks and promotions; refuses a state for a different task set."""
        if d.get("tasks") != self.tasks:
            raise CheckpointError(f"curriculum state is for tasks {d.get('tasks')}, not {self.tasks}",
                                  where="curriculum.state")
        self.streak = {t: int(d["streak"][t]) for t in self.tasks}
        self.promotions = {t: int(d["promotions"][t]) for t in self.tasks}
        self.history = [dict(h) for h in d["history"]]
