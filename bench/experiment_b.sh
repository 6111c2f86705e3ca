#!/usr/bin/env bash
# Experiment B: SmolLM2-135M-Instruct as base, a LoRA ARM reward model and a TopK router
# (trained with `taro-ext train-reward` / `train-router`), base vs GenARM (alpha grid) vs TARo
# on GSM8K test, MedQA (out of domain) and the synthetic arithmetic set.
# Settings come from the environment (defaults shown):
#   TASKS="medqa gsm8k synthetic" LIMIT=200 SYNTHETIC_LIMIT=100 MAX_NEW_TOKENS=128 BATCH_SIZE=50
#   REWARD=taro_ext/assets/smollm2_reward ROUTER=taro_ext/assets/smollm2_router
#   METHODS=base,genarm:0.5,genarm:1,genarm:2,taro OUT=bench/results/experiment_b
# Writes $OUT/{task}.{json,md,png} and appends each set's settings and wall time to $OUT/run_log.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
TASKS=${TASKS:-medqa gsm8k synthetic}
LIMIT=${LIMIT:-200}
SYNTHETIC_LIMIT=${SYNTHETIC_LIMIT:-100}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-128}
BATCH_SIZE=${BATCH_SIZE:-50}
REWARD=${REWARD:-taro_ext/assets/smollm2_reward}
ROUTER=${ROUTER:-taro_ext/assets/smollm2_router}
METHODS=${METHODS:-base,genarm:0.5,genarm:1,genarm:2,taro}
OUT=${OUT:-bench/results/experiment_b}
mkdir -p "$OUT"
for TASK in $TASKS; do
  N=$LIMIT
  [ "$TASK" = synthetic ] && N=$SYNTHETIC_LIMIT
  START=$(date +%s)
  .venv/bin/python -m taro_ext.cli eval --task "$TASK" --limit "$N" --methods "$METHODS" \
    --base smollm2 --reward "$REWARD" --router "$ROUTER" --max-new-tokens "$MAX_NEW_TOKENS" \
    --batch-size "$BATCH_SIZE" --out "$OUT" --stem "$TASK" --no-progress
  echo "$(date -u +%FT%TZ) $TASK limit=$N max_new_tokens=$MAX_NEW_TOKENS batch_size=$BATCH_SIZE methods=$METHODS wall_s=$(( $(date +%s) - START ))" | tee -a "$OUT/run_log.txt"
done
