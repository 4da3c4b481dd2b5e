"""``mixtune serve MODEL``: expose a trained model (HF dir or PEFT adapter) as an OpenAI-compatible server."""

from __future__ import annotations

import os

import typer


def serve_cmd(
    model: str = typer.Argument(..., help="HF model dir or PEFT adapter dir"),
    host: str = typer.Option("127.0.0.1", help="interface to bind (loopback by default)"),
    port: int = typer.Option(8000, help="TCP port"),
    api_key: str | None = typer.Option(None, "--api-key", envvar="MIXTUNE_API_KEY",
                                       help="require 'Authorization: Bearer KEY' (env MIXTUNE_API_KEY)"),
    model_name: str | None = typer.Option(None, "--model-name", help="served model id (default: dir name)"),
    device: str = typer.Option("auto", help="auto (CUDA when torch sees a GPU, else CPU), cpu, cuda, cuda:1, mps"),
    dtype: str = typer.Option("auto", help="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16 or fp16"),
    max_batch: int = typer.Option(8, help="most concurrent requests merged into one generate call"),
    max_tokens_limit: int = typer.Option(4096, help="largest max_tokens a request may ask for"),
    max_body_bytes: int = typer.Option(1 << 20, help="larger request bodies are refused with 413"),
    shutdown_timeout: float = typer.Option(120.0, help="seconds SIGTERM waits for in-flight generations"),
) -> None:
    """Serve MODEL on /v1/models and /v1/chat/completions (stream true or false) until Ctrl-C."""
    from mixtune.eval.backends import HFBackend
    from mixtune.release.serve import build_serve_app, counters_from_tokenizer
    from mixtune.release.server import serve_forever

    backend = HFBackend(model, device=device, dtype=dtype, batch_size=max_batch, device_where="--device",
                        dtype_where="--dtype")
    count_text, count_prompt = counters_from_tokenizer(backend.tokenizer)
    name = model_name or os.path.basename(os.path.normpath(model))
    app = build_serve_app(backend, model_name=name, api_key=api_key, max_batch=max_batch,
                          count_tokens=count_text, count_prompt_tokens=count_prompt,
                          max_tokens_limit=max_tokens_limit, max_body_bytes=max_body_bytes)
    typer.echo(f"serving {name!r} on http://{host}:{port}/v1" + (" (API key required)" if api_key else ""))
    serve_forever(app, host, port, graceful_timeout=shutdown_timeout)


def register(app: typer.Typer) -> None:
    """Add ``mixtune serve``."""
    app.command("serve")(serve_cmd)
