"""The built-in default model: a small Llama-architecture causal LM built from a config.

Nothing is downloaded: a byte-level BPE tokenizer is trained on the run's own text with
``tokenizers``, a randomly initialised ``LlamaForCausalLM`` is created from a config, and both are
saved in HF format. Callers always reload them through ``from_pretrained`` so the code path that
serves the tiny model is the same one that serves any HF model id or local directory.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

BOS, EOS, PAD, IM_START, IM_END = "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"

# ChatML: the assistant turn ends with <|im_end|>, which is the eos token, so generation stops at
# the end of the answer without any stop-string handling.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path | None = None):
    """Train a byte-level BPE tokenizer on ``texts``; returns a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Digits are split one by one (as Llama-3 and Qwen tokenizers do) so that a number and its
    # masked or copied suffix share tokens: copying "…1673" out of "16311231673" stays learnable.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=IM_END, pad_token=PAD, unk_token=None,
        additional_special_tokens=[IM_START, EOS],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"  # generation pads on the left; the trainer pads explicitly itself
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast


def build_tiny_model(
    out_dir: str | Path,
    texts: Iterable[str],
    *,
    vocab_size: int = 3000,
    hidden_size: int = 128,
    intermediate_size: int = 352,
    num_hidden_layers: int = 3,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    max_position_embeddings: int = 512,
    seed: int = 0,
) -> Path:
    """Create tokenizer + randomly initialised Llama model in HF format under ``out_dir``.

    Returns ``out_dir``. Load it back with ``AutoModelForCausalLM.from_pretrained(out_dir)``.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(texts, vocab_size, out)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(str(out))
    return out


def make_test_model(out_dir: str | Path, texts: Iterable[str] | None = None, seed: int = 0) -> Path:
    """A very small model for unit tests (≈100k parameters, builds in about a second)."""
    corpus = list(texts) if texts is not None else [
        "流动性覆盖率=150.00%，符合监管要求。", "请解释什么是信用利差。", "hello world, the quick brown fox.",
    ] * 20
    return build_tiny_model(out_dir, corpus, vocab_size=400, hidden_size=32, intermediate_size=64,
                            num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                            max_position_embeddings=256, seed=seed)
