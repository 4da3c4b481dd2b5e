"""Adversarial-twin consistency term: KL between response distributions under twin and clean prompt.

A perturbed twin (distractor facts, hedged wording, weakened format requirements, ...) shares its
clean parent's response but not its prompt, so the two sequences have different lengths and the
response sits at different offsets. :func:`response_kl` gathers, in each sequence, the logits at the
positions that *predict* a response token and compares them token by token:

    KL( stop_grad(p_clean) || p_twin )

The clean side is the teacher: the main cross-entropy already shapes it, and letting the KL pull
it towards the twin would let perturbations degrade clean behaviour. Twins never enter the main
cross-entropy; this term is their only training signal.

Position convention (HF causal LM): ``logits[:, t]`` predicts ``input_ids[:, t + 1]``, so the
response-predicting positions are those ``t`` with ``labels[:, t + 1] != -100``;
:func:`response_positions` builds that mask from HF-style labels.
"""

from __future__ import annotations

import math
import random

import torch

from mixtune.errors import ConfigError

IGNORE_INDEX = -100


def response_positions(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Bool mask [B,T] of positions whose logits predict a labelled (response) token.

    ``labels`` are unshifted HF labels ([B,T], ``ignore_index`` on prompt and padding); the mask is
    ``labels[:, 1:] != ignore_index`` shifted left by one, with the last position always False.
    """
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != ignore_index
    return mask


def response_kl(
    twin_logits: torch.Tensor,
    clean_logits: torch.Tensor,
    twin_resp_mask: torch.Tensor,
    clean_resp_mask: torch.Tensor,
) -> torch.Tensor:
    """Mean over response tokens of KL(p_clean.detach() || p_twin).

    ``*_logits`` are [B,T,V] (lengths may differ between twin and clean), ``*_resp_mask`` are [B,T]
    masks of response-predicting positions (see :func:`response_positions`). Row ``b`` of the twin
    batch pairs with row ``b`` of the clean batch and both must mark the same number of positions,
    since they predict the same response. No gradient reaches ``clean_logits``. With no response
    tokens the result is a zero carrying a graph to ``twin_logits``.
    """
    if twin_logits.shape[0] != clean_logits.shape[0] or twin_logits.shape[-1] != clean_logits.shape[-1]:
        raise ValueError(f"twin {tuple(twin_logits.shape)} and clean {tuple(clean_logits.shape)} logits "
                         "must agree on batch size and vocabulary")
    if twin_resp_mask.shape != twin_logits.shape[:2] or clean_resp_mask.shape != clean_logits.shape[:2]:
        raise ValueError("response masks must be [B,T] matching their logits")
    tm, cm = twin_resp_mask.bool(), clean_resp_mask.bool()
    n_twin, n_clean = tm.sum(dim=1), cm.sum(dim=1)
    if not torch.equal(n_twin, n_clean):
        raise ValueError(f"twin and clean rows mark different response lengths: {n_twin.tolist()} vs "
                         f"{n_clean.tolist()} (a twin must share its parent's response)")
    n = int(n_twin.sum())
    if n == 0:
        return twin_logits.sum() * 0.0
    # Boolean indexing flattens row-major, so with equal per-row counts the k-th twin position and
    # the k-th clean position predict the same response token.
    log_q = torch.nn.functional.log_softmax(twin_logits[tm].float(), dim=-1)
    log_p = torch.nn.functional.log_softmax(clean_logits.detach()[cm].float(), dim=-1)
    # KL(p || q) = sum p (log p - log q); kl_div takes the input in log space and, with
    # log_target=True, the target in log space too (stable where p underflows).
    return torch.nn.functional.kl_div(log_q, log_p, reduction="sum", log_target=True) / n


def _phase(seed: int) -> float:
    # A seed-derived offset in [0, 1): different seeds pay on different steps, same seed is stable.
    return random.Random(f"adversarial-schedule:{seed}").random()


def should_pay(step: int, share: float, seed: int) -> bool:
    """Whether ``step`` pays for the extra twin forward; deterministic in (step, share, seed).

    A low-discrepancy (Bresenham-style) schedule: step ``s`` pays when
    ``floor((s + 1) * share + phase) > floor(s * share + phase)``, so over ANY window of ``n``
    consecutive steps the number of paying steps is ``n * share`` rounded up or down, evenly spread,
    with no state to checkpoint (resume at step ``s`` reproduces the same decisions).
    """
    if not 0.0 <= share <= 1.0:
        raise ConfigError(f"share must be in [0, 1], got {share}", "adversarial.share")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if share == 0.0:
        return False
    if share == 1.0:
        return True
    phase = _phase(seed)
    return math.floor((step + 1) * share + phase) > math.floor(step * share + phase)
