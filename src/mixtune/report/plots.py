"""Plots for ``report.html``: matplotlib figures embedded as PNG data URIs."""

from __future__ import annotations

import base64
import io


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _plt().close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"/>'


def _plt():
    """pyplot on the headless Agg backend."""
    # why: the backend must be chosen before pyplot loads, and matplotlib (~0.3 s) only when plotting
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_plot(stages: dict[str, list[dict]]) -> str:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    for name, recs in stages.items():
        if recs:
            axes[0].plot([r["step"] for r in recs], [r["loss_ce"] for r in recs], label=f"{name} CE", lw=1)
            axes[1].plot([r["step"] for r in recs], [r["grad_norm"] for r in recs], label=f"{name} grad norm", lw=.8)
            thr = [(r["step"], r["clip_threshold"]) for r in recs if r.get("clip_threshold") is not None]
            if thr:
                axes[1].plot(*zip(*thr), "--", label=f"{name} clip threshold")
    axes[0].set_xlabel("step"), axes[0].set_title("training loss"), axes[0].legend()
    axes[1].set_xlabel("step"), axes[1].set_title("gradient norm and clip threshold"), axes[1].legend()
    return _png(fig)


def aux_plot(recs: list[dict]) -> str:
    plt = _plt()
    fig, ax = plt.subplots(1, 1, figsize=(6, 3.2))
    for key in ("loss_consistency", "loss_adversarial", "cosine_gap"):
        pts = [(r["step"], r[key]) for r in recs if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), label=key, lw=.8)
    ax.set_xlabel("step"), ax.set_title("stage 1 auxiliary terms"), ax.legend()
    return _png(fig)


def mixing_plot(log: list[dict]) -> str:
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(19, 3.6))
    tasks = sorted(log[-1]["weights"])
    for t in tasks:
        steps = [r["step"] for r in log]
        axes[0].plot(steps, [r["weights"].get(t, 0) for r in log], label=t, lw=1)
        axes[1].plot(steps, [r["scores"].get(t, 0) for r in log], lw=1)
        axes[2].step(steps, [r["levels"].get(t, 1) for r in log], where="post", lw=1)
        axes[3].plot(steps, [(r.get("rejection") or {}).get(t, 0) for r in log], lw=1)
    axes[0].set_title("sampling weight per task"), axes[1].set_title("validation score per task")
    axes[2].set_title("curriculum level per task")
    live = any("rejection_verdicts" in r for r in log)
    axes[3].set_title("human rejection rate per task" + (" (live review)" if live else " (fixed)"))
    for a in axes:
        a.set_xlabel("step")
    axes[0].legend(fontsize=6, ncol=2)
    return _png(fig)


def summary_plot(summary: dict) -> str:
    plt = _plt()
    fams = sorted({f for m in summary.values() for f in m})
    fig, ax = plt.subplots(1, 1, figsize=(9, 3.4))
    w = 0.8 / max(1, len(summary))
    for i, (model, scores) in enumerate(summary.items()):
        ax.bar([j + i * w for j in range(len(fams))], [scores.get(f, 0) for f in fams], w, label=model)
    ax.set_xticks([j + 0.4 - w / 2 for j in range(len(fams))], fams, rotation=20)
    ax.set_ylim(0, 1), ax.set_title("primary score per task family (held-out)"), ax.legend()
    return _png(fig)


def task_plot(matrix: dict) -> str:
    """Per-task business primary score of every evaluated model (base vs stage 1 vs stage 2)."""
    plt = _plt()
    models = list(matrix)
    tasks = sorted({t for m in models for t in matrix[m] if not t.startswith("_")})
    fig, axes = plt.subplots(1, 2, figsize=(15, 3.8))
    w = 0.8 / max(1, len(models))
    for ax, layer in zip(axes, ("business", "experience")):
        for i, m in enumerate(models):
            ax.bar([j + i * w for j in range(len(tasks))],
                   [matrix[m].get(t, {}).get(layer, {}).get("primary", 0.0) for t in tasks], w, label=m)
        ax.set_xticks([j + 0.4 - w / 2 for j in range(len(tasks))], tasks, rotation=60, ha="right", fontsize=7)
        ax.set_ylim(0, 1), ax.set_title(f"{layer} layer: primary score per task"), ax.legend(fontsize=7)
    return _png(fig)


def turns_plot(matrix: dict) -> str:
    """Simulated-user sessions: mean score at each turn index per model (degradation over turns)."""
    conv = {m: (matrix.get(m) or {}).get("_conversations") for m in matrix}
    conv = {m: c for m, c in conv.items() if c and c.get("score_by_turn")}
    plt = _plt()
    fig, ax = plt.subplots(1, 1, figsize=(6, 3.2))
    for m, c in conv.items():
        ax.plot(range(1, len(c["score_by_turn"]) + 1), c["score_by_turn"], marker="o", label=m)
    longest = max((len(c["score_by_turn"]) for c in conv.values()), default=1)
    ax.set_xticks(range(1, longest + 1))
    ax.set_xlabel("turn"), ax.set_ylim(0, 1), ax.set_title("simulated users: score by turn"), ax.legend()
    return _png(fig)
