#!/usr/bin/env bash
# The one prepared GPU run, in two commands of at most 10 minutes each (issue 13):
#
#   bench/gpu_check.sh 1 [OUT_DIR]   # ~5 min: build, environment, smoke test, the GPU tests
#   bench/gpu_check.sh 2 [OUT_DIR]   # ~3 min: CUDA-graph timings + peers, ncu, compute-sanitizer
#
# OUT_DIR defaults to $OUT, else bench/results/gpu/run-<UTC time>. Part 2 reuses part 1's build
# (same tree). Every step runs under `timeout` (a hang watchdog), and each part as a whole
# under another; each step leaves OUT_DIR/steps/NAME.json (rc, seconds, limit) and
# OUT_DIR/NAME.log. Both parts end with `bench/gpu_check.py summarize`, which writes
# OUT_DIR/summary.json with every verdict and gives the exit status: 0 all passed, 1 a check
# failed, 3 only speed goals missed. Without a GPU: exit 2 at once.
# Environment: PYTHON (default python3), TORCH_CUDA_ARCH_LIST (default 9.0a), MAX_JOBS (16).
set -uo pipefail

cd "$(dirname "$0")/.."
PART="${1:-}"
OUT_DIR="${2:-${OUT:-bench/results/gpu/run-$(date -u +%Y%m%dT%H%M%SZ)}}"
PY="${PYTHON:-python3}"
PART1_LIMIT_S=570
PART2_LIMIT_S=570

usage() { echo "usage: bench/gpu_check.sh {1|2} [OUT_DIR]" >&2; exit 64; }

# step NAME LIMIT_S [--junit FILE] CMD...: runs CMD under a timeout, records its verdict inputs.
step() {
  local name="$1" limit="$2"; shift 2
  local junit=""
  if [ "${1:-}" = "--junit" ]; then junit="$2"; shift 2; fi
  echo "== $name (limit ${limit}s): $*" >&2
  local t0 t1 rc
  t0=$(date +%s.%N)
  timeout --kill-after=10 "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  local timed_out=false
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then timed_out=true; fi
  printf '{"name": "%s", "rc": %d, "seconds": %.1f, "limit_s": %d, "timed_out": %s, "log": "%s.log", "junit": %s}\n' \
    "$name" "$rc" "$(awk "BEGIN { print $t1 - $t0 }")" "$limit" "$timed_out" "$name" \
    "$( [ -n "$junit" ] && echo "\"$junit\"" || echo null )" > "$OUT_DIR/steps/$name.json"
  tail -3 "$OUT_DIR/$name.log" >&2
  echo "   -> rc $rc" >&2
  return "$rc"
}

part1() {
  # The build needs ninja (torch's extension builder falls back to a serial distutils build
  # that would not finish in time): stop at once without it.
  if ! command -v ninja > /dev/null && ! "$PY" -c "import ninja" 2> /dev/null; then
    step ninja 5 sh -c 'echo "ninja not found: pip install ninja (or put it on PATH)"; exit 1'
    return 1
  fi
  step env 60 sh -c "nvidia-smi -q > '$OUT_DIR/nvidia-smi-q.txt' && nvidia-smi --query-gpu=name,driver_version --format=csv \
    && (nvcc --version || /usr/local/cuda/bin/nvcc --version) && git rev-parse HEAD && git status --short --untracked-files=no \
    && '$PY' -c 'import torch, triton; print(torch.__version__, torch.version.cuda, triton.__version__)'"
  step build 300 env TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}" MAX_JOBS="${MAX_JOBS:-16}" TARO_EXT_CUDA=1 \
    "$PY" setup.py build_ext --inplace || return 1
  step env_json 60 "$PY" bench/gpu_check.py env "$OUT_DIR"
  step smoke 60 --junit smoke.xml "$PY" -m pytest -q -x -p no:cacheprovider tests/test_gpu.py -k smoke \
    --junitxml="$OUT_DIR/smoke.xml"
  step gpu_tests 200 --junit gpu_tests.xml "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py \
    tests/test_fused_step.py tests/test_triton_step.py -k "not smoke" --junitxml="$OUT_DIR/gpu_tests.xml"
}

part2() {
  step timings 170 "$PY" bench/gpu_check.py timings "$OUT_DIR"
  local ncu sections
  ncu="$(command -v ncu || echo /usr/local/cuda/bin/ncu)"
  sections="--section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section WarpStateStats"
  for shape in 1x128256 64x128256; do
    # The first launch is a cold start; profile the second TARo sampling step.
    step "ncu_${shape}" 60 sh -c "'$ncu' $sections -k regex:taro_step --launch-skip 4 --launch-count 1 \
      --export '$OUT_DIR/ncu_${shape}' --force-overwrite '$PY' bench/gpu_check.py probe --shape $shape --steps 2 \
      && '$ncu' --import '$OUT_DIR/ncu_${shape}.ncu-rep' --page details"
  done
  local sanitizer
  sanitizer="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
  # 1x128256 bf16: 251 slices per row on an H200; 600x4096: more rows than resident CTAs.
  for tool in memcheck racecheck synccheck; do
    step "sanitizer_$tool" 90 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" --tool "$tool" --error-exitcode 17 \
      "$PY" bench/gpu_check.py probe --shape 1x128256 --shape 600x4096
  done
}

case "$PART" in
  1|2) ;;
  __part1) mkdir -p "$OUT_DIR/steps"; part1; exit $? ;;
  __part2) mkdir -p "$OUT_DIR/steps"; part2; exit $? ;;
  *) usage ;;
esac

if ! command -v nvidia-smi > /dev/null || ! nvidia-smi -L > /dev/null 2>&1; then
  echo "gpu_check: no NVIDIA GPU on this machine (nvidia-smi -L failed): nothing to check; run it on the GPU machine" >&2
  exit 2
fi
mkdir -p "$OUT_DIR/steps"
echo "gpu_check part $PART -> $OUT_DIR" >&2
limit=$PART1_LIMIT_S
[ "$PART" = 2 ] && limit=$PART2_LIMIT_S
# The part as a whole under a watchdog too: a step stuck past its own timeout cannot hold the machine.
timeout --kill-after=10 "$limit" bash "$0" "__part$PART" "$OUT_DIR"
rc=$?
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
  printf '{"name": "part%s", "rc": %d, "seconds": %d, "limit_s": %d, "timed_out": true, "log": null, "junit": null}\n' \
    "$PART" "$rc" "$limit" "$limit" > "$OUT_DIR/steps/part$PART.json"
fi
"$PY" bench/gpu_check.py summarize "$OUT_DIR"
