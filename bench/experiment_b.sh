#!/usr/bin/env bash
# Experiment B: SmolLM2-135M-Instruct base steered by the recipe's LoRA ARM reward model
# (bench/smollm2_recipe.sh), base vs GenARM (fixed alphas) vs TARo (TopK router) vs TARo
# (full-logits router):
#   arithmetic  in domain: 200 held-out graded word problems (seed 1234), greedy, chat: the base and
#               the fixed alphas (FIXED_METHODS)
#   arithmetic_router  the same problems through the routers (ROUTER_METHODS): rerun alone when a
#               router is retrained
#   reward      the reward model's own greedy accuracy on the same problems
#   gsm8k       the hard set: GSM8K test (greedy; few methods, it is slow on CPU)
#   alpaca_eval out of domain: per-token NLL of the AlpacaEval reference outputs (teacher-forced)
#   medqa       out of domain: MedQA accuracy by option log-likelihood
#   confirm     not in the default PARTS (about an hour on 2 cores): the confirmation set, 1000 fresh
#               problems of seed 2026 (CONFIRM_LIMIT), base, GenARM 1/2/4/8, TARo, and the reward model alone
# Settings come from the environment (defaults shown):
#   PARTS="arithmetic arithmetic_router reward alpaca_eval medqa gsm8k" LIMIT=200 OOD_LIMIT=100 GSM8K_LIMIT=100
#   MAX_NEW_TOKENS=128 FIXED_METHODS=base,genarm:0.25,genarm:0.5,genarm:1,genarm:2,genarm:4
#   ROUTER_METHODS=taro,taro-full (the likelihood parts run both lists)
#   GSM8K_METHODS=base,genarm:1,taro REWARD=taro_ext/assets/smollm2_reward
#   ROUTER=taro_ext/assets/smollm2_router FULL_ROUTER=recipe_out/router_full OUT=bench/results/experiment_b
# Writes $OUT/<part>.{json,md[,png]} and appends each part's settings and wall time to $OUT/run_log.txt;
# then `python bench/experiment_b_report.py $OUT > $OUT.md` writes the summary.
set -euo pipefail
cd "$(dirname "$0")/.."
PARTS=${PARTS:-arithmetic arithmetic_router reward alpaca_eval medqa gsm8k}
LIMIT=${LIMIT:-200}
OOD_LIMIT=${OOD_LIMIT:-100}
GSM8K_LIMIT=${GSM8K_LIMIT:-100}
CONFIRM_LIMIT=${CONFIRM_LIMIT:-1000}
CONFIRM_METHODS=base,genarm:1,genarm:2,genarm:4,genarm:8,taro
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-128}
REWARD=${REWARD:-taro_ext/assets/smollm2_reward}
ROUTER=${ROUTER:-taro_ext/assets/smollm2_router}
FULL_ROUTER=${FULL_ROUTER:-recipe_out/router_full}
FIXED_METHODS=${FIXED_METHODS:-base,genarm:0.25,genarm:0.5,genarm:1,genarm:2,genarm:4}
ROUTER_METHODS=${ROUTER_METHODS:-taro,taro-full}
METHODS=$FIXED_METHODS,$ROUTER_METHODS
GSM8K_METHODS=${GSM8K_METHODS:-base,genarm:1,taro}
OUT=${OUT:-bench/results/experiment_b}
PY=${PY:-.venv/bin/python}
MODELS=(--base smollm2 --reward "$REWARD" --router "$ROUTER" --full-router "$FULL_ROUTER")
mkdir -p "$OUT"
for PART in $PARTS; do
  START=$(date +%s)
  case $PART in
    arithmetic) DESC="limit=$LIMIT max_new_tokens=$MAX_NEW_TOKENS methods=$FIXED_METHODS"
                $PY -m taro_ext.cli eval --task arithmetic --limit "$LIMIT" --methods "$FIXED_METHODS" "${MODELS[@]}" \
                  --max-new-tokens "$MAX_NEW_TOKENS" --batch-size 50 --out "$OUT" --stem arithmetic --no-progress ;;
    arithmetic_router) DESC="limit=$LIMIT max_new_tokens=$MAX_NEW_TOKENS methods=$ROUTER_METHODS"
                $PY -m taro_ext.cli eval --task arithmetic --limit "$LIMIT" --methods "$ROUTER_METHODS" \
                  "${MODELS[@]}" --max-new-tokens "$MAX_NEW_TOKENS" --batch-size 50 --out "$OUT" --stem arithmetic_router \
                  --no-progress ;;
    reward)     DESC="limit=$LIMIT max_new_tokens=$MAX_NEW_TOKENS methods=base (the reward model)"
                $PY -m taro_ext.cli eval --task arithmetic --limit "$LIMIT" --methods base --base "$REWARD" \
                  --max-new-tokens "$MAX_NEW_TOKENS" --batch-size 50 --out "$OUT" --stem arithmetic_reward_model --no-progress ;;
    gsm8k)      DESC="limit=$GSM8K_LIMIT max_new_tokens=256 methods=$GSM8K_METHODS"
                $PY -m taro_ext.cli eval --task gsm8k --limit "$GSM8K_LIMIT" --methods "$GSM8K_METHODS" "${MODELS[@]}" \
                  --max-new-tokens 256 --batch-size 50 --out "$OUT" --stem gsm8k --no-progress ;;
    alpaca_eval|medqa) DESC="limit=$OOD_LIMIT max_length=1024 methods=$METHODS"
                $PY -m taro_ext.cli eval-likelihood --task "$PART" --limit "$OOD_LIMIT" --methods "$METHODS" \
                  "${MODELS[@]}" --max-length 1024 --batch-size 4 --out "$OUT" --stem "$PART" --no-progress ;;
    confirm)    DESC="limit=$CONFIRM_LIMIT seed=2026 max_new_tokens=$MAX_NEW_TOKENS methods=$CONFIRM_METHODS + the reward model"
                $PY -m taro_ext.cli eval --task arithmetic --seed 2026 --limit "$CONFIRM_LIMIT" --methods "$CONFIRM_METHODS" \
                  "${MODELS[@]}" --max-new-tokens "$MAX_NEW_TOKENS" --batch-size 50 --out "$OUT" --stem confirm_seed2026 \
                  --no-progress
                $PY -m taro_ext.cli eval --task arithmetic --seed 2026 --limit "$CONFIRM_LIMIT" --methods base --base "$REWARD" \
                  --max-new-tokens "$MAX_NEW_TOKENS" --batch-size 50 --out "$OUT" --stem confirm_seed2026_reward_model --no-progress ;;
    *) echo "unknown part $PART"; exit 2 ;;
  esac
  echo "$(date -u +%FT%TZ) $PART $DESC wall_s=$(( $(date +%s) - START ))" | tee -a "$OUT/run_log.txt"
done
