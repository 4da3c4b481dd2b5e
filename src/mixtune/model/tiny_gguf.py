"""A small GGUF file written from scratch, so GGUF loading is tested without downloading anything.

The file is what llama.cpp's converter would write for a tiny Llama: ``llama`` architecture
metadata, a byte-level BPE vocabulary with its merges (``tokenizer.ggml.model = gpt2``), control
tokens, a ChatML chat template, and F32 tensors under llama.cpp's names with the q/k rows permuted
the way llama.cpp permutes them (transformers undoes that on load). Tests and the quick benchmark
tier convert it through ``gguf:`` and compare against the source weights returned here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

# SmolLM2's layout: <|endoftext|> is unk/pad, <|im_start|> bos, <|im_end|> eos (so generation stops
# at the end of an assistant turn).
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
DEFAULT_TEXTS = [
    "流动性覆盖率=150.00%，符合监管要求。", "请解释什么是信用利差。", "The capital of France is Paris.",
    "hello world, the quick brown fox jumps over the lazy dog.", "Answer briefly: 12 + 30 = 42.",
] * 20


def _train_bpe(texts: list[str], vocab_size: int):
    """Byte-level BPE with GPT-2's pre-tokenisation, which transformers rebuilds from a ``gpt2`` GGUF."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainer=trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return tok


def _llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (rotary pairs interleaved); the inverse of transformers' unpermute."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(
    path: str | Path,
    texts: Iterable[str] | None = None,
    *,
    vocab_size: int = 400,
    hidden_size: int = 32,
    intermediate_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    context_length: int = 256,
    chat_template: str = CHATML_TEMPLATE,
    architecture: str = "llama",
    seed: int = 0,
) -> dict:
    """Write a tiny Llama GGUF to ``path``; returns its source ``state_dict`` (torch) and ``tokenizer``.

    ``architecture`` only changes the declared ``general.architecture`` (to test the unsupported-
    architecture error); the tensors are always Llama's.
    """
    import gguf
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _train_bpe(list(texts) if texts is not None else DEFAULT_TEXTS, vocab_size)
    model_json = json.loads(tok.to_str())["model"]
    vocab = model_json["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model_json["merges"]]
    ids = {t: vocab[t] for t in SPECIALS}

    config = LlamaConfig(
        vocab_size=len(tokens), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads, max_position_embeddings=context_length,
        rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=ids["<|im_start|>"],
        eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # random norms, so a mapping mix-up between norm tensors changes the logits
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}

    w = gguf.GGUFWriter(str(path), architecture)
    w.add_name("mixtune tiny test llama")
    w.add_context_length(context_length)
    w.add_embedding_length(hidden_size)
    w.add_block_count(num_hidden_layers)
    w.add_feed_forward_length(intermediate_size)
    w.add_rope_dimension_count(hidden_size // num_attention_heads)
    w.add_head_count(num_attention_heads)
    w.add_head_count_kv(num_key_value_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(config.rope_parameters["rope_theta"] if getattr(config, "rope_parameters", None)
                         else 10000.0)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in ids else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(ids["<|im_start|>"])
    w.add_eos_token_id(ids["<|im_end|>"])
    w.add_unk_token_id(ids["<|endoftext|>"])
    w.add_pad_token_id(ids["<|endoftext|>"])
    w.add_add_bos_token(False)
    w.add_chat_template(chat_template)

    def put(name: str, t: torch.Tensor) -> None:
        w.add_tensor(name, np.ascontiguousarray(t.float().numpy()))

    put("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(num_hidden_layers):
        p = f"model.layers.{i}."
        put(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        put(f"blk.{i}.attn_q.weight", torch.from_numpy(
            _llama_permute(sd[p + "self_attn.q_proj.weight"].numpy(), num_attention_heads)))
        put(f"blk.{i}.attn_k.weight", torch.from_numpy(
            _llama_permute(sd[p + "self_attn.k_proj.weight"].numpy(), num_key_value_heads)))
        put(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        put(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        put(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        put(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        put(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        put(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    put("output_norm.weight", sd["model.norm.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"state_dict": sd, "tokenizer": tok, "config": config}
