"""Test helpers around the tiny GGUF writer (the writer itself lives in mixtune.model.tiny_gguf so
the quick benchmark tier can use it too)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from mixtune.model.tiny_gguf import CHATML_TEMPLATE, write_tiny_gguf

__all__ = ["CHATML_TEMPLATE", "write_tiny_gguf", "source_model", "build"]


def source_model(info: dict) -> LlamaForCausalLM:
    """The float model the GGUF was written from (its weights, in eval mode)."""
    model = LlamaForCausalLM(info["config"]).eval()
    model.load_state_dict(info["state_dict"])
    return model


def build(folder: Path, name: str = "tiny.gguf", **kw) -> tuple[Path, dict]:
    """Write a tiny GGUF into ``folder``; returns (path, info from write_tiny_gguf)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    return path, write_tiny_gguf(path, **kw)


@torch.no_grad()
def logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids).logits
