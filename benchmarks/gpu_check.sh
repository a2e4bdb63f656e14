#!/usr/bin/env bash
# UniRepLKNet GPU readiness check, under 8 minutes on one CUDA GPU: every path the model picks there against the
# plain computation (float32, AMP float16 / bfloat16 training steps, channels_last), training and deployed
# inference speed against the release computation in one run, and with_cp peak memory (benchmarks/gpu_check.py).
#
#   benchmarks/gpu_check.sh [OUT_DIR]      # report: OUT_DIR/gpu_check.md (default: $OUT, else the current folder)
#
# Exits non-zero if a configuration differs from the plain computation beyond its tolerance.
set -euo pipefail
cd "$(dirname "$0")/.."
out_dir=${1:-${OUT:-.}}
python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
mkdir -p "$out_dir"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
"$python" -c 'import torch, timm; print("torch", torch.__version__, "timm", timm.__version__, "cuda", torch.version.cuda)'
timeout 450 "$python" benchmarks/gpu_check.py --device cuda --model unireplknet_a --batch 64 --img_size 224 \
  --repeats 20 --warmup 3 --out "$out_dir/gpu_check.md"

# ==== training step (engine.py, main.py; issue 20 item 3) ===========================================================
# TF32 on by default and what it and bfloat16 AMP buy per training step, the host waits per step (must be one, plus
# one per progress line), and an EMA kept on the CPU evaluated there (--model_ema_force_cpu with --model_ema_eval) in
# a one-epoch quickstart run. Report: OUT_DIR/gpu_step_check.md. About 2 minutes.
timeout 240 "$python" benchmarks/gpu_step_check.py --device cuda --model unireplknet_a --batch 64 --img_size 224 \
  --repeats 3 --out "$out_dir/gpu_step_check.md"
timeout 240 "$python" main.py --config configs/quickstart_digits.yaml --device cuda --epochs 1 --model_ema true \
  --model_ema_force_cpu true --model_ema_eval true --output_dir "$out_dir/ema_on_cpu" | tee "$out_dir/ema_on_cpu.log"
grep -q 'Accuracy of the model EMA' "$out_dir/ema_on_cpu.log"
grep 'TF32 on for float32 matmuls' "$out_dir/ema_on_cpu.log"
# ==== end of the training step section ==============================================================================
