#!/usr/bin/env bash
# Second GPU check (~3 min on one H100): ViT-Ti/16 and ViT-L/16 bf16 vitkit vs timm (eager), and vitkit's
# segmentation (Segmenter ViT-S/16, 512 px), detection (DETR ViT-S/16, 512 px) and seq2seq (Transformer base,
# 64 + 64 tokens) models, bf16 eager then compiled. JSON + log to $OUT. Needs torch + timm only.
set -u
. "$(dirname "$0")/gpu_common.sh"
log="$OUT/gpu_tasks_log.txt"
run 120 $PY benchmarks/throughput.py --models vit_tiny_patch16_224 vit_large_patch16_224 --precision bf16 \
  --batch-size 256 --rounds 4 --steps 5 --warmup 3 --json "$OUT/gpu_vit_ti_l_bf16.json"
run 240 $PY benchmarks/throughput.py --models vit_tiny_patch16_224 --modes train infer --precision bf16 --rounds 1 \
  --steps 5 --warmup 3 --no-mfu --compile both --task-models --json "$OUT/gpu_task_models_bf16.json"
tail -n 30 "$log"
