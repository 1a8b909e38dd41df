#!/usr/bin/env bash
# The GPU checks of docs/benchmarks.md as one script, for a machine with an NVIDIA GPU (H100 / H200 for the targets):
# the bench against the diffusers+peft reference (eager, compiled, CUDA graphs) and the real engine (bench --train),
# each report as JSON and text in OUT.   usage: bash scripts/gpu_check.sh [OUT] [quick]
# "quick" runs the first of each kind only (about 5 minutes on an H200, models written and compiled included).
set -euo pipefail
out=${1:-gpu-check}
quick=${2:-}
mkdir -p "$out"
exe=${LORA_STUDIO:-lora-studio}

bench() {
    local name=$1
    shift
    echo "== $name: lora-studio bench $*"
    "$exe" bench "$@" --json "$out/$name.json" 2>"$out/$name.log" | tee "$out/$name.txt"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
bench sd15-b16 --model sd15 --batch 16 --rank 32 --precision bf16
bench sd15-b1-cudagraphs --model sd15 --batch 1 --rank 32 --precision bf16 --compile --compile-mode reduce-overhead
bench train-sd15-b4 --train --model sd15 --batch 4 --rank 32 --precision bf16 --steps 40 --warmup 10
[ "$quick" = quick ] && exit 0
bench sd15-b16-compiled --model sd15 --batch 16 --rank 32 --precision bf16 --compile
bench sd15-b1 --model sd15 --batch 1 --rank 32 --precision bf16
bench sd15-b4 --model sd15 --batch 4 --rank 32 --precision bf16
bench sdxl-b4 --model sdxl --batch 4 --rank 32 --precision bf16
bench sdxl-b4-compiled --model sdxl --batch 4 --rank 32 --precision bf16 --compile
bench sdxl-b1-gc --model sdxl --batch 1 --rank 32 --precision bf16 --gradient-checkpointing --no-reference
bench train-sd15-b4-live-te --train --model sd15 --batch 4 --rank 32 --precision bf16 --steps 40 --warmup 10 \
    --live-text-encoders
bench train-sd15-b4-fp16 --train --model sd15 --batch 4 --rank 32 --precision fp16 --steps 40 --warmup 10
bench train-sdxl-b1-gc --train --model sdxl --batch 1 --rank 32 --precision bf16 --gradient-checkpointing \
    --steps 20 --warmup 5
# the transformers at 1024 px, batch 1 (their activation constants in the estimate are to be calibrated from these
# peaks: docs/benchmarks.md)
bench flux-dev-b1-gc --model flux-dev --batch 1 --rank 16 --precision bf16 --gradient-checkpointing
bench sd35-large-b1 --model sd3.5-large --batch 1 --rank 16 --precision bf16
bench sd35-medium-b1 --model sd3.5-medium --batch 1 --rank 16 --precision bf16
bench anima-b1 --model anima --batch 1 --rank 16 --precision bf16
bench lumina2-b1 --model lumina2 --batch 1 --rank 16 --precision bf16
