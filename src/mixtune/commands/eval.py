"""``mixtune eval``: evaluate one model (dir, adapter dir or endpoint) on the three-layer matrix.

Each run writes ``<out>/<model-name>.jsonl`` and then re-aggregates *every* ``*.jsonl`` in
``<out>`` into ``matrix.json`` / ``summary.json``, so evaluating base, stage1 and stage2 one after
another (or on different machines, copying the jsonl files in) builds one comparison matrix.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import typer
from rich.console import Console

from mixtune.errors import ConfigError, DataError
from mixtune.eval.matrix import IFEVAL_FAMILIES, render_ifeval, render_summary


def load_samples(path: Path, *, split: str, per_task: int | None, seed: int) -> list:
    """Samples from parquet (Arrow schema) or jsonl, filtered by split, capped per task."""
    # why: the sample schema and parquet pull pyarrow and pydantic; imported on use (fast --help)
    import pyarrow.parquet as pq

    from mixtune.data.schema import Sample, table_to_samples
    from mixtune.eval.runner import read_jsonl

    if not path.is_file():
        raise DataError("samples file not found", where=str(path))
    try:
        if path.suffix == ".parquet":
            samples = table_to_samples(pq.read_table(path))
        else:
            samples = [Sample.model_validate(r) for r in read_jsonl(path)]
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 — arrow/pydantic raise many types; all mean "bad file"
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"cannot read samples: {msg}", where=str(path)) from None
    if split != "all":
        present = sorted({s.split for s in samples})
        samples = [s for s in samples if s.split == split]
        if not samples:
            raise DataError(f"no samples in split {split!r} (splits present: {present}); use --split all",
                            where=str(path))
    samples = [s.with_id() for s in samples]
    if per_task:
        rng = random.Random(seed)
        by_task: dict[str, list] = {}
        for s in sorted(samples, key=lambda s: s.id):
            by_task.setdefault(s.task_id, []).append(s)
        samples = []
        for task_id in sorted(by_task):
            group = by_task[task_id]
            rng.shuffle(group)
            samples += group[:per_task]
    return samples


def load_ifeval(path: Path, limit: int | None) -> list[dict]:
    """The first ``limit`` (all when ``None``) IFEval-format prompts of a JSONL file."""
    from mixtune.eval.runner import read_jsonl  # why: pulls pyarrow and pydantic (fast --help)

    if not path.is_file():
        raise DataError("IFEval prompts file not found", where=str(path))
    prompts = read_jsonl(path)
    return prompts[:limit] if limit else prompts


def eval_cmd(
    model: str = typer.Option(..., "--model", help="HF model dir, PEFT adapter dir, or http(s):// endpoint"),
    data: Path = typer.Option(..., "--data", help="samples.parquet (or .jsonl) from `mixtune data build`"),
    ontology: Path = typer.Option(..., "--ontology", help="ontology YAML"),
    rules: Path = typer.Option(..., "--rules", help="rules YAML"),
    out: Path = typer.Option(..., "--out", help="output dir: <name>.jsonl, matrix.json, summary.json"),
    model_name: str | None = typer.Option(None, "--model-name", help="name in the matrix (default: dir name)"),
    split: str = typer.Option("test", help="sample split to evaluate: train, val, test, traffic or all"),
    samples_per_task: int | None = typer.Option(None, help="cap samples per task (seeded choice)"),
    max_new_tokens: int = typer.Option(96, help="generation budget per turn"),
    batch_size: int = typer.Option(32, help="HF generation batch size"),
    device: str = typer.Option("auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:1, mps"),
    dtype: str = typer.Option("auto", help="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16 or fp16"),
    served_model: str | None = typer.Option(None, help="model name to request when --model is an endpoint"),
    api_key_env: str = typer.Option("OPENAI_API_KEY", help="env var holding the endpoint's API key"),
    ifeval: Path | None = typer.Option(None, "--ifeval", help="IFEval-format prompts jsonl (base layer, "
                                       "family 'ifeval'); instead of --ifeval-prompts"),
    ifeval_limit: int | None = typer.Option(None, help="use only the first N prompts of --ifeval"),
    ifeval_prompts: int = typer.Option(0, min=0, max=541, help="N of the shipped English IFEval prompts, "
                                       "stratified by instruction type and seeded by --seed (as eval.ifeval_prompts)"),
    ifeval_zh_prompts: int = typer.Option(0, min=0, max=541, help="N of the shipped Chinese IFEval prompts "
                                          "(family 'ifeval_zh'), chosen the same way"),
    ifeval_max_new_tokens: int = typer.Option(192, min=1, help="generation budget of an IFEval answer"),
    experience: bool = typer.Option(True, "--experience/--no-experience", help="run stress dialogues"),
    experience_per_task: int = typer.Option(2, help="samples per task given stress dialogues"),
    judge_url: str | None = typer.Option(None, help="OpenAI-compatible endpoint for an LLM judge (off by default)"),
    judge_model: str | None = typer.Option(None, help="model name for the judge endpoint"),
    session_turns: int = typer.Option(6, help="turns of the adaptive simulated-user sessions (0 = none)"),
    user_url: str | None = typer.Option(None, help="OpenAI-compatible endpoint that voices the simulated user"),
    user_model: str | None = typer.Option(None, help="model name for the --user-url endpoint"),
    seed: int = typer.Option(0, help="seed for sample choice, dialogue scripts and sampling"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show progress bars"),
) -> None:
    """Evaluate MODEL on base / business / experience layers and update the matrix in OUT."""
    # why: the ontology, rule and evaluation stack pulls pyarrow, pydantic, jsonschema and httpx
    # (~0.4 s); imported when the command runs so `mixtune --help` stays fast
    from mixtune.data.ontology import load_ontology
    from mixtune.eval.backends import OpenAIBackend, load_backend
    from mixtune.eval.experience import LLMJudge
    from mixtune.eval.ifeval.subset import packaged_subset
    from mixtune.eval.runner import evaluate_model, read_jsonl, write_matrix
    from mixtune.rules import RuleEngine, RuleSet

    console = Console(stderr=True)
    onto = load_ontology(ontology)
    engine = RuleEngine(RuleSet.load(rules))
    samples = load_samples(data, split=split, per_task=samples_per_task, seed=seed)
    if ifeval and ifeval_prompts:
        raise ConfigError("give --ifeval FILE or --ifeval-prompts N, not both (both are family 'ifeval')",
                          where="--ifeval-prompts")
    prompts = load_ifeval(ifeval, ifeval_limit) if ifeval else packaged_subset("ifeval", ifeval_prompts, seed)
    zh_prompts = packaged_subset("ifeval_zh", ifeval_zh_prompts, seed)
    judge = None
    if judge_url:
        if not judge_model:
            raise ConfigError("--judge-url needs --judge-model", where="--judge-model")
        judge = LLMJudge(OpenAIBackend(judge_url, api_key=os.environ.get(api_key_env), model=judge_model))
    voice = None
    if user_url:
        if not user_model:
            raise ConfigError("--user-url needs --user-model", where="--user-model")
        voice = OpenAIBackend(user_url, api_key=os.environ.get(api_key_env), model=user_model)
    name = model_name or (served_model if model.startswith(("http://", "https://")) else Path(model).name)
    if not name or "/" in name or name.startswith(".") or name in IFEVAL_FAMILIES:
        raise ConfigError(f"unusable model name {name!r}; pass --model-name", where="--model-name")
    backend = load_backend(model, device=device, dtype=dtype, batch_size=batch_size,
                           api_key=os.environ.get(api_key_env), model=served_model)
    console.print(f"evaluating [bold]{name}[/] on {len(samples)} samples, {len({s.task_id for s in samples})} tasks")
    out.mkdir(parents=True, exist_ok=True)
    evaluate_model(backend, samples, onto, engine, model_name=name, max_new_tokens=max_new_tokens,
                   experience=experience, ifeval_prompts=prompts, ifeval_zh_prompts=zh_prompts,
                   ifeval_language="auto" if ifeval else "en", ifeval_max_new_tokens=ifeval_max_new_tokens,
                   out_path=out / f"{name}.jsonl",
                   progress=progress, experience_per_task=experience_per_task, judge=judge, seed=seed,
                   session_turns=session_turns if experience else 0, user_voice=voice)
    by_model = {p.stem: read_jsonl(p) for p in sorted(out.glob("*.jsonl"))}
    write_matrix(by_model, out)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    Console().print(render_summary(summary))
    for ife_table in render_ifeval(summary):
        Console().print(ife_table)
    console.print(f"wrote {out / (name + '.jsonl')}, {out / 'matrix.json'}, {out / 'summary.json'}")


def register(app: typer.Typer) -> None:
    """Add ``mixtune eval``."""
    app.command("eval")(eval_cmd)
