"""Expert review: one store, one queue logic, one web app for every reviewed item.

- :mod:`mixtune.review.store` — the append-only store (SQLite WAL or any SQLAlchemy URL)
- :mod:`mixtune.review.queue` — dual validation, adjudication, kappa, live rejection rates
- :mod:`mixtune.review.reviewers` — reviewer tokens (hashed) and qualifications
- :mod:`mixtune.review.app` — ``mixtune review serve`` (pages + JSON API)
- :mod:`mixtune.review.simulated` — the simulated reviewer, the sampling hook, :class:`LiveRejection`
- :mod:`mixtune.review.exchange` — the one CSV / Label Studio / Argilla export and import, every kind
- :mod:`mixtune.review.samples` — training samples in, decisions out (for the data build); the old log
- :mod:`mixtune.review.pairs` — blind A/B pairs from shadow traffic: sampling, order, verdict mapping

Stage 2, at each evaluation cycle (or ``LiveRejection.cycle`` doing all of it)::

    sample_outputs_for_review(store, outputs_by_task, k, model_version, engine=engine)
    rates = store.rejection_rates(("output",), window=50, prior=0.1, strength=5.0, tasks=task_ids)
    # {task: (rate, n)} -> the heat engine's rejection input and mixing_log.jsonl
"""

from mixtune.review.exchange import export_store, import_verdicts
from mixtune.review.pairs import enqueue_pairs, pair_verdicts, stratified_sample
from mixtune.review.queue import (
    agreement,
    cohen_kappa,
    next_item,
    progress,
    rejection_rates,
    status_summary,
    submit,
)
from mixtune.review.reviewers import AuthError, ForbiddenError, Reviewer, Reviewers, hash_token, new_token
from mixtune.review.samples import decisions_digest, enqueue_samples, import_legacy_log, sample_decisions
from mixtune.review.simulated import LiveRejection, run_simulated_reviewer, sample_outputs_for_review
from mixtune.review.store import KINDS, VERDICTS, Item, ReviewError, ReviewStore, Verdict

__all__ = [
    "KINDS", "VERDICTS", "AuthError", "ForbiddenError", "Item", "LiveRejection", "ReviewError", "ReviewStore",
    "Reviewer", "Reviewers", "Verdict", "agreement", "cohen_kappa", "decisions_digest", "enqueue_pairs",
    "enqueue_samples", "export_store", "hash_token", "import_legacy_log", "import_verdicts", "new_token",
    "next_item", "pair_verdicts", "progress", "rejection_rates", "run_simulated_reviewer", "sample_decisions",
    "sample_outputs_for_review", "status_summary", "stratified_sample", "submit",
]
