"""Assistant-only labels, packing and the label debug view under real chat templates.

The tokenizer is the one transformers rebuilds from a GGUF file (ChatML template from the file), and
the same vocabulary under other real templates: SmolLM2's (which injects a default system prompt),
Llama-3's and Zephyr's. Nothing in collate may assume the built-in template.
"""

from __future__ import annotations

import re

import pytest
from helpers.tiny_gguf import build
from transformers import AutoTokenizer

from mixtune.model.sources import resolve_model
from mixtune.train.collate import IGNORE, debug_view, encode_conversation, pack_batch, pad_batch

SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
ZEPHYR = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
# template name -> (template or None for the GGUF's own, end-of-turn marker, extra special tokens)
TEMPLATES = {
    "gguf_chatml": (None, "<|im_end|>", []),
    "smollm2": (SMOLLM2, "<|im_end|>", []),
    "llama3": (LLAMA3, "<|eot_id|>", ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]),
    "zephyr": (ZEPHYR, "</s>", ["</s>"]),
}
# A chain: every assistant turn must be labelled and nothing else, even text a user turn repeats.
CHAIN = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "流动性覆盖率是多少？"},
    {"role": "assistant", "content": "流动性覆盖率=150.00%"},
    {"role": "user", "content": "流动性覆盖率=150.00%\nIs that compliant?"},
    {"role": "assistant", "content": "Yes, above 100%."},
    {"role": "user", "content": "Summarise."},
    {"role": "assistant", "content": "The quick answer: 42."},
]
NO_SYSTEM = [{"role": "user", "content": "hello world"}, {"role": "assistant", "content": "the lazy dog"}]


@pytest.fixture(scope="module")
def gguf_folder(tmp_path_factory):
    path, _ = build(tmp_path_factory.mktemp("gguf"))
    return resolve_model(f"gguf:{path}", cache_dir=tmp_path_factory.mktemp("cache"))


def _tokenizer(folder, name):
    tok = AutoTokenizer.from_pretrained(folder)
    template, end, extra = TEMPLATES[name]
    if extra:
        tok.add_special_tokens({"additional_special_tokens": extra})
    if name == "zephyr":
        tok.eos_token = "</s>"
    if template is not None:
        tok.chat_template = template
    return tok, end


def _labelled_runs(tok, enc) -> list[str]:
    """Decoded runs of consecutive labelled tokens (one per assistant turn if masks are right)."""
    runs, cur = [], []
    for tid, lab in zip(enc.input_ids, enc.labels):
        if lab != IGNORE:
            assert lab == tid  # labels are the tokens themselves (the model shifts them)
            cur.append(tid)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return [tok.decode(r) for r in runs]


