"""NEFTune: uniform noise on the input embeddings during training forward passes (Jain et al., 2023).

Noise ``U(-1, 1) * alpha / sqrt(L * d)`` is added to the output of the input-embedding layer,
where ``d`` is the embedding width and ``L`` the sequence length. It is a cheap robustness
baseline next to the adversarial-twin term, so it must be exactly removable and must never touch
evaluation or generation: the hook checks ``module.training`` on every call, so ``model.eval()``
turns it off without removing it.

With ``pad_token_id`` given, ``L`` is each row's real (non-pad) length and pad positions get no
noise, as in the paper's reference code; without it, ``L`` is the padded length (what the
transformers/TRL hook does).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from mixtune.errors import ConfigError


class NEFTuneHook:
    """A removable forward hook on ``model.get_input_embeddings()`` adding NEFTune noise in train mode."""

    def __init__(self, model: Any, alpha: float, pad_token_id: int | None = None,
                 generator: torch.Generator | None = None):
        if alpha < 0:
            raise ConfigError(f"neftune_alpha must be >= 0, got {alpha}", "neftune_alpha")
        self.alpha = float(alpha)
        self.pad_token_id = pad_token_id
        # Optional dedicated generator: keeps the noise stream reproducible without consuming the
        # global RNG that dropout and data order also draw from.
        self.generator = generator
        self.embedding = model.get_input_embeddings()
        self._handle = self.embedding.register_forward_hook(self._hook)

    def _hook(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if not module.training or self.alpha == 0.0:
            return None  # None keeps the original output
        noise = torch.empty(output.shape, dtype=torch.float32, device=output.device)
        if self.generator is not None and self.generator.device != output.device:
            raise ValueError(f"NEFTune generator is on {self.generator.device}, embeddings on {output.device}")
        noise.uniform_(-1.0, 1.0, generator=self.generator)
        d = output.shape[-1]
        input_ids = args[0] if args else None
        if self.pad_token_id is not None and isinstance(input_ids, torch.Tensor) and input_ids.dim() == 2:
            real = (input_ids != self.pad_token_id).to(torch.float32)          # [B,T]
            lengths = real.sum(dim=1).clamp_min(1.0)                            # [B]
            scale = self.alpha / torch.sqrt(lengths * d)                        # [B]
            noise = noise * real.unsqueeze(-1) * scale.view(-1, 1, 1)
        else:
            noise = noise * (self.alpha / math.sqrt(output.shape[-2] * d))
        # The noise is a constant w.r.t. parameters; gradients flow through `output` unchanged.
        return output + noise.to(output.dtype)

    def remove(self) -> None:
        """Detach the hook; idempotent."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @property
    def active(self) -> bool:
        """True while the hook is attached (it still only acts in training mode)."""
        return self._handle is not None


def add_neftune(model: Any, alpha: float, pad_token_id: int | None = None,
                generator: torch.Generator | None = None) -> NEFTuneHook:
    """Attach NEFTune noise to ``model``'s input embeddings; call ``.remove()`` on the result to undo."""
    return NEFTuneHook(model, alpha, pad_token_id=pad_token_id, generator=generator)


@contextmanager
def neftune(model: Any, alpha: float, pad_token_id: int | None = None,
            generator: torch.Generator | None = None) -> Iterator[NEFTuneHook]:
    """Context manager: NEFTune noise on ``model``'s input embeddings inside the block, removed after.

    ``alpha == 0`` attaches nothing observable (the hook returns the embeddings untouched), so the
    loop can wrap training unconditionally.
    """
    hook = add_neftune(model, alpha, pad_token_id=pad_token_id, generator=generator)
    try:
        yield hook
    finally:
        hook.remove()
