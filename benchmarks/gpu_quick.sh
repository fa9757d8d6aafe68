#!/usr/bin/env bash
# The GPU check of benchmarks/throughput.py + memory.py in one call of a few minutes (~6-7 min on one H100,
# most of it torch.compile): ViT-B/16 bf16 vitkit vs timm, eager and compiled, train and inference, with MFU;
# vitkit with cuDNN-first attention (eager); the largest ViT-B/16 training batch with and without
# activation checkpointing; ViT-S/16 compiled train if time allows. JSON + a log go to $OUT (default
# benchmarks/results). Needs torch + timm only (run from the repository root; vitkit need not be installed).
set -u
. "$(dirname "$0")/gpu_common.sh"
log="$OUT/gpu_log.txt"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.version.cuda)"
} >>"$log" 2>&1
TP="$PY benchmarks/throughput.py --models vit_base_patch16_224 --precision bf16 --batch-size 256"
run 290 $TP --compile both --rounds 4 --steps 5 --warmup 3 --json "$OUT/gpu_vitb16_bf16.json"
run 50 $TP --rounds 4 --steps 5 --warmup 3 --no-mfu --vitkit-sdpa cudnn,flash,efficient,math --json "$OUT/gpu_vitb16_bf16_cudnn.json"
run 80 $PY benchmarks/memory.py --device cuda --json "$OUT/gpu_vitb16_memory.json"
run 120 $PY benchmarks/throughput.py --models vit_small_patch16_224 --precision bf16 --batch-size 256 --compile yes \
  --modes train --rounds 4 --steps 5 --warmup 3 --json "$OUT/gpu_vits16_bf16.json"
# not yet measured: both libraries under max-autotune (GEMM templates with fused epilogues; compile takes minutes)
[ -n "${AUTOTUNE:-}" ] && run 400 $TP --compile yes --compile-mode max-autotune --rounds 4 --steps 5 --warmup 3 \
  --json "$OUT/gpu_vitb16_bf16_autotune.json"
tail -n 40 "$log"
