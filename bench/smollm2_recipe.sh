#!/usr/bin/env bash
# The SmolLM2-135M recipe: training data, the LoRA ARM reward model (SFT warm start, then the
# pair loss with a chosen-step NLL term), a first TopK router, the corrections of its TARo policy's
# wrong results, a second router, the corrections of its TARo policy's, then the TopK router and the
# full-logits router on all of it.
# `make recipe` runs it; it writes under $OUT (default recipe_out/) and logs each stage's wall
# time to $OUT/run_log.txt. `SHIP=1` copies the reward adapters and the TopK router to
# taro_ext/assets (the full-logits router, 25 MB, is an evaluation baseline and is not shipped).
# Everything is read from ../shared/data or generated; nothing comes from a hub.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-recipe_out}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
stage() {  # stage NAME CMD...: run with its output in $OUT/NAME.log, log the wall time
  local name=$1; shift
  local start=$(date +%s)
  "$@" > "$OUT/$name.log" 2>&1 || { tail -20 "$OUT/$name.log"; echo "stage $name failed"; exit 1; }
  grep -v -E 'Loading weights|GGUF' "$OUT/$name.log" | tail -30
  echo "$(date -u +%FT%TZ) $name wall_s=$(( $(date +%s) - start ))" | tee -a "$OUT/run_log.txt"
}
stage data $PY -m taro_ext.cli make-data --base smollm2 --output "$OUT/data" \
  --num-sft 800 --num-pairs 1600 --num-gsm8k-pairs 160 --num-router 240 --general-samples 2
stage reward $PY -m taro_ext.cli train-reward --model smollm2 --chat \
  --pairs "$OUT/data/pairs.jsonl" --num-train 960 --num-val 64 --sft "$OUT/data/sft.jsonl" \
  --sft-epochs 1 --sft-lr 2e-3 --lr 5e-4 --nll-weight 1.0 --beta 0.2 --lora-rank 8 --lora-alpha 16 \
  --max-length 160 --batch-size 16 --micro-batch-size 8 --epochs 1 --output "$OUT/reward" --no-progress
# --init-alpha 0.2: started at alpha ~3, the general rows (most of the tokens) drive sigmoid(u) into
# saturation within the first 30 steps, and the router stays at alpha 0 everywhere (3 of 4 runs did).
# alpha_max 4: on the held-out examples the router with alpha_max 2 sat near its cap in domain (mean
# 1.77); with 4 its held-out NLL is lower in domain and unchanged out of domain (README). The frozen
# models' logits are cached on disk as bf16 ($OUT/logits_cache, about 7 GB; files keyed by each
# example's tokens and the models' weights), so every later epoch and every later router reuses them.
ROUTER_ARGS=(--base smollm2 --reward "$OUT/reward" --chat --max-length 256 --lr 3e-3 --batch-size 16
             --micro-batch-size 8 --alpha-max 4 --epochs 3 --warmup-steps 15 --init-alpha 0.2 --cache "$OUT/logits_cache"
             --cache-dtype bfloat16 --no-progress)
# Round 1: correct solutions and the base's general answers.
stage router_round1 $PY -m taro_ext.cli train-router "${ROUTER_ARGS[@]}" --examples "$OUT/data/router.jsonl" \
  --num-train 380 --num-val 60 --design topk --output "$OUT/router_round1"
# Round 2 (one round of DAgger): TARo with the round-1 router answers 400 further problems; each wrong
# result in its answers becomes a correction row (its answer up to the "=", then the right result).
stage corrections $PY -m taro_ext.cli make-corrections --base smollm2 --reward "$OUT/reward" \
  --router "$OUT/router_round1" --num-problems 400 --output "$OUT/data/corrections.jsonl"
# Both files shuffled together (--seed 0); 105 rows held out.
stage router_round2 $PY -m taro_ext.cli train-router "${ROUTER_ARGS[@]}" --examples "$OUT/data/router.jsonl" \
  "$OUT/data/corrections.jsonl" --num-train 100000 --num-val 105 --design topk --output "$OUT/router_round2"
# Round 3 (a second round of DAgger): TARo with the round-2 router answers 800 more problems (seed 5),
# and the routers train on all three files, the correction rows weighted 30 in the loss: they are about 4%
# of the tokens, and unweighted (round 2) the router still gave TARo's mistakes alpha 0.8 on average.
stage corrections2 $PY -m taro_ext.cli make-corrections --base smollm2 --reward "$OUT/reward" \
  --router "$OUT/router_round2" --num-problems 800 --seed 5 --output "$OUT/data/corrections2.jsonl"
ROUND3=(--examples "$OUT/data/router.jsonl" "$OUT/data/corrections.jsonl" "$OUT/data/corrections2.jsonl"
        --num-train 100000 --num-val 105 --domain-weight correction=30)
# The shipped TopK router (round 8): on the arithmetic and correction rows alpha is regressed onto the
# largest alpha whose greedy pick is the right token, on the tokens where alpha changes the pick only
# (alpha_decisive); on the general rows onto 0 (alpha_zero): under the NLL, weighting them more raised alpha
# and NLL on held-out general text (bench/results/experiment_b_router_attempts.md, rounds 6-8). The full-logits router, an evaluation baseline, keeps round 3's losses, as measured.
stage router_topk $PY -m taro_ext.cli train-router "${ROUTER_ARGS[@]}" "${ROUND3[@]}" --design topk \
  --domain-loss arithmetic=alpha_decisive correction=alpha_decisive general=alpha_zero --output "$OUT/router_topk"
stage router_full $PY -m taro_ext.cli train-router "${ROUTER_ARGS[@]}" "${ROUND3[@]}" --design full --output "$OUT/router_full"
if [ "${SHIP:-0}" = 1 ]; then
  rm -rf taro_ext/assets/smollm2_reward taro_ext/assets/smollm2_router
  cp -r "$OUT/reward" taro_ext/assets/smollm2_reward
  rm -f taro_ext/assets/smollm2_reward/README.md  # peft's model-card template
  cp -r "$OUT/router_topk" taro_ext/assets/smollm2_router
fi