@pytest.mark.parametrize("name", list(TEMPLATES))
@pytest.mark.parametrize("conv", [CHAIN, NO_SYSTEM], ids=["chain", "no_system"])
def test_assistant_turns_and_only_they_are_labelled(gguf_folder, name, conv):
    tok, end = _tokenizer(gguf_folder, name)
    enc = encode_conversation(tok, conv, 1024)
    expected = [m["content"] + end for m in conv if m["role"] == "assistant"]
    assert _labelled_runs(tok, enc) == expected
    # token by token: a token is labelled iff it starts inside an assistant turn's text + end marker,
    # located in the render independently (in order, after the previous match)
    full = tok.apply_chat_template(conv, tokenize=False)
    spans, pos = [], 0
    for m in conv:
        piece = m["content"] + (end if m["role"] == "assistant" else "")
        start = full.index(piece, pos)
        pos = start + len(piece)
        if m["role"] == "assistant":
            spans.append((start, pos))
    offsets = tok(full, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert len(offsets) == len(enc.input_ids)
    for (s, _e), lab in zip(offsets, enc.labels):
        assert (lab != IGNORE) == any(a <= s < b for a, b in spans)
    # the first user turn is the instruction (SupCon pooling), whatever the template puts around it
    first_user = next(m["content"] for m in conv if m["role"] == "user")
    assert tok.decode([t for t, m in zip(enc.input_ids, enc.instr_mask) if m]) == first_user


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_padding_and_packing_keep_the_masks(gguf_folder, name):
    tok, _ = _tokenizer(gguf_folder, name)
    encs = [encode_conversation(tok, c, 1024) for c in (CHAIN, NO_SYSTEM, CHAIN[:3])]
    padded = pad_batch(encs, tok.pad_token_id)
    for i, e in enumerate(encs):
        assert padded["labels"][i, : len(e.labels)].tolist() == e.labels
        assert (padded["labels"][i, len(e.labels):] == IGNORE).all()
    packed = pack_batch(encs, 1024, tok.pad_token_id)
    segments = []  # recover each packed sample from its restarting position ids
    for r in range(packed["input_ids"].shape[0]):
        ids, labels, pos = packed["input_ids"][r].tolist(), packed["labels"][r].tolist(), packed["position_ids"][r].tolist()
        starts = [j for j, p in enumerate(pos) if p == 0]
        for a, b in zip(starts, starts[1:] + [len(pos)]):
            segments.append((ids[a:b], labels[a:b]))
    for e in encs:
        assert any(ids[: len(e.input_ids)] == e.input_ids and labels[: len(e.labels)] == e.labels
                   for ids, labels in segments)
    assert sum(int(x != IGNORE) for e in encs for x in e.labels) == int((packed["labels"] != IGNORE).sum())


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_debug_view_brackets_exactly_the_assistant_text(gguf_folder, name):
    tok, end = _tokenizer(gguf_folder, name)
    enc = encode_conversation(tok, CHAIN, 1024)
    view = debug_view(tok, enc)
    labelled = "".join(re.findall(r"\[(.*?)\](?=[·<\[]|$)", view))
    assert labelled == "".join(m["content"] + end for m in CHAIN if m["role"] == "assistant").replace("\n", "\\n")
    assert f"[{end}]" in view and "·" in view


def test_eval_and_serve_paths_render_with_the_models_own_template(gguf_folder, tmp_path):
    import shutil

    from mixtune.eval.backends import HFBackend
    from mixtune.release.serve import counters_from_tokenizer

    folder = tmp_path / "smollm2_style"
    shutil.copytree(gguf_folder, folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = SMOLLM2  # a template unlike the built-in one, saved with the model
    tok.save_pretrained(folder)
    backend = HFBackend(folder, batch_size=2)
    conv = [{"role": "user", "content": "流动性覆盖率是多少？"}]
    prompt = backend.render(conv)
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert prompt.endswith("<|im_start|>user\n流动性覆盖率是多少？<|im_end|>\n<|im_start|>assistant\n")
    outs = backend.generate([conv, NO_SYSTEM[:1]], max_new_tokens=3)
    assert len(outs) == 2 and all(isinstance(o, str) for o in outs)
    _, count_prompt = counters_from_tokenizer(backend.tokenizer)
    assert count_prompt(conv) == len(backend.tokenizer(prompt, add_special_tokens=False)["input_ids"])


def test_truncation_is_counted_and_reported_by_task(gguf_folder, capsys):
    """A max_len that cuts answers is reported once, naming the tasks (never a silent loss)."""
    from types import SimpleNamespace

    from mixtune.data.schema import Message
    from mixtune.train.loop import encode_samples

    tok, _ = _tokenizer(gguf_folder, "smollm2")
    full = encode_conversation(tok, CHAIN, 1024)
    assert full.cut_labels == 0 and full.full_len == len(full.input_ids)
    n_labels = sum(1 for x in full.labels if x != IGNORE)
    short = encode_conversation(tok, CHAIN, len(full.input_ids) - 3)
    assert short.full_len == full.full_len and len(short.input_ids) == full.full_len - 3
    assert short.cut_labels == n_labels - sum(1 for x in short.labels if x != IGNORE) > 0

    def sample(task, conv):
        return SimpleNamespace(task_id=task, instruction="", messages=[Message(**m) for m in conv])

    samples = [sample("chain_long", CHAIN), sample("chain_long", CHAIN), sample("no_sys", NO_SYSTEM)]
    limit = len(encode_conversation(tok, NO_SYSTEM, 1024).input_ids)  # NO_SYSTEM fits, CHAIN does not
    capsys.readouterr()
    encs = encode_samples(tok, samples, limit, where="stage2.max_len")
    err = capsys.readouterr().err
    assert "2 of 3 samples" in err and "chain_long 2" in err and "no_sys" not in err
    assert f"stage2.max_len={limit}" in err and f"longest {full.full_len} tokens" in err
    assert [e.cut_labels > 0 for e in encs] == [True, True, False]
    encode_samples(tok, samples, 1024, where="stage2.max_len")
    assert "warning" not in capsys.readouterr().err
