"""Assistant-only loss masks, instruction masks and leak-free packing."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mixtune.model.tiny import make_test_model
from mixtune.train.collate import IGNORE, debug_view, encode_conversation, pack_batch, pad_batch

CONVS = [
    [{"role": "user", "content": "请解释什么是信用利差\n行业：城投"}, {"role": "assistant", "content": "信用利差=20bp"}],
    [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "world fox"},
     {"role": "user", "content": "again"}, {"role": "assistant", "content": "ok"}],
]


def _model(tmp_path):
    path = make_test_model(tmp_path / "m")
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def test_labels_only_on_assistant_turns_and_end_marker(tmp_path):
    _, tok = _model(tmp_path)
    enc = encode_conversation(tok, CONVS[1], 256)
    labelled = tok.decode([t for t, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE])
    assert labelled == "world fox<|im_end|>ok<|im_end|>"
    enc0 = encode_conversation(tok, CONVS[0], 256, instruction="请解释什么是信用利差")
    instr = tok.decode([t for t, m in zip(enc0.input_ids, enc0.instr_mask) if m])
    assert instr == "请解释什么是信用利差"
    view = debug_view(tok, enc0)
    assert "[<|im_end|>]" in view and "·<|im_start|>·" in view


def _token_losses(model, batch):
    kw = {k: v for k, v in batch.items() if k not in ("labels", "instr_mask")}
    logits = model(**kw).logits
    lg, lb = logits[:, :-1], batch["labels"][:, 1:]
    loss = torch.nn.functional.cross_entropy(lg.reshape(-1, lg.size(-1)), lb.reshape(-1), ignore_index=IGNORE,
                                             reduction="none")
    return loss[lb.reshape(-1) != IGNORE]


def test_packing_matches_unpacked_loss_no_cross_sample_leak(tmp_path):
    model, tok = _model(tmp_path)
    encs = [encode_conversation(tok, c, 256) for c in CONVS]
    padded = _token_losses(model, pad_batch(encs, tok.pad_token_id))
    packed_batch = pack_batch(encs, 256, tok.pad_token_id)
    assert packed_batch["input_ids"].shape[0] == 1  # both fit in one row
    packed = _token_losses(model, packed_batch)
    assert len(padded) == len(packed)
    assert torch.allclose(padded.sum(), packed.sum(), atol=1e-4)
    # Without the block-diagonal mask the second sample would see the first: loss changes.
    leaky = dict(packed_batch)
    leaky.pop("attention_mask")
    assert not torch.allclose(_token_losses(model, leaky).sum(), padded.sum(), atol=1e-4)


def test_padding_carries_no_loss(tmp_path):
    _, tok = _model(tmp_path)
    encs = [encode_conversation(tok, c, 256) for c in CONVS]
    b = pad_batch(encs, tok.pad_token_id)
    assert (b["labels"][b["attention_mask"] == 0] == IGNORE).all()
