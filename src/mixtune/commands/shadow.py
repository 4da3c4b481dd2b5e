"""``mixtune shadow replay|sample|report``: offline shadow traffic, blind expert review, canary A/B decision.

``sample`` puts pairs in the review store's pair queue (reviewed in ``mixtune review serve`` or
through a CSV / Label Studio / Argilla file); ``report`` reads the experts' verdicts from there.

``report`` exit codes are part of the interface (as for ``mixtune gate``): 0 pass, 1 fail,
3 inconclusive; the decision is appended to ``--gates-out``.
"""

from __future__ import annotations

from pathlib import Path

import typer

shadow_app = typer.Typer(help="Shadow traffic: replay a traffic log, queue pairs for blind expert review in the "
                         "review store, A/B report.",
                         no_args_is_help=True)
EXIT_CODES = {"pass": 0, "fail": 1, "inconclusive": 3}


def _backend(spec: str, api_key: str | None, model: str | None, device: str, batch_size: int):
    """A generation backend from a model dir or an endpoint URL (model name discovered if not given)."""
    from mixtune.errors import MixtuneError
    from mixtune.eval.backends import load_backend

    if spec.startswith(("http://", "https://")) and not model:
        import httpx

        base = spec.rstrip("/")
        base = base if base.endswith("/v1") else base + "/v1"
        try:
            r = httpx.get(base + "/models", headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
                          timeout=10)
            model = r.json()["data"][0]["id"]
        except Exception as e:  # noqa: BLE001 — any failure means "cannot discover"
            raise MixtuneError(f"cannot list served models ({type(e).__name__}); pass the model name", spec) from None
    return load_backend(spec, device=device, batch_size=batch_size, api_key=api_key, model=model)


@shadow_app.command("replay")
def replay(
    traffic: Path = typer.Argument(..., help="traffic JSONL: messages, optional user, request_id, task_id"),
    champion: str = typer.Option(..., "--champion", help="champion model dir or endpoint URL"),
    candidate: str = typer.Option(..., "--candidate", help="candidate model dir or endpoint URL"),
    db: str = typer.Option(..., "--db", help="SQLAlchemy URL of the shadow log"),
    api_key: str | None = typer.Option(None, "--api-key", envvar="MIXTUNE_API_KEY", help="key for URL backends"),
    champion_model: str | None = typer.Option(None, help="served model name at the champion URL"),
    candidate_model: str | None = typer.Option(None, help="served model name at the candidate URL"),
    max_new_tokens: int = typer.Option(256, help="generation budget per answer"),
    temperature: float = typer.Option(0.0, help="sampling temperature (0 = greedy)"),
    batch_size: int = typer.Option(16, help="requests per generate call"),
    canary_share: float = typer.Option(0.0, help="route label recorded as the gateway would assign it"),
    device: str = typer.Option("auto", help="device for local models: auto (CUDA when present), cpu, cuda, cuda:N"),
) -> None:
    """Answer every logged request with champion and candidate and record both (resumable)."""
    from rich.progress import Progress

    from mixtune.release.gateway import default_masker
    from mixtune.release.shadow import load_traffic, replay_traffic
    from mixtune.release.store import ShadowStore

    items = load_traffic(traffic)
    store = ShadowStore(db)
    champ = _backend(champion, api_key, champion_model, device, batch_size)
    cand = _backend(candidate, api_key, candidate_model, device, batch_size)
    with Progress(transient=True) as progress:
        task = progress.add_task("replaying", total=len(items))
        stats = replay_traffic(items, champ, cand, store, mask=default_masker(), max_new_tokens=max_new_tokens,
                               temperature=temperature, batch_size=batch_size, canary_share=canary_share,
                               on_batch=lambda k: progress.advance(task, k))
    typer.echo(f"{stats['recorded']} recorded, {stats['skipped']} already in the log, of {stats['total']}; "
               f"errors: champion {stats['champion_errors']}, candidate {stats['candidate_errors']}")


