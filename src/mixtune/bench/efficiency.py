"""CPU efficiency: achieved training FLOP/s as a share of this machine's measured matmul peak.

Achieved FLOP/s = FLOPs/token × tokens/s, FLOPs/token = 6·N + 6·L·d·S (N all parameters — the tied
embedding is counted once, for the LM head matmul; the attention term is the causal half of
12·L·d·S with S the mean sequence length of the measured batches; PaLM appendix B). Tokens/s is
mixtune stage 1 with mechanisms off, measured here exactly as in the throughput suite. Peak is
the best of repeated ``torch.matmul`` of 2048×2048 matrices in bf16 and fp32 on the same threads.
On a GPU this is MFU; the harness runs it on CPU where it is a share of the CPU's dense peak.
"""

from __future__ import annotations

import time

from mixtune.bench import throughput
from mixtune.bench.harness import Context, row, summarize


def matmul_peak(dtype_name: str, n: int = 2048, reps: int = 5) -> float:
    """Best FLOP/s of an n×n matmul in the given dtype (2·n³ FLOPs per product)."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.matmul(a, b)  # warm-up: thread pool, kernels
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def run(ctx: Context) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    sz, base, stage1, model, _ = throughput.setup(ctx)
    mc = AutoConfig.from_pretrained(model)
    n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model).parameters())
    tps, seq = [], []
    peaks = {"bf16": [], "fp32": []}
    for _ in range(ctx.repetitions):  # interleaved so load drift hits peak and training alike
        r = throughput.mixtune_run(base, stage1, model, ctx.work, sz["steps"])
        tps.append(r["tokens_per_s"])
        seq.append(r["mean_seq_len"])
        for k in peaks:
            peaks[k].append(matmul_peak(k, reps=5 if ctx.full else 2))
    s = summarize(seq)["median"]
    per_token = 6 * n_params + 6 * mc.num_hidden_layers * mc.hidden_size * s
    achieved = summarize([t * per_token for t in tps])
    peak_bf16, peak_fp32 = max(peaks["bf16"]), max(peaks["fp32"])
    share = achieved["median"] / peak_bf16
    gf = 1e9
    return {"achieved_flops": achieved["median"], "peak_flops": peak_bf16, "peak_flops_fp32": peak_fp32,
            "share": share, "share_of_fp32_peak": achieved["median"] / peak_fp32, "params": n_params,
            "flops_per_token": per_token, "mean_seq_len": s, "threads": torch.get_num_threads(),
            "table": [row("achieved training FLOP/s (stage 1, mechanisms off)", achieved["median"] / gf, unit="GFLOP/s",
                          baseline=peak_bf16 / gf, baseline_name="bf16 matmul peak GFLOP/s", ratio=share,
                          note=f"6·N+6·L·d·S per token, N={n_params:,}, S={s:.0f}; training runs bf16 autocast"),
                      row("same, vs fp32 matmul peak", achieved["median"] / gf, unit="GFLOP/s",
                          baseline=peak_fp32 / gf, baseline_name="fp32 matmul peak GFLOP/s",
                          ratio=achieved["median"] / peak_fp32, note="2048² torch.matmul, best of repeats")],
            "setup": f"{torch.get_num_threads()} torch threads; tokens/s as in the throughput suite"}
