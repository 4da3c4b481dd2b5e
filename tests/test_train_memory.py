"""Memory options: chunked cross-entropy, weight dtype, gradient checkpointing, DoRA, QLoRA refusal, lr warning."""

from __future__ import annotations

import pytest
import torch

from mixtune.errors import MixtuneError
from mixtune.model.tiny import make_test_model
from mixtune.train import common
from mixtune.train.collate import IGNORE
from mixtune.train.modeling import load_model_and_tokenizer, lr_warning, weight_dtype


def _labels(b: int, t: int, vocab: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lb = torch.randint(0, vocab, (b, t), generator=g)
    lb[:, : t // 3] = IGNORE  # prompt positions
    lb[1, -5:] = IGNORE  # padding
    return lb


def test_chunked_ce_matches_single_shot_and_upcasts_only_chunks(monkeypatch):
    b, t, vocab = 3, 40, 500
    logits = torch.randn(b, t, vocab, dtype=torch.bfloat16, requires_grad=True)
    labels = _labels(b, t, vocab)
    ref, n_ref = common.token_ce(logits, labels)  # 60k elements: the single-shot path
    (g_ref,) = torch.autograd.grad(ref, logits)
    sizes = []
    chunk_ce = common._chunk_ce

    def spy(lg, y):
        sizes.append(lg.numel())
        return chunk_ce(lg, y)

    monkeypatch.setattr(common, "_chunk_ce", spy)
    got, n = common.token_ce(logits, labels, chunk_elements=4000)
    (g,) = torch.autograd.grad(got, logits)
    assert n == n_ref == (labels[:, 1:] != IGNORE).sum()
    assert abs(got.item() - ref.item()) <= 1e-5 * abs(ref.item())
    assert torch.allclose(g.float(), g_ref.float(), atol=1e-5)
    assert sizes and max(sizes) <= 4000  # every fp32 upcast is one chunk, never the whole batch
    with torch.no_grad():
        assert abs(common.token_ce(logits, labels, chunk_elements=4000)[0].item() - ref.item()) <= 1e-5 * ref.item()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from helpers.synth import corpus, make_samples

    return str(make_test_model(tmp_path_factory.mktemp("base") / "m", corpus(make_samples())))


def _loss_and_grads(model, tokenizer):
    batch = tokenizer(["计算流动性覆盖率 数据12和34", "解释信用利差"], return_tensors="pt", padding=True)
    model.train()
    out = model(**batch)
    loss, _ = common.token_ce(out.logits, batch["input_ids"])
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_is_on_and_changes_nothing_but_memory(base):
    torch.manual_seed(0)
    plain, tok = load_model_and_tokenizer(base, finetune="full")
    torch.manual_seed(0)
    ckpt, _ = load_model_and_tokenizer(base, finetune="full", gradient_checkpointing=True)
    assert ckpt.is_activation_checkpointing and not plain.is_activation_checkpointing
    la, ga = _loss_and_grads(plain, tok)
    lb, gb = _loss_and_grads(ckpt, tok)
    assert abs(la - lb) <= 1e-5 * abs(la)
    assert ga.keys() == gb.keys() and all(torch.allclose(ga[k], gb[k], atol=1e-6) for k in ga)


def test_weight_dtype_auto_is_fp32_on_cpu_and_explicit_bf16_is_honoured_with_fp32_lora(base):
    assert weight_dtype("auto", cuda=False) == torch.float32
    assert weight_dtype("bf16", cuda=False) == torch.bfloat16
    model, _ = load_model_and_tokenizer(base, finetune="full", dtype="auto")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    model, _ = load_model_and_tokenizer(base, finetune="lora", lora_r=4, dtype="bf16")
    trainable = {p.dtype for p in model.parameters() if p.requires_grad}
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert trainable == {torch.float32} and frozen == {torch.bfloat16}
    with pytest.raises(MixtuneError, match="fp16") as e:
        load_model_and_tokenizer(base, finetune="full", dtype="fp16")
    assert e.value.where == "model.dtype"


def test_dora_through_peft_flag(base):
    model, _ = load_model_and_tokenizer(base, finetune="lora", lora_r=4, use_dora=True)
    names = [n for n, _ in model.named_parameters()]
    assert any("lora_magnitude_vector" in n for n in names)
    plain, _ = load_model_and_tokenizer(base, finetune="lora", lora_r=4)
    assert not any("lora_magnitude_vector" in n for n, _ in plain.named_parameters())


@pytest.mark.skipif(torch.cuda.is_available(), reason="asserts the CPU refusal; CUDA machines run QLoRA instead")
def test_qlora_is_a_clear_error_on_cpu(base):
    with pytest.raises(MixtuneError, match="CUDA") as e:
        load_model_and_tokenizer(base, finetune="lora", quant_bits=4)
    assert e.value.where == "model.quantization"
    with pytest.raises(MixtuneError, match="finetune: lora"):
        load_model_and_tokenizer(base, finetune="full", quant_bits=4)


def test_lr_warning_names_unusual_rates():
    assert lr_warning("full", 3e-3, 5_000_000) is None  # the tiny demo model
    assert "full fine-tuning" in lr_warning("full", 3e-3, 7_000_000_000)
    assert lr_warning("full", 2e-5, 7_000_000_000) is None
    assert "LoRA" in lr_warning("lora", 3e-2, 1_000_000)
    assert "LoRA" in lr_warning("lora", 1e-5, 1_000_000)
    assert lr_warning("lora", 2e-4, 7_000_000_000) is None
