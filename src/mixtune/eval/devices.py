"""Where a local model runs: ``eval.device`` / ``--device`` and ``eval.dtype`` / ``--dtype`` resolved.

``auto`` follows the accelerator (CUDA when torch sees a GPU, else the CPU; bf16 weights on CUDA,
fp32 on the CPU). A device this machine lacks is refused here, naming the setting, before any
model loads.
"""

from __future__ import annotations

from mixtune.errors import MixtuneError

DTYPE_NAMES = ("auto", "fp32", "bf16", "fp16")


def resolve_device(device: str, *, where: str = "eval.device") -> str:
    """``auto`` → ``cuda`` when torch sees a GPU, else ``cpu``; ``cpu``/``cuda``/``cuda:N``/``mps`` checked.

    A device this machine lacks (``cuda`` without a GPU, ``cuda:3`` on a 2-GPU box) is a
    :class:`MixtuneError` naming ``where`` here, not a CUDA traceback at the first generate.
    """
    import torch  # why: torch loads only with a local model (endpoint evals skip it)

    d = str(device).strip().lower()
    if d == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if d == "cpu":
        return d
    if d == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise MixtuneError("device 'mps' is not available on this machine (use cpu or auto)", where=where)
        return d
    if d == "cuda" or (d.startswith("cuda:") and d[5:].isdigit()):
        if not torch.cuda.is_available():
            raise MixtuneError(f"device {device!r} needs a CUDA GPU and torch sees none "
                               "(use cpu, or auto to follow the accelerator)", where=where)
        if d != "cuda" and int(d[5:]) >= torch.cuda.device_count():
            raise MixtuneError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here",
                               where=where)
        return d
    raise MixtuneError(f"unknown device {device!r}; allowed: auto, cpu, cuda, cuda:N, mps", where=where)


def resolve_dtype(dtype: str, device: str, *, where: str = "eval.dtype") -> str:
    """``auto`` → bf16 on CUDA (fp16 where bf16 is unsupported), fp32 elsewhere; others as named."""
    if dtype not in DTYPE_NAMES:
        raise MixtuneError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPE_NAMES)}", where=where)
    if dtype != "auto":
        return dtype
    if not device.startswith("cuda"):
        return "fp32"  # half precision on a CPU is slower and less exact
    import torch  # why: see resolve_device

    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
