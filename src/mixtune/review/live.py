"""Live rejection for stage 2: one call per evaluation cycle returns each task's human rejection rate.

:class:`LiveRejection` owns what the loop needs: the review store, the review app on a loopback
port (so a simulated reviewer goes through the real HTTP API, exactly like a person's browser),
and the rate settings. Each :meth:`LiveRejection.cycle` enqueues ``k`` outputs per task of the
current model, lets the simulated reviewer (when enabled) answer, and returns
``{task: (rate, n)}`` — ``rate`` for the heat engine, both for ``mixing_log.jsonl``. With
humans reviewing instead (``simulate=False``), the same call just reads what they decided so
far: the loop never waits for a person.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mixtune.release.server import ServerThread
from mixtune.review.app import create_app
from mixtune.review.reviewers import Reviewer, Reviewers, hash_token, new_token
from mixtune.review.simulated import run_simulated_reviewer, sample_outputs_for_review
from mixtune.review.store import ReviewStore

if TYPE_CHECKING:
    from mixtune.rules import RuleEngine

SIM_ID = "simulated"


class LiveRejection:
    """Per-run review loop: enqueue → (simulated) review over HTTP → windowed, shrunk rates."""

    def __init__(self, store: str | Path | ReviewStore, *, reviewers: Reviewers | None = None,
                 reasons: dict[str, list[str]] | None = None, simulate: bool = True, k: int = 4,
                 window: int = 50, prior: float = 0.1, strength: float = 5.0, noise: float = 0.05,
                 bias: float = 0.0, latency: float = 0.0, seed: int = 0, engine: RuleEngine | None = None,
                 rule_ids: dict[str, list[str]] | None = None, families: dict[str, str] | None = None):
        self.store = store if isinstance(store, ReviewStore) else ReviewStore(store)
        self.k, self.window, self.prior, self.strength = k, window, prior, strength
        self.noise, self.bias, self.latency, self.seed = noise, bias, latency, seed
        self.engine, self.rule_ids, self.families = engine, rule_ids, families
        self.simulate = simulate
        people = list(reviewers.by_id.values()) if reviewers is not None else []
        # The simulated reviewer's token lives only in this process: nothing outside can speak as it.
        self._token = new_token()
        if simulate:
            people = [p for p in people if p.id != SIM_ID] + [
                Reviewer(SIM_ID, hash_token(self._token), ("*",), kind="simulated")]
        self.server = ServerThread(create_app(self.store, Reviewers(people), reasons=reasons)).start() \
            if simulate else None

    def cycle(self, cycle: int, model_version: str, outputs_by_task: dict[str, list[dict]],
              ) -> dict[str, tuple[float, int]]:
        """Enqueue this cycle's outputs, review them (simulated), return ``{task: (rate, n)}``."""
        sample_outputs_for_review(self.store, outputs_by_task, self.k, model_version, engine=self.engine,
                                  rule_ids=self.rule_ids, families=self.families, seed=self.seed + cycle)
        if self.server is not None:
            run_simulated_reviewer(self.server.url, self._token, noise=self.noise, bias=self.bias,
                                   latency=self.latency, seed=self.seed * 100_003 + cycle, engine=None)
        return self.store.rejection_rates(("output",), window=self.window, prior=self.prior,
                                          strength=self.strength, tasks=sorted(outputs_by_task))

    def close(self) -> None:
        """Stop the app (if running) and release the store's connections."""
        if self.server is not None:
            self.server.stop()
            self.server = None
        self.store.close()

    def __enter__(self) -> LiveRejection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
