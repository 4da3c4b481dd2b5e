"""Peak training memory of mixtune's training step vs TRL's ``SFTTrainer`` on the same model and settings.

Variants: full fine-tune, LoRA, LoRA + gradient checkpointing, LoRA + chunked cross-entropy, and LoRA +
both. mixtune's side is its own step: the model loaded by :func:`mixtune.train.modeling.load_model_and_tokenizer`
(dtype, LoRA, checkpointing), conversations encoded by :func:`mixtune.train.loop.encode_samples`, the loss
by :func:`mixtune.train.common.token_ce` and AdamW from :func:`mixtune.train.common.make_optimizer`.
TRL's side is ``SFTTrainer`` with the same batch, max_len, weight dtype, autocast precision, LoRA config
and ``gradient_checkpointing``; TRL has no chunked cross-entropy (its loss is transformers', which
upcasts the whole batch's logits to fp32), so its chunked-CE rows are its plain LoRA run.

Peak memory: on a GPU ``torch.cuda.max_memory_allocated`` from just before the model loads to the end
of training; on a CPU the process's resident high-water mark (``VmHWM``, reset through
``/proc/self/clear_refs`` just before the model loads). Both sides import the same libraries first,
so the resident baseline is the same. The full tier runs each (side, variant) in its own fresh
process; the quick tier (a tiny model, one step, in this process) only checks that the machinery
runs and writes the JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from mixtune.bench.harness import Context, row, summarize
from mixtune.errors import MixtuneError
from mixtune.model.sources import resolve_model

#: variant → (finetune, gradient checkpointing, chunked CE)
VARIANTS: dict[str, tuple[str, bool, bool]] = {
    "full": ("full", False, False),
    "lora": ("lora", False, False),
    "lora_gc": ("lora", True, False),
    "lora_chunked_ce": ("lora", False, True),
    "lora_gc_chunked_ce": ("lora", True, True),
}
LABELS = {"full": "full fine-tune", "lora": "LoRA", "lora_gc": "LoRA + gradient checkpointing",
          "lora_chunked_ce": "LoRA + chunked CE", "lora_gc_chunked_ce": "LoRA + gradient checkpointing + chunked CE"}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
FULL = {"model": "smollm2-135m-instruct", "batch_size": 4, "max_len": 256, "steps": 2}
QUICK = {"batch_size": 2, "max_len": 64, "steps": 1}
MODEL_ENV = "MIXTUNE_BENCH_MEMORY_MODEL"  # an HF folder to measure instead of the preset (e.g. a 7B)
RESULT_TAG = "MIXTUNE_MEMORY_RESULT "
UNCHUNKED = 1 << 62  # token_ce's chunk size when chunking is off: one fp32 upcast of all logits


def conversations(n: int) -> list[list[dict]]:
    """``n`` finance-flavoured conversations whose answers run past any max_len used here (no padding)."""
    terms = ["流动性覆盖率", "资本充足率", "信用利差", "偿付能力", "风险敞口", "拨备覆盖率"]
    out = []
    for i in range(n):
        t = terms[i % len(terms)]
        answer = " ".join(f"第{k}步：{t}为{(i * 37 + k * 11) % 97 + 3}.{k % 10}%，compare with the threshold "
                          f"of {(k * 7) % 50 + 50}% and report the gap." for k in range(60))
        out.append([{"role": "user", "content": f"请计算并解释{t}（样本{i}）。"},
                    {"role": "assistant", "content": answer}])
    return out


def _rss_status(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    return 0.0


class Peak:
    """Peak memory of the block (MiB): CUDA allocated on a GPU, else resident high-water mark."""

    def __init__(self, cuda: bool):
        self.cuda = cuda

    def __enter__(self):
        import torch  # why: heavy; the harness imports this module only when the suite runs

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated() / 2**20
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
                self.reset = True
            except OSError:
                self.reset = False
            self.base = _rss_status("VmRSS:")
        return self

    def __exit__(self, *exc):
        import torch  # why: see __enter__

        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            self.peak = _rss_status("VmHWM:")


def _mixtune_steps(spec: dict, convs: list[list[dict]], device: str) -> None:
    import torch  # why: see Peak

    from mixtune.train.collate import Encoded, encode_conversation, pad_batch
    from mixtune.train.common import CE_CHUNK_ELEMENTS, make_optimizer, token_ce
    from mixtune.train.modeling import DTYPES, load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(
        spec["model"], finetune=spec["finetune"], lora_r=16, lora_alpha=32, lora_targets=TARGETS,
        dtype=spec["dtype"], gradient_checkpointing=spec["gradient_checkpointing"])
    model.to(device).train()
    encs: list[Encoded] = [encode_conversation(tok, c, spec["max_len"]) for c in convs]
    opt = make_optimizer(model, 1e-4, 0.0)
    chunk = CE_CHUNK_ELEMENTS if spec["chunked_ce"] else UNCHUNKED
    b = spec["batch_size"]
    for step in range(spec["steps"]):
        batch = pad_batch(encs[step * b:(step + 1) * b], tok.pad_token_id)
        prec = spec["precision"]
        with torch.autocast(torch.device(device).type, dtype=DTYPES[prec], enabled=prec != "fp32"):
            logits = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device)).logits
        total, n = token_ce(logits, batch["labels"].to(device), chunk_elements=chunk)
        (total / n.clamp_min(1)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def _trl_steps(spec: dict, convs: list[list[dict]], work: Path) -> None:
    import torch  # why: see Peak
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from mixtune.train.modeling import weight_dtype

    rows = [{"prompt": c[:-1], "completion": c[-1:]} for c in convs]
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM") \
        if spec["finetune"] == "lora" else None
    args = SFTConfig(output_dir=str(work / "trl_memory_out"), max_steps=spec["steps"],
                     per_device_train_batch_size=spec["batch_size"], learning_rate=1e-4, warmup_steps=0,
                     adam_beta2=0.95, bf16=spec["precision"] == "bf16", fp16=spec["precision"] == "fp16",
                     use_cpu=not torch.cuda.is_available(), max_length=spec["max_len"], packing=False,
                     completion_only_loss=True, gradient_checkpointing=spec["gradient_checkpointing"],
                     gradient_checkpointing_kwargs={"use_reentrant": False}, report_to="none", save_strategy="no",
                     logging_steps=10_000, disable_tqdm=True, dataloader_num_workers=0, seed=0)
    tok = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=weight_dtype(spec["dtype"]))
    SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
               peft_config=peft_config).train()
    shutil.rmtree(work / "trl_memory_out", ignore_errors=True)  # nothing is saved, but TRL makes the folder


def measure(spec: dict, work: Path) -> dict:
    """Run one (side, variant) in this process; its peak memory and wall time."""
    import datasets  # noqa: F401  — both sides import the same libraries before the baseline
    import peft  # noqa: F401
    import torch
    import transformers  # noqa: F401
    import trl  # noqa: F401

    cuda = torch.cuda.is_available()
    convs = conversations(spec["batch_size"] * spec["steps"])
    t0 = time.perf_counter()
    with Peak(cuda) as mem:
        if spec["side"] == "mixtune":
            _mixtune_steps(spec, convs, "cuda" if cuda else "cpu")
        else:
            _trl_steps(spec, convs, work)
    return {"peak_mib": round(mem.peak, 1), "baseline_mib": round(mem.base, 1),
            "metric": "cuda max_memory_allocated" if cuda else ("VmHWM" if mem.reset else "VmHWM (not reset)"),
            "seconds": round(time.perf_counter() - t0, 1)}


def child(spec_json: str) -> None:
    """Entry point of a fresh measuring process (full tier): prints one tagged JSON line."""
    spec = json.loads(spec_json)
    print(RESULT_TAG + json.dumps(measure(spec, Path(spec["work"]))), flush=True)


def _in_child(spec: dict, timeout: float = 1800) -> dict:
    code = "import sys; from mixtune.bench.memory import child; child(sys.argv[1])"
    res = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True,
                         timeout=timeout, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    for line in res.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
    raise MixtuneError(f"memory measurement {spec['side']}/{spec['variant']} failed (exit {res.returncode}): "
                       f"{tail[0][:300]}")


def resolve_full_model() -> str:
    """The full tier's model: ``$MIXTUNE_BENCH_MEMORY_MODEL``, else the SmolLM2-135M-Instruct preset."""
    if os.environ.get(MODEL_ENV):
        return os.environ[MODEL_ENV]
    return resolve_model(FULL["model"])  # converted once from the packaged GGUF, then cached


