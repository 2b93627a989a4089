#!/usr/bin/env bash
# The rollout engine on a GPU, in one prepared run of <= 8 minutes (CI never needs a GPU).
#
#   bash benchmarks/device_check.sh prepare   # here: the embedded tokenizer into runs/device-cache
#   bash benchmarks/device_check.sh           # on the GPU machine (carry runs/device-cache)
#
# Random weights of SmolLM2-135M's and Qwen3-0.6B's shapes (nothing downloaded): the built-in
# engine in bf16 on CUDA at 64x8 (and the reference loop beside it), then one short ASRL run of
# configs/tiny.yaml on CUDA. Figures land in $OUT (or runs/device-check).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=runs/device-cache
if [ "${1:-}" = prepare ]; then
  src=$(.venv/bin/python -c "from asrl.model.loading import resolve_model_path as r; print(r('smollm2-135m'))")
  mkdir -p "$CACHE/models/smollm2-135m"
  cp "$src"/config.json "$src"/tokenizer* "$src"/special_tokens_map.json "$src"/generation_config.json \
    "$CACHE/models/smollm2-135m/" 2>/dev/null || true
  du -sh "$CACHE"; exit 0
fi
out=${OUT:-runs/device-check}; mkdir -p "$out"
export ASRL_CACHE=$PWD/$CACHE PYTHONPATH=$PWD
PY=${PYTHON:-python}
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
timeout 300 $PY benchmarks/device_rollout.py | tee "$out/rollout.txt"
timeout 150 $PY -m asrl train -c configs/tiny.yaml -o "$out/tiny" --set model.device=cuda \
  --set report_to=[] 2>&1 | tail -20 | tee "$out/tiny.txt"
