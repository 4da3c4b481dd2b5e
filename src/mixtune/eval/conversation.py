"""Conversations for evaluation: prompts per assistant turn, gold text, chunked generation.

Shared by the runner (base and business layers) and the experience agent, which both turn a
:class:`~mixtune.data.schema.Sample` into conversations and generate for many at once.
"""

from __future__ import annotations

from mixtune.data.schema import Sample
from mixtune.errors import DataError
from mixtune.eval.backends import Backend
from mixtune.eval.progress import progress_bar

GEN_CHUNK = 64  # conversations per backend call: bounds memory and gives the progress bar ticks


def split_prompt(sample: Sample) -> tuple[list[dict], str]:
    """Conversation up to the last assistant turn (earlier gold turns kept) and that turn's text."""
    convs = turn_prompts(sample)
    msgs = sample.messages
    last = next((m.content for m in reversed(msgs) if m.role == "assistant"), sample.output)
    return convs[-1], last


def turn_prompts(sample: Sample) -> list[list[dict]]:
    """One conversation per assistant turn, each ending just before that turn.

    Every turn of a chain is generated with the *gold* earlier turns as context (teacher
    forcing), so the final step is judged on its own merit and an early slip does not cascade;
    the KPI functions then see all generated steps joined, as they expect.
    """
    msgs = [{"role": m.role, "content": m.content} for m in sample.messages]
    ends = [i for i, m in enumerate(msgs) if m["role"] == "assistant"] or [len(msgs)]
    convs = [msgs[:i] for i in ends]
    for conv in convs:
        if not any(m["role"] == "user" for m in conv):
            raise DataError("an assistant turn has no user turn before it", where=f"sample {sample.id or sample.task_id}")
    return convs


def reference_text(sample: Sample) -> str:
    """Gold answer: all assistant turns joined by newlines (``output`` when there are none)."""
    turns = [m.content for m in sample.messages if m.role == "assistant"]
    return "\n".join(turns) if turns else sample.output


def prompt_text(conv: list[dict]) -> str:
    """The user-visible input as one string (rules that check against the input read it)."""
    return "\n".join(m["content"] for m in conv if m["role"] != "system")


def generate_all(backend: Backend, conversations: list[list[dict]], *, max_new_tokens: int, desc: str,
                 progress: bool = True, seed: int | None = 0) -> list[str]:
    """Generate for many conversations in chunks, shortest-similar together, order preserved."""
    order = sorted(range(len(conversations)), key=lambda i: -sum(len(m["content"]) for m in conversations[i]))
    out: list[str] = [""] * len(conversations)
    with progress_bar(desc, total=len(conversations), enabled=progress) as advance:
        for start in range(0, len(order), GEN_CHUNK):
            idx = order[start:start + GEN_CHUNK]
            texts = backend.generate([conversations[i] for i in idx], max_new_tokens=max_new_tokens, seed=seed)
            for i, t in zip(idx, texts, strict=True):
                out[i] = t
            advance(len(idx))
    return out
