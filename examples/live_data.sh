#!/usr/bin/env bash
# A live-data run on the embedded model: the demo config trains while another process appends
# 150 records of a pattern the model has never seen (percentages, type "new_pattern") once
# epoch 1 is done. Watch data/train_size grow and eval/correctness/new_pattern in metrics.jsonl.
#   examples/live_data.sh [OUTDIR]        (~10 min on 2 CPU cores; 20 min with model.threads=1)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/live}
DATA=$OUT-data/live.jsonl
rm -rf "$OUT" "$OUT-data"
.venv/bin/asrl data generate --to "$DATA" --count 200 > /dev/null
.venv/bin/asrl train -c configs/demo.yaml -o "$OUT" --set data.path="$DATA" \
  --set eval.max_examples=40 "${@:2}" &
TRAIN=$!
until grep -q '"epoch": 1, "phase": "eval".*"eval/after": "grpo"' "$OUT/metrics.jsonl" 2>/dev/null; do
  kill -0 $TRAIN 2>/dev/null || exit 1
  sleep 5
done
.venv/bin/asrl data generate --to "$DATA" --pattern percent --count 150 --seed 5
wait $TRAIN
