"""``mixtune gateway``: the shadow/canary gateway in front of a champion and a candidate endpoint."""

from __future__ import annotations

import typer

from mixtune.release.server import serve_forever


def gateway_cmd(
    champion: str = typer.Option(..., "--champion", help="champion OpenAI-compatible base URL"),
    candidate: str = typer.Option(..., "--candidate", help="candidate OpenAI-compatible base URL"),
    api_key: str = typer.Option(..., "--api-key", envvar="MIXTUNE_API_KEY", help="key clients must send"),
    db: str = typer.Option(..., "--db", help="SQLAlchemy URL of the shadow log, e.g. sqlite:///shadow.db"),
    canary_share: float = typer.Option(0.0, "--canary-share", help="share of users answered by the candidate"),
    host: str = typer.Option("127.0.0.1", help="interface to bind (loopback by default)"),
    port: int = typer.Option(8080, help="TCP port"),
    champion_key: str | None = typer.Option(None, envvar="MIXTUNE_CHAMPION_KEY", help="API key for the champion"),
    candidate_key: str | None = typer.Option(None, envvar="MIXTUNE_CANDIDATE_KEY", help="API key for the candidate"),
    champion_model: str | None = typer.Option(None, help="model name sent to the champion (default: its /v1/models)"),
    candidate_model: str | None = typer.Option(None, help="model name sent to the candidate (default: its /v1/models)"),
    champion_timeout: float = typer.Option(120.0, help="seconds a champion call may take"),
    mirror_timeout: float = typer.Option(60.0, help="seconds a mirrored candidate call may take"),
    canary_timeout: float = typer.Option(30.0, help="seconds before a canary answer falls back to the champion"),
    queue_size: int = typer.Option(1000, help="mirror queue bound; beyond it mirrors are dropped, never the user"),
    mirror_workers: int = typer.Option(8, help="concurrent mirrored calls"),
    salt: str | None = typer.Option(
        None, envvar="MIXTUNE_USER_SALT",
        help="salt of the stored user hash (default: a random secret created once per --db and shared by replicas)"),
    durability: str = typer.Option(
        "batch", help="sync: an answer is sent only after its record is committed (503 if it cannot be); "
                      "batch: records are committed within --window-ms after the answer"),
    window_ms: float = typer.Option(100.0, help="batch durability: the most milliseconds an answered request "
                                                "waits for its commit (the loss window of a killed gateway)"),
    max_body_bytes: int = typer.Option(1 << 20, help="larger request bodies are refused with 413"),
    shutdown_timeout: float | None = typer.Option(
        None, help="seconds SIGTERM waits for in-flight requests (default: champion/canary timeout + 5)"),
    drain_timeout: float = typer.Option(10.0, help="seconds shutdown then waits for queued mirror calls"),
) -> None:
    """Answer from the champion, mirror to the candidate, route a sticky canary share; log pairs to --db."""
    from mixtune.release.gateway import build_gateway_app  # why: fast --help (fastapi)

    app = build_gateway_app(champion, candidate, api_key=api_key, db_url=db, canary_share=canary_share,
                            champion_api_key=champion_key, candidate_api_key=candidate_key,
                            champion_model=champion_model, candidate_model=candidate_model,
                            champion_timeout=champion_timeout, mirror_timeout=mirror_timeout,
                            canary_timeout=canary_timeout, queue_size=queue_size, mirror_workers=mirror_workers,
                            salt=salt, durability=durability, window_ms=window_ms, max_body_bytes=max_body_bytes,
                            drain_timeout=drain_timeout)
    # in-flight requests may wait for the champion (or a canary plus its hedge) up to its timeout
    graceful = shutdown_timeout if shutdown_timeout is not None else max(champion_timeout, canary_timeout) + 5
    typer.echo(f"gateway on http://{host}:{port}/v1: champion {champion}, candidate {candidate}, "
               f"canary share {canary_share:g}, log {db} (durability {durability})")
    serve_forever(app, host, port, graceful_timeout=graceful)


def register(app: typer.Typer) -> None:
    """Add ``mixtune gateway``."""
    app.command("gateway")(gateway_cmd)
