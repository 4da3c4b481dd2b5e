"""Chat rendering with assistant-only loss masks, instruction masks, padding and packing.

The tokenizer's own chat template renders the conversation; character spans of every assistant
turn (its content plus the end-of-turn marker, so the model learns to stop) are found by rendering
prefixes, and mapped to tokens through the fast tokenizer's offsets. This works for any template
with the prefix property (ChatML, Llama-3, Qwen ...), not only the built-in one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

IGNORE = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    instr_mask: list[int]  # 1 on tokens of the instruction phrasing (for SupCon pooling)
    neg_ids: list[int] = field(default_factory=list)  # token ids flagged for unlikelihood
    cut_labels: int = 0  # answer tokens lost to max_len truncation (reported by encode_samples)
    full_len: int = 0  # tokens before truncation


def _render(tokenizer, messages, add_generation_prompt=False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def encode_conversation(tokenizer, messages: list[dict], max_len: int, instruction: str = "") -> Encoded:
    """Tokenise a conversation; labels only on assistant turns; instruction mask on the phrasing.

    ``instruction`` is the instruction phrasing that starts the first user turn (stage-1 samples); when
    empty the whole first user turn counts as instruction.
    """
    full = _render(tokenizer, messages)
    label_spans: list[tuple[int, int]] = []
    instr_span: tuple[int, int] | None = None
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            start = len(_render(tokenizer, messages[:i], add_generation_prompt=True))
            end = len(_render(tokenizer, messages[: i + 1]).rstrip("\n"))
            label_spans.append((start, end))
        elif m["role"] == "user" and instr_span is None:
            before = len(_render(tokenizer, messages[:i])) if i else 0
            pos = full.find(m["content"], before)
            if pos >= 0:
                n = len(instruction) if instruction and m["content"].startswith(instruction) else len(m["content"])
                instr_span = (pos, pos + n)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels, instr = [], []
    for tok, (s, _e) in zip(ids, offsets):
        in_label = any(s >= a and s < b for a, b in label_spans)
        labels.append(tok if in_label else IGNORE)
        instr.append(1 if instr_span and s >= instr_span[0] and s < instr_span[1] else 0)
    full_len, cut = len(ids), sum(1 for x in labels[max_len:] if x != IGNORE)
    if len(ids) > max_len:  # keep the start: prompts are short, answers matter
        ids, labels, instr = ids[:max_len], labels[:max_len], instr[:max_len]
    return Encoded(list(ids), labels, instr, cut_labels=cut, full_len=full_len)


def token_ids_for_spans(tokenizer, text: str, spans: list[tuple[int, int]]) -> list[int]:
    """Token ids of ``text`` that overlap the given character spans (unlikelihood negatives)."""
    if not spans:
        return []
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for tok, (s, e) in zip(enc["input_ids"], enc["offset_mapping"]):
        if any(s < b and e > a for a, b in spans):
            out.append(tok)
    return sorted(set(out))


def pad_batch(items: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest item; padding carries no loss and no attention."""
    n = max(len(x.input_ids) for x in items)
    ids = torch.full((len(items), n), pad_id, dtype=torch.long)
    labels = torch.full((len(items), n), IGNORE, dtype=torch.long)
    attn = torch.zeros((len(items), n), dtype=torch.long)
    instr = torch.zeros((len(items), n), dtype=torch.long)
    for i, x in enumerate(items):
        k = len(x.input_ids)
        ids[i, :k] = torch.tensor(x.input_ids)
        labels[i, :k] = torch.tensor(x.labels)
        attn[i, :k] = 1
        instr[i, :k] = torch.tensor(x.instr_mask)
    return {"input_ids": ids, "labels": labels, "attention_mask": attn, "instr_mask": instr}


def pack_batch(items: list[Encoded], max_len: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Greedy first-fit packing into rows of ``max_len`` with a block-diagonal causal mask.

    Each packed sample restarts its position ids and can only attend within itself (the 4-D mask
    below), and the first label of every sample is dropped so no token predicts across a boundary.
    """
    rows: list[list[Encoded]] = []
    lengths: list[int] = []
    for x in sorted(items, key=lambda e: -len(e.input_ids)):
        for r, used in enumerate(lengths):
            if used + len(x.input_ids) <= max_len:
                rows[r].append(x)
                lengths[r] += len(x.input_ids)
                break
        else:
            rows.append([x])
            lengths.append(len(x.input_ids))
    n = max(lengths)
    b = len(rows)
    ids = torch.full((b, n), pad_id, dtype=torch.long)
    labels = torch.full((b, n), IGNORE, dtype=torch.long)
    pos = torch.zeros((b, n), dtype=torch.long)
    seg = torch.full((b, n), -1, dtype=torch.long)
    instr = torch.zeros((b, n), dtype=torch.long)
    for r, row in enumerate(rows):
        off = 0
        for j, x in enumerate(row):
            k = len(x.input_ids)
            ids[r, off : off + k] = torch.tensor(x.input_ids)
            labels[r, off : off + k] = torch.tensor(x.labels)
            pos[r, off : off + k] = torch.arange(k)
            seg[r, off : off + k] = j
            instr[r, off : off + k] = torch.tensor(x.instr_mask)
            off += k
    causal = torch.tril(torch.ones(n, n, dtype=torch.bool))
    same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] >= 0)
    allowed = same & causal[None]
    # Padding rows attend to themselves only so softmax stays finite; they carry no loss.
    allowed |= torch.eye(n, dtype=torch.bool)[None]
    mask = torch.zeros((b, 1, n, n), dtype=torch.float32)
    mask.masked_fill_(~allowed[:, None], torch.finfo(torch.float32).min)
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "position_ids": pos, "instr_mask": instr}


def debug_view(tokenizer, enc: Encoded) -> str:
    """Human-readable view of which tokens carry labels: ``[label]`` vs ``·prompt·`` tokens.

    Byte-level BPE vocabularies (SmolLM2, Llama-3, Qwen) split one CJK character over several
    tokens, each of which decodes to U+FFFD alone; such tokens are shown together with the next
    token(s) of the same kind until the group decodes to whole characters.
    """
    parts: list[str] = []
    group: list[int] = []
    kind = ""

    def flush() -> None:
        text = tokenizer.decode(group).replace("\n", "\\n")
        parts.append(f"[{text}]" if kind == "label" else f"<{text}>" if kind == "instr" else f"·{text}·")

    for tok, lab, ins in zip(enc.input_ids, enc.labels, enc.instr_mask):
        k = "label" if lab != IGNORE else "instr" if ins else "prompt"
        if group and (k != kind or "\ufffd" not in tokenizer.decode(group)):
            flush()
            group = []
        group.append(tok)
        kind = k
    if group:
        flush()
    return "".join(parts)
