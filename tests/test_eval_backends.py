"""HFBackend on the tiny test model: determinism, batching, stop strings, adapters, errors."""

from __future__ import annotations

import pytest

from mixtune.errors import CheckpointError, MixtuneError
from mixtune.eval.backends import HFBackend, load_backend, truncate_at_stop

CONVS = [[{"role": "user", "content": "请解释什么是信用利差。" * k + str(k)}] for k in range(1, 6)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """Tiny model with large random weights so greedy outputs differ per prompt (the default
    init is so flat that every prompt decodes to the same token, which would make the
    batching/stop tests vacuous)."""
    import torch
    from transformers import AutoModelForCausalLM

    from mixtune.model.tiny import make_test_model

    d = tmp_path_factory.mktemp("tiny")
    make_test_model(d)
    model = AutoModelForCausalLM.from_pretrained(str(d))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    model.save_pretrained(str(d))
    return d


@pytest.fixture(scope="module")
def backend(model_dir):
    return HFBackend(model_dir, batch_size=4)


def test_greedy_is_deterministic_and_prompt_dependent(backend):
    a = backend.generate(CONVS, max_new_tokens=10)
    b = backend.generate(CONVS, max_new_tokens=10)
    assert a == b
    assert len(set(a)) > 1, "different prompts should give different greedy completions"


def test_batching_equals_one_by_one(backend):
    batched = backend.generate(CONVS, max_new_tokens=10)
    single = [backend.generate([c], max_new_tokens=10)[0] for c in CONVS]
    assert batched == single


def test_sampling_seeded(backend):
    a = backend.generate(CONVS[:2], max_new_tokens=10, temperature=1.0, seed=7)
    b = backend.generate(CONVS[:2], max_new_tokens=10, temperature=1.0, seed=7)
    greedy = backend.generate(CONVS[:2], max_new_tokens=10)
    assert a == b and a != greedy


def test_generation_leaves_global_rng_alone(backend):
    import torch

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    backend.generate(CONVS[:2], max_new_tokens=5, temperature=1.0, seed=9)
    backend.generate(CONVS[:2], max_new_tokens=5)
    assert torch.equal(torch.rand(3), expected)


def test_stop_strings_truncate(backend):
    full = backend.generate(CONVS, max_new_tokens=12)
    text = next(t for t in full if len(t) >= 6)
    stop = text[3:5]
    got = backend.generate([CONVS[full.index(text)]], max_new_tokens=12, stop=[stop])[0]
    assert got == text[: text.find(stop)]
    assert stop not in got


def test_truncate_at_stop_earliest():
    assert truncate_at_stop("abc<END>def###", ["###", "<END>"]) == "abc"
    assert truncate_at_stop("abc", None) == "abc"


def test_adapter_dir_loads_and_differs(model_dir, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(str(model_dir))
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # B is zero-initialised; make the adapter actually change the model
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    out = tmp_path / "adapter"
    peft_model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(str(out))
    adapted = HFBackend(out, batch_size=4)
    assert adapted.is_adapter
    plain = HFBackend(model_dir, batch_size=4)
    got = adapted.generate(CONVS, max_new_tokens=10)
    assert got != plain.generate(CONVS, max_new_tokens=10)
    # The adapter is merged for generation (no LoRA matmuls per decoding step) and the merged
    # model decodes exactly as the unmerged PEFT model does.
    assert not any("lora_" in n for n, _ in adapted.model.named_parameters())
    unmerged = HFBackend(out, batch_size=4)
    unmerged.model = peft_model.eval()
    assert unmerged.generate(CONVS, max_new_tokens=10) == got


def test_missing_and_corrupt_paths(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        HFBackend(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        HFBackend(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError):
        HFBackend(bad)


def test_load_backend_dispatch(model_dir):
    assert isinstance(load_backend(str(model_dir)), HFBackend)
    with pytest.raises(MixtuneError, match="served model"):
        load_backend("http://127.0.0.1:1")


def test_overlong_prompt_is_left_truncated(backend):
    limit = backend.model.config.max_position_embeddings
    long_conv = [{"role": "user", "content": "流动性覆盖率" * limit}]
    out = backend.generate([long_conv, CONVS[0]], max_new_tokens=6)
    assert len(out) == 2 and out[1] == backend.generate([CONVS[0]], max_new_tokens=6)[0]


def test_hf_backend_encodes_safely_while_another_thread_uses_the_tokenizer(tmp_path):
    """`mixtune serve` counts usage tokens on its event loop while a batch encodes in a worker thread;
    the fast tokenizer's shared padding state once made such batches fail ("Unable to create tensor")."""
    import threading

    from mixtune.eval.backends import HFBackend
    from mixtune.model.tiny import make_test_model

    backend = HFBackend(str(make_test_model(tmp_path / "m")), batch_size=8)
    stop = threading.Event()

    def count_tokens():
        while not stop.is_set():
            backend.tokenizer("流动性覆盖率=150.00%", add_special_tokens=False)

    t = threading.Thread(target=count_tokens)
    t.start()
    try:
        for _ in range(40):  # prompts of different lengths: padding is needed every time
            out = backend.generate([[{"role": "user", "content": "你好" * (1 + 3 * j)}] for j in range(6)],
                                   max_new_tokens=2)
            assert len(out) == 6
    finally:
        stop.set()
        t.join()
