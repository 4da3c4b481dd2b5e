"""Context orchestration for stage 2.

Two transforms that build extra training conversations from existing ones, seeded:

* ``carry_forward``: for each chain sample (ordered steps, each step's output feeding the next),
  make single-step variants where the previous step's output is inserted into the current step's
  input — the model learns to use an upstream result given as context, not only inside a chat.
* ``side_by_side``: place two related single-task samples (tasks linked by a chain definition or
  of the same family) in one multi-turn context, loss on both answers, so related instructions are
  seen together and task boundaries inside one context are learnt.
"""

from __future__ import annotations

import random

from mixtune.data.schema import Message, Sample

CARRY_PREFIX = "已知上一步结果：{prev}\n"


def carry_forward(chain_samples: list[Sample], rng: random.Random, share: float = 0.5) -> list[Sample]:
    """Single-turn variants of chain steps ≥2 with the previous assistant output inserted in the input."""
    out = []
    for s in chain_samples:
        msgs = [m for m in s.messages if m.role != "system"]
        turns = [(msgs[i], msgs[i + 1]) for i in range(0, len(msgs) - 1, 2)
                 if msgs[i].role == "user" and msgs[i + 1].role == "assistant"]
        for k in range(1, len(turns)):
            if rng.random() >= share:
                continue
            prev_answer = turns[k - 1][1].content
            user, answer = turns[k]
            content = CARRY_PREFIX.format(prev=prev_answer) + user.content
            step_task = s.chain_steps[k] if k < len(s.chain_steps) else s.task_id
            v = s.model_copy(update={
                "id": "", "messages": [Message(role="user", content=content), Message(role="assistant", content=answer.content)],
                "instruction": "", "input": content, "output": answer.content, "task_id": s.task_id,
                "context_variant": s.context_variant, "parent_id": "", "perturbation_type": "",
                "source_type": f"orchestrated:carry_forward:{step_task}",
            })
            out.append(v.with_id())
    return out


def related_pairs(tasks: dict[str, str], chains: list[list[str]]) -> dict[str, list[str]]:
    """Task → related tasks: linked by a chain definition, else sharing a family."""
    rel: dict[str, set[str]] = {t: set() for t in tasks}
    for steps in chains:
        for a in steps:
            for b in steps:
                if a != b and a in rel and b in rel:
                    rel[a].add(b)
    for a, fa in tasks.items():
        for b, fb in tasks.items():
            if a != b and fa == fb:
                rel[a].add(b)
    return {t: sorted(v) for t, v in rel.items()}


def side_by_side(samples: list[Sample], related: dict[str, list[str]], rng: random.Random,
                 n: int) -> list[Sample]:
    """``n`` two-task conversations pairing a sample with one of a related task (same split only)."""
    by_task: dict[str, list[Sample]] = {}
    for s in samples:
        if len(s.messages) == 2 and not s.parent_id:
            by_task.setdefault(s.task_id, []).append(s)
    candidates = [t for t in by_task if any(r in by_task for r in related.get(t, []))]
    out = []
    for _ in range(n if candidates else 0):
        t = rng.choice(candidates)
        partner = rng.choice([r for r in related[t] if r in by_task])
        a, b = rng.choice(by_task[partner]), rng.choice(by_task[t])
        v = b.model_copy(update={
            "id": "", "messages": list(a.messages) + list(b.messages), "instruction": a.instruction,
            "parent_id": "", "perturbation_type": "", "source_type": f"orchestrated:side_by_side:{partner}",
        })
        out.append(v.with_id())
    return out