def model_label(model: str) -> str:
    """What the tables call the model: the GGUF a cached conversion came from, else the folder name."""
    marker = Path(model) / "mixtune-cache.json"
    try:
        return Path(json.loads(marker.read_text())["source"]).name + " (dequantised to HF)"
    except (OSError, ValueError, KeyError, TypeError):
        return os.path.basename(os.path.normpath(model))


def run(ctx: Context) -> dict:
    import torch  # why: see Peak

    from mixtune.model.tiny import make_test_model

    if ctx.full:
        model, sizes = resolve_full_model(), {k: FULL[k] for k in ("batch_size", "max_len", "steps")}
        label = model_label(model)
    else:
        model, sizes, label = str(make_test_model(ctx.work / "memory_tiny")), dict(QUICK), "tiny test model"
    cuda = torch.cuda.is_available()
    precision = "bf16" if cuda else "fp32"  # bf16 autocast on CPU is slower and saves nothing here
    runs: dict[str, dict[str, list[dict]]] = {name: {"mixtune": [], "trl": []} for name in VARIANTS}
    for rep in range(ctx.repetitions):  # repetitions interleaved, so drift on the machine hits every row
        for name, (finetune, gc, chunked) in VARIANTS.items():
            for side in ("mixtune", "trl"):
                spec = {"side": side, "variant": name, "model": model, "finetune": finetune,
                        "gradient_checkpointing": gc, "chunked_ce": chunked and side == "mixtune", "dtype": "auto",
                        "precision": precision, "work": str(ctx.work), **sizes}
                ctx.log(f"memory: {side} {name} (repetition {rep + 1}/{ctx.repetitions})")
                runs[name][side].append(_in_child(spec) if ctx.full else measure(spec, ctx.work))
    variants = {name: {side: {"peak_mib": statistics.median(r["peak_mib"] for r in rs),
                              "baseline_mib": statistics.median(r["baseline_mib"] for r in rs),
                              "runs": rs} for side, rs in sides.items()} for name, sides in runs.items()}
    table = []
    for name, sides in runs.items():
        m = summarize([r["peak_mib"] for r in sides["mixtune"]])
        t = summarize([r["peak_mib"] for r in sides["trl"]])
        note = "lower is better" + ("; TRL runs without chunked CE (it has none)" if VARIANTS[name][2] else "")
        table.append(row(f"peak memory, {LABELS[name]}", m, unit="MiB", baseline=t, baseline_name="TRL SFTTrainer",
                         ratio=m["median"] / t["median"] if t["median"] else None, note=note))
    where = "CUDA max_memory_allocated" if cuda else "process peak RSS (VmHWM), fresh process per run" \
        if ctx.full else "process peak RSS (VmHWM) in one process: smoke check only"
    return {"model": label, "settings": {**sizes, "precision": precision, "lora_r": 16, "lora_alpha": 32,
                                         "targets": TARGETS, "weight_dtype": "auto"},
            "variants": variants, "metric": where, "repetitions": ctx.repetitions, "table": table,
            "setup": f"{label}; batch {sizes['batch_size']} × max_len {sizes['max_len']} (every row full, no "
                     f"padding), {sizes['steps']} AdamW steps, {'bf16 autocast' if cuda else 'fp32, no autocast'}, "
                     "weights model.dtype auto, "
                     f"LoRA r16/α32 on q,k,v,o,gate,up,down; measured: {where}"}
