#!/usr/bin/env bash
# UniRepLKNet GPU readiness check on one CUDA GPU (every part has its own timeout; together at most 9 minutes,
# so one call fits a 15-minute GPU lease with a rerun's start-up to spare):
# 1. the model alone (benchmarks/gpu_check.py): every path the model picks there against the plain computation
#    (float32, AMP float16 / bfloat16 training steps, channels_last), training and deployed inference speed against
#    the release computation in one run, and with_cp peak memory; then the training-step checks (section below);
# 2. end to end (benchmarks/gpu_check_runs.py): short `torchrun --nproc_per_node=1 main.py` runs on CUDA with NCCL:
#    images under AMP bfloat16 and float16, EMA + channels_last + a step checkpoint, a SIGKILL and resume that must
#    give bitwise-equal weights, one run per modality (point clouds with the farthest-point sampling on the GPU, audio,
#    video); each line pass/FAIL with samples/s and peak memory;
# 3. point clouds at the recipe's sizes (benchmarks/bench_point_cloud.py): the step's farthest-point sampling for a
#    batch of 32 on the GPU (10,000 -> 4,800 -> 4,096 points) and the training step per shape next to the backbone.
#
#   benchmarks/gpu_check.sh [OUT_DIR]      # report: OUT_DIR/gpu_check.md (default: $OUT, else the current folder)
#
# Exits non-zero (after running every part) if a configuration differs from the plain computation beyond its
# tolerance or an end-to-end run fails (a crash, a non-finite loss, a missing checkpoint, a resume that differs).
set -uo pipefail
cd "$(dirname "$0")/.."
out_dir=${1:-${OUT:-.}}
python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
mkdir -p "$out_dir"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
"$python" -c 'import torch, timm; print("torch", torch.__version__, "timm", timm.__version__, "cuda", torch.version.cuda)'
status=0
timeout 150 "$python" benchmarks/gpu_check.py --device cuda --model unireplknet_a --batch 64 --img_size 224 \
  --repeats 20 --warmup 3 --out "$out_dir/gpu_check.md" || { echo "FAIL: benchmarks/gpu_check.py"; status=1; }

# ==== training step (engine.py, main.py; issue 20 item 3) ===========================================================
# TF32 on by default and what it and bfloat16 AMP buy per training step, the host waits per step (must be one, plus
# one per progress line), and an EMA kept on the CPU evaluated there (--model_ema_force_cpu with --model_ema_eval) in
# a one-epoch quickstart run. Report: OUT_DIR/gpu_step_check.md. At most 3.25 minutes.
timeout 120 "$python" benchmarks/gpu_step_check.py --device cuda --model unireplknet_a --batch 64 --img_size 224 \
  --repeats 3 --out "$out_dir/gpu_step_check.md" || { echo "FAIL: benchmarks/gpu_step_check.py"; status=1; }
timeout 75 "$python" main.py --config configs/quickstart_digits.yaml --device cuda --epochs 1 --model_ema true \
  --model_ema_force_cpu true --model_ema_eval true --output_dir "$out_dir/ema_on_cpu" | tee "$out_dir/ema_on_cpu.log"
grep -q 'Accuracy of the model EMA' "$out_dir/ema_on_cpu.log" || { echo "FAIL: EMA on CPU evaluation"; status=1; }
grep 'TF32 on for float32 matmuls' "$out_dir/ema_on_cpu.log" || { echo "FAIL: TF32 not reported on"; status=1; }
# ==== end of the training step section ==============================================================================

# ==== end to end and point clouds (issue 19 item 4) ================================================================
timeout 150 "$python" benchmarks/gpu_check_runs.py --device cuda --timeout 40 --out "$out_dir/gpu_check.md" \
  || { echo "FAIL: benchmarks/gpu_check_runs.py"; status=1; }
timeout 45 "$python" benchmarks/bench_point_cloud.py --device cuda --workers 0 --batches 2 --step_batch 8 \
  --write_markdown "$out_dir/gpu_check.md" || { echo "FAIL: benchmarks/bench_point_cloud.py"; status=1; }
[ "$status" = 0 ] && echo "gpu_check: every part passed" || echo "gpu_check: FAILED (see above)"
exit "$status"