def _pairs_setup(db: str, review_store: str, ontology: Path | None):
    """The shadow log, the review store, this log's pair tag and task → family (for qualifications);
    verdicts an older log kept in its own ``shadow_reviews`` table move into the review store once."""
    from mixtune.release.store import ShadowStore
    from mixtune.review.pairs import import_legacy_reviews
    from mixtune.review.store import ReviewStore

    shadow = ShadowStore(db)
    store = ReviewStore(review_store)
    tag = shadow.secret("review_pairs")[:10]  # the same for every replica sharing this log
    families = {}
    if ontology is not None:
        from mixtune.data.ontology import load_ontology  # why: torch (via config), only with an ontology

        families = {t.id: t.family for t in load_ontology(ontology).tasks.values()}
    legacy = shadow.legacy_reviews()
    if legacy:
        n = import_legacy_reviews(store, legacy, {r["request_id"]: r for r in shadow.load_records()}, tag=tag,
                                  families=families)
        if n:
            typer.echo(f"moved {n} expert verdict(s) from the log's old shadow_reviews table into the review "
                       f"store {review_store}", err=True)
    return shadow, store, tag, families


@shadow_app.command("sample")
def sample(
    db: str = typer.Option(..., "--db", help="SQLAlchemy URL of the shadow log"),
    store: str = typer.Option("review.db", "--store", help="review store (SQLite path or SQLAlchemy URL) that "
                              "holds the pair queue and the experts' verdicts"),
    n: int = typer.Option(50, "--n", help="pairs to sample into the review store's pair queue"),
    out: Path | None = typer.Option(None, "--out", help="also write the sampled pairs to this file (else review "
                                    "them in `mixtune review serve`)"),
    fmt: str | None = typer.Option(None, "--format", help="csv (default for --out), labelstudio or argilla; "
                                   "--import detects it from the file"),
    import_path: Path | None = typer.Option(None, "--import", help="reviewed file to import verdicts from"),
    reviewers: Path | None = typer.Option(None, "--reviewers", help="with --import: accept verdicts only from "
                                          "reviewers in this file, qualified for the task's family"),
    ontology: Path | None = typer.Option(None, "--ontology", help="task families for reviewer qualifications"),
    seed: int = typer.Option(0, help="sampling and A/B order seed"),
) -> None:
    """Queue a stratified sample of pairs for blind A/B review (A/B order hidden), or --import verdicts."""
    from mixtune.errors import MixtuneError
    from mixtune.review.exchange import export_store, import_verdicts
    from mixtune.review.pairs import (
        enqueue_pairs,
        enqueued_requests,
        pair_verdicts,
        stratified_sample,
        summary,
    )
    from mixtune.review.reviewers import Reviewers

    shadow, rs, tag, families = _pairs_setup(db, store, ontology)
    if import_path is not None:
        res = import_verdicts(rs, import_path, fmt, reviewers=Reviewers.load(reviewers) if reviewers else None)
        s = summary(pair_verdicts(rs, tag))
        typer.echo(f"applied {len(res.applied)}  repeated {len(res.duplicate)}  refused {len(res.refused)}; "
                   f"judged pairs {s['items']} ({s['votes']} votes): candidate {s['candidate']}, "
                   f"champion {s['champion']}, tie {s['tie']}")
        for where, why in res.refused[:20]:
            typer.echo(f"  refused {where}: {why}")
        if res.torn:
            typer.echo(f"  torn: {res.torn} (the records before it were imported)")
        if res.refused or res.torn:
            raise typer.Exit(1)
        return
    if n < 1:
        raise MixtuneError("must be >= 1", "--n")
    queued = enqueued_requests(rs, tag)
    pool = [r for r in shadow.load_records() if r["request_id"] not in queued]
    new = enqueue_pairs(rs, stratified_sample(pool, n, seed), tag=tag, seed=seed, families=families)
    typer.echo(f"queued {len(new)} pair(s) for blind review in {store} (pair queue)")
    if out is not None:
        k = export_store(rs, fmt or "csv", out, kinds=("pair",), item_ids=set(new))
        typer.echo(f"wrote {k} review items ({fmt or 'csv'}) to {out}")


