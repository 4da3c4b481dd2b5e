"""Loading the model a stage trains: weight dtype, LoRA / DoRA, QLoRA, gradient checkpointing, stacking.

Two-stage LoRA stacking: a stage that starts from a LoRA adapter (stage 2 after a LoRA stage 1)
trains on a *merged copy* of that adapter's model, written to disk once (``<adapter>/merged`` when
stage 1 saved one with ``model.merge_adapter``, else ``stageN/base``). The new adapter therefore
records that merged copy as ``base_model_name_or_path``, and loading ``stage2/model`` with plain
peft (``AutoPeftModelForCausalLM``), vLLM's LoRA loader or mixtune's own loaders gives
base + stage 1 + stage 2.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from peft import AutoPeftModelForCausalLM, LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from mixtune.errors import MixtuneError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def weight_dtype(dtype: str, cuda: bool | None = None) -> torch.dtype:
    """``auto``: bf16 (fp16 where bf16 is unsupported) on CUDA, fp32 on CPU; else the named dtype.

    On CPU half-precision weights are slower and less accurate, so they are used only when asked for.
    """
    if dtype != "auto":
        return DTYPES[dtype]
    if not (torch.cuda.is_available() if cuda is None else cuda):
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def merged_base(adapter: Path, out: Path) -> Path:
    """A full-model copy of ``adapter`` merged into its base: ``adapter/merged`` if saved, else ``out``.

    ``out`` is written once (tmp folder + rename) and reused on resume.
    """
    if (adapter / "merged" / "config.json").is_file():
        return adapter / "merged"
    if not (out / "config.json").is_file():
        tmp = out.with_name(out.name + ".tmp")
        merged = AutoPeftModelForCausalLM.from_pretrained(str(adapter), dtype=torch.float32).merge_and_unload()
        merged.save_pretrained(str(tmp))
        AutoTokenizer.from_pretrained(str(adapter)).save_pretrained(str(tmp))
        tmp.replace(out)
    return out


def _quantization(bits: int | None, quant_type: str, finetune: str, compute_dtype: torch.dtype):
    """bitsandbytes config for QLoRA, or a clear error where it cannot run."""
    if bits is None:
        return None
    if finetune != "lora":
        raise MixtuneError("4-bit quantization (QLoRA) trains adapters only; set model.finetune: lora",
                           where="model.quantization")
    if not torch.cuda.is_available():
        raise MixtuneError("4-bit quantization (QLoRA, bitsandbytes) needs a CUDA GPU; remove "
                           "model.quantization to train on the CPU", where="model.quantization")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise MixtuneError("4-bit quantization needs bitsandbytes: pip install 'mixtune[qlora]'",
                           where="model.quantization")
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type, bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def load_model_and_tokenizer(path: str, *, finetune: str, lora_r: int = 16, lora_alpha: int = 32,
                             lora_dropout: float = 0.0, lora_targets: list[str] | None = None,
                             use_dora: bool = False, dtype: str = "fp32", quant_bits: int | None = None,
                             quant_type: str = "nf4", gradient_checkpointing: bool = False,
                             trust_remote_code: bool = False):
    """Load an HF causal LM (id or folder) for training; an adapter folder must be merged first
    (:func:`merged_base`). Trainable LoRA parameters are kept in fp32 whatever the weight dtype."""
    p = Path(path)
    if not p.exists() and (path.startswith((".", "/")) or path.count("/") != 1):
        raise MixtuneError("model path does not exist", where=path)
    torch_dtype = weight_dtype(dtype)
    if finetune == "full" and torch_dtype == torch.float16:
        # fp16 weights cannot be trained directly: the loss scaler refuses fp16 gradients.
        raise MixtuneError("full fine-tuning cannot train fp16 weights; use bf16 or fp32 (or finetune: lora)",
                           where="model.dtype")
    quant = _quantization(quant_bits, quant_type, finetune, torch_dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, quantization_config=quant,
                                                     trust_remote_code=trust_remote_code)
    except OSError as e:
        raise MixtuneError(f"cannot load model: {str(e).splitlines()[0]}", where=path) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise MixtuneError("tokenizer has no chat template; set one or use an instruct model", where=path)
    if gradient_checkpointing:
        model.config.use_cache = False  # a cache is useless in training and conflicts with recomputation
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if quant is not None:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    if finetune == "lora":
        model = get_peft_model(model, LoraConfig(
            r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, use_dora=use_dora,
            target_modules=lora_targets or "all-linear", task_type="CAUSAL_LM"))
        for param in model.parameters():
            if param.requires_grad and param.dtype != torch.float32:
                param.data = param.data.float()  # optimizer state and updates in full precision
    return model, tokenizer


def load_from_model_config(model_cfg, path: str, *, gradient_checkpointing: bool = False):
    """``load_model_and_tokenizer`` with the ``model`` section's settings (stage entry points only)."""
    quant = model_cfg.quantization
    return load_model_and_tokenizer(
        path, finetune=model_cfg.finetune, lora_r=model_cfg.lora.r, lora_alpha=model_cfg.lora.alpha,
        lora_dropout=model_cfg.lora.dropout, lora_targets=model_cfg.lora.target_modules,
        use_dora=model_cfg.lora.use_dora, dtype=model_cfg.dtype, quant_bits=quant.bits if quant else None,
        quant_type=quant.quant_type if quant else "nf4", gradient_checkpointing=gradient_checkpointing,
        trust_remote_code=model_cfg.trust_remote_code)


def parameter_count(model) -> int:
    """Parameters of the whole model (frozen ones included): the size the lr guidance refers to."""
    return sum(p.numel() for p in model.parameters())


def lr_warning(finetune: str, lr: float, n_params: int) -> str | None:
    """A warning when ``lr`` is far from what usually works for the fine-tuning mode and model size."""
    if finetune == "lora" and lr > 0 and not 5e-5 <= lr <= 5e-3:
        return f"lr {lr:g} is outside the usual LoRA range [5e-05, 0.005]"
    if finetune == "full" and lr > 1e-3 and n_params > 50_000_000:
        return (f"lr {lr:g} is high for full fine-tuning of a {n_params / 1e6:.0f}M-parameter model "
                "(typical: 1e-05 to 1e-04; the demo's 0.003 suits only the built-in tiny model)")
    return None
