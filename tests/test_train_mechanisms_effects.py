"""Effect tests on the tiny HF model: each mechanism's on-switch moves the quantity it targets.

A minimal in-test loop (cross-entropy on responses, optionally + the mechanism's term) is run twice
from the same initial weights and seed, once with the term and once without; the targeted quantity
must improve clearly more with the term on.
"""

from __future__ import annotations

import random

import pytest
import torch

from mixtune.model.tiny import make_test_model
from mixtune.train.adversarial import response_kl, response_positions
from mixtune.train.neftune import neftune
from mixtune.train.supcon import compose_consistency_batch, cosine_gap, pool_instruction, supcon_loss

PHRASINGS = {
    0: ["计算该银行的流动性覆盖率。", "请求出流动性覆盖率LCR。", "根据数据算一下LCR指标。"],
    1: ["解释信用利差的含义。", "什么是信用利差？请说明。", "请简述信用利差概念。"],
    2: ["评估客户的违约风险等级。", "给出该借款人的风险评级。", "判断这笔贷款的风险等级。"],
}
RESPONSES = {0: "流动性覆盖率=150.00%，符合监管要求。", 1: "信用利差是债券收益率与无风险利率之差。",
             2: "风险等级：中等，建议加强贷后管理。"}
DISTRACTORS = ["（注：今天天气晴朗，会议室在三楼。）", "据说可能大概也许，", "另外，该行去年更换了标志。"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoTokenizer

    corpus = [p for ps in PHRASINGS.values() for p in ps] + list(RESPONSES.values()) + DISTRACTORS
    path = make_test_model(tmp_path_factory.mktemp("tiny"), texts=corpus * 10, seed=0)
    return path, AutoTokenizer.from_pretrained(str(path))


def _load(path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)


def _collate(tok, pairs):
    """Right-padded batch of (prompt, response): input_ids, attention_mask, labels, instr_mask."""
    rows = []
    for prompt, response in pairs:
        p = tok(prompt + "\n", add_special_tokens=False)["input_ids"]
        r = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        rows.append((p, r))
    width = max(len(p) + len(r) for p, r in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    attn = torch.zeros(len(rows), width, dtype=torch.long)
    instr = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (p, r) in enumerate(rows):
        n = len(p) + len(r)
        ids[i, :n] = torch.tensor(p + r)
        labels[i, len(p):n] = torch.tensor(r)
        attn[i, :n] = 1
        instr[i, :len(p)] = 1
    return {"input_ids": ids, "attention_mask": attn, "labels": labels, "instr_mask": instr}


def _forward(model, batch, hidden=False):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 labels=batch["labels"], output_hidden_states=hidden)


# ---------------------------------------------------------------------------------------- SupCon

def _all_views(tok):
    meta, pairs = [], []
    for task, phrs in PHRASINGS.items():
        for phr, text in enumerate(phrs):
            meta.append((len(pairs), task, phr))
            pairs.append((text, RESPONSES[task]))
    return meta, pairs


def _gap(model, batch, labels):
    model.eval()
    with torch.no_grad():
        h = _forward(model, batch, hidden=True).hidden_states[-1]
    model.train()
    return cosine_gap(pool_instruction(h, batch["instr_mask"]), labels)


def _train_supcon(path, tok, weight, steps=30):
    model = _load(path).train()
    meta, pairs = _all_views(tok)
    full = _collate(tok, pairs)
    all_labels = torch.tensor([t for _, t, _ in meta])
    before = _gap(model, full, all_labels)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = random.Random(0)
    for _ in range(steps):
        idx = compose_consistency_batch(meta, 6, rng)
        batch = _collate(tok, [pairs[i] for i in idx])
        out = _forward(model, batch, hidden=weight > 0)
        loss = out.loss
        if weight > 0:
            emb = pool_instruction(out.hidden_states[-1], batch["instr_mask"])
            loss = loss + weight * supcon_loss(emb, torch.tensor([meta[i][1] for i in idx]), 0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return before, _gap(model, full, all_labels)


def test_supcon_term_widens_intra_inter_gap(tiny):
    path, tok = tiny
    before_off, after_off = _train_supcon(path, tok, weight=0.0)
    before_on, after_on = _train_supcon(path, tok, weight=0.5)
    assert before_on == pytest.approx(before_off, abs=1e-6)  # same start
    gain_on, gain_off = after_on - before_on, after_off - before_off
    assert gain_on > 0.1
    assert gain_on > gain_off + 0.1, (gain_on, gain_off)


# ---------------------------------------------------------------------------------------- twin KL

def _twin_batches(tok):
    clean, twin = [], []
    for task, phrs in PHRASINGS.items():
        for k, text in enumerate(phrs):
            clean.append((text, RESPONSES[task]))
            twin.append((DISTRACTORS[(task + k) % len(DISTRACTORS)] + text, RESPONSES[task]))
    return _collate(tok, clean), _collate(tok, twin)


def _kl(model, clean, twin):
    model.eval()
    with torch.no_grad():
        kl = response_kl(_forward(model, twin).logits, _forward(model, clean).logits,
                         response_positions(twin["labels"]), response_positions(clean["labels"]))
    model.train()
    return kl.item()


def _train_kl(path, tok, weight, warm=40, steps=25):
    model = _load(path).train()
    clean, twin = _twin_batches(tok)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    # Warm start, identical in both arms: a random-init model is near-uniform, so twin and clean
    # agree trivially (KL ~ 1e-4). After learning the clean data the distractors do shift its
    # response distribution, which is the divergence the term exists to remove.
    for step in range(warm + steps):
        if step == warm:
            before = _kl(model, clean, twin)
        out = _forward(model, clean)
        loss = out.loss  # twins never enter the main cross-entropy
        if weight > 0 and step >= warm:
            t_logits = model(input_ids=twin["input_ids"], attention_mask=twin["attention_mask"]).logits
            loss = loss + weight * response_kl(t_logits, out.logits, response_positions(twin["labels"]),
                                               response_positions(clean["labels"]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return before, _kl(model, clean, twin)


def test_kl_term_reduces_twin_clean_divergence(tiny):
    path, tok = tiny
    before_off, after_off = _train_kl(path, tok, weight=0.0)
    before_on, after_on = _train_kl(path, tok, weight=1.0)
    assert before_on == pytest.approx(before_off, rel=1e-5)
    assert before_on > 1e-3  # the warm start gives the term something to remove
    # On: the divergence falls (to well under half). Off: CE on clean alone lets it grow.
    assert after_on < 0.5 * before_on, (before_on, after_on)
    assert after_on < 0.5 * after_off, (after_on, after_off)
    assert (before_on - after_on) > (before_off - after_off)


# ---------------------------------------------------------------------------------------- NEFTune

def test_neftune_on_real_model_train_only(tiny):
    path, tok = tiny
    model = _load(path)
    batch = _collate(tok, [(PHRASINGS[0][0], RESPONSES[0])])
    model.eval()
    with torch.no_grad():
        ref = _forward(model, batch).logits
    with neftune(model, alpha=5.0, pad_token_id=tok.pad_token_id):
        with torch.no_grad():
            assert torch.equal(_forward(model, batch).logits, ref)  # eval: untouched
            model.train()
            noisy = _forward(model, batch).logits
        assert not torch.allclose(noisy, ref)
    with torch.no_grad():
        assert torch.equal(_forward(model, batch).logits, ref)  # removed: train mode clean again