@shadow_app.command("report")
def report(
    db: str = typer.Option(..., "--db", help="SQLAlchemy URL of the shadow log"),
    rules: Path | None = typer.Option(None, "--rules", help="rules YAML: rule-engine compliance of each answer"),
    judge_url: str | None = typer.Option(None, "--judge-url", help="OpenAI-compatible LLM judge (asked in both orders)"),
    judge_model: str | None = typer.Option(None, help="judge model name (default: its /v1/models)"),
    judge_key: str | None = typer.Option(None, envvar="MIXTUNE_JUDGE_KEY", help="judge API key"),
    gates_out: Path = typer.Option(Path("gates.jsonl"), "--gates-out", help="gates.jsonl to append the decision to"),
    min_delta: float = typer.Option(0.0, help="required composite improvement (negative: non-inferiority margin)"),
    alpha: float = typer.Option(0.05, help="sequential test error rate"),
    horizon: int | None = typer.Option(None, help="planned pairs; before it only the sequential test decides"),
    min_pairs: int = typer.Option(10, help="fewer scored pairs are inconclusive"),
    n_boot: int = typer.Option(1000, help="bootstrap replicates"),
    confidence: float = typer.Option(0.95, help="bootstrap interval confidence"),
    seed: int = typer.Option(0, help="bootstrap seed"),
    source: str | None = typer.Option(None, help="only 'gateway' or 'replay' records"),
    store: str = typer.Option("review.db", "--store", help="review store with the experts' pair verdicts "
                              "(`shadow sample`); a missing SQLite file means no verdicts"),
    required: int = typer.Option(1, "--required", min=1, help="review verdicts a pair needs to count (majority "
                                 "of them; a split vote is a tie; an adjudicator's verdict decides)"),
) -> None:
    """Pairwise candidate-vs-champion comparison and the canary gate: exit 0 pass, 1 fail, 3 inconclusive."""
    from mixtune.release.gates import append_decision
    from mixtune.release.shadow import canary_report
    from mixtune.release.store import ShadowStore
    from mixtune.review.pairs import pair_verdicts

    verdicts: dict[str, str] = {}
    # no store yet means no expert verdicts — unless an older log still holds some to move there
    if "://" in store or Path(store).is_file() or ShadowStore(db).legacy_reviews():
        _, rs, tag, _ = _pairs_setup(db, store, None)
        verdicts = {k: v["verdict"] for k, v in pair_verdicts(rs, tag, required=required).items()}

    rule_score = None
    if rules is not None:
        from mixtune.rules.engine import RuleEngine, RuleSet

        engine = RuleEngine(RuleSet.load(rules))

        def rule_score(prompt: str, answer: str) -> float:
            return engine.compliance(answer, input_text=prompt)

    judge = _backend(judge_url, judge_key, judge_model, "cpu", 1) if judge_url else None
    decision = canary_report(ShadowStore(db), rule_score=rule_score, judge=judge, min_delta=min_delta,
                             alpha=alpha, n_boot=n_boot, confidence=confidence, seed=seed, horizon=horizon,
                             min_pairs=min_pairs, source=source, verdicts=verdicts)
    append_decision(gates_out, decision)
    for name, s in decision.meta.get("signals", {}).items():
        typer.echo(f"{name:10s} candidate {s['candidate_mean']:.3f} champion {s['champion_mean']:.3f} "
                   f"delta {s['delta']:+.3f} [{s['lo']:+.3f}, {s['hi']:+.3f}] n={s['n']}")
    for c in decision.checks:
        typer.echo(f"check {c.metric}/{c.kind}: {c.status} ({c.reason})")
    typer.echo(f"canary gate: {decision.status.upper()} (appended to {gates_out})")
    raise typer.Exit(EXIT_CODES[decision.status])


def register(app: typer.Typer) -> None:
    """Add ``mixtune shadow``."""
    app.add_typer(shadow_app, name="shadow")
