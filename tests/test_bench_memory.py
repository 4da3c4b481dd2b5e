"""`mixtune bench memory`: the quick tier writes peak_mib per variant for mixtune and TRL; the peak meter sees
an allocation made inside its block."""

from __future__ import annotations

import json

import pytest
import torch

from mixtune.bench import SUITES, run_benchmarks
from mixtune.bench.memory import VARIANTS, Peak, conversations

pytestmark = pytest.mark.integration


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU meter (VmHWM); CUDA uses the allocator's")
def test_peak_meter_sees_an_allocation_inside_the_block():
    with Peak(cuda=False) as mem:
        x = torch.ones(64 * 2**20 // 4 * 4)  # 256 MiB, touched
        del x
    assert mem.reset  # /proc/self/clear_refs is writable here, so the mark starts at the block
    assert mem.peak - mem.base >= 200


def test_quick_tier_writes_peak_mib_per_variant_for_both_sides(tmp_path):
    assert "memory" in SUITES
    out = tmp_path / "benchmarks" / "results"
    md = tmp_path / "BENCHMARKS.md"
    res = run_benchmarks(["memory"], tier="quick", out=out, seeds=[0], md_path=md, work=tmp_path / "work")
    data = json.loads((out / "memory.json").read_text())
    assert res["memory"]["status"] == "ok" == data["status"], data.get("error")
    assert set(data["variants"]) == set(VARIANTS)
    for sides in data["variants"].values():
        assert set(sides) == {"mixtune", "trl"}
        for r in sides.values():
            assert isinstance(r["peak_mib"], float) and r["peak_mib"] > 0 and r["peak_mib"] >= r["baseline_mib"]
            assert [run["peak_mib"] for run in r["runs"]] == [r["peak_mib"]]  # one repetition in the quick tier
    assert {"batch_size", "max_len", "steps", "precision"} <= set(data["settings"])
    assert len(data["table"]) == len(VARIANTS) and all(r["ratio"] > 0 for r in data["table"])
    text = md.read_text()
    assert "## memory" in text and "TRL SFTTrainer" in text and "peak memory, LoRA + gradient checkpointing" in text


def test_conversations_outrun_max_len():
    convs = conversations(3)
    assert len(convs) == 3 and all(c[-1]["role"] == "assistant" and len(c[-1]["content"]) > 2000 for c in convs)
