#!/usr/bin/env bash
# Experiment B: SmolLM2-135M-Instruct as base, a LoRA ARM reward model and a TopK router
# (trained with `taro-ext train-reward` / `train-router`), base vs GenARM (alpha grid) vs TARo
# on GSM8K test, the synthetic arithmetic set and MedQA (out of domain).
#   bench/experiment_b.sh LIMIT MAX_NEW_TOKENS REWARD_DIR ROUTER_DIR [METHODS]
# Writes bench/results/experiment_b/{gsm8k,synthetic,medqa}.{json,md,png} and a log with wall times.
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT=${1:-200}
MAX_NEW=${2:-256}
REWARD=${3:-taro_ext/assets/smollm2_reward}
ROUTER=${4:-taro_ext/assets/smollm2_router}
METHODS=${5:-base,genarm:0.5,genarm:1,genarm:2,taro}
OUT=bench/results/experiment_b
mkdir -p "$OUT"
for TASK in gsm8k synthetic medqa; do
  START=$(date +%s)
  .venv/bin/python -m taro_ext.cli eval --task "$TASK" --limit "$LIMIT" --methods "$METHODS" \
    --base smollm2 --reward "$REWARD" --router "$ROUTER" --max-new-tokens "$MAX_NEW" \
    --batch-size "$LIMIT" --out "$OUT" --stem "$TASK" --no-progress
  echo "$TASK limit=$LIMIT max_new_tokens=$MAX_NEW methods=$METHODS wall_s=$(( $(date +%s) - START ))" | tee -a "$OUT/run_log.txt"
done
