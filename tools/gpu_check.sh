#!/usr/bin/env bash
# The GPU check: one command for a CUDA machine with no internet (the device tool's machine).
#
#   bash tools/gpu_check.sh                      # every stage: install info tests bench
#   bash tools/gpu_check.sh install info bench   # only these stages, in this order
#   CASES="hf-gpt2:8x128 hf-llama-58m:8x128" REPEATS=50 bash tools/gpu_check.sh install bench
#
# Stages:
#   install     pip install --no-deps --no-build-isolation -e .  (offline; the image has the deps)
#   info        torch, CUDA, Triton, onnxruntime versions and the GPU
#   tests       tests/test_triton_kernels.py on the GPU, ORT's cuda refusal, every test marked `cuda`
#   bench       tools/bench_suite.py --suite gpu-fp16 (or $CASES), JSON to $OUT/gpu-fp16.json
#   triton-off  the same cases with TGRAPH_TRITON=0, eager and tgraph-torch only (an A/B of the
#               Triton epilogues; not in the default list)
#
# Everything is logged to $OUT/gpu_check.log ($OUT defaults to ./gpu-check-out). A failing stage
# does not stop the next one; the exit status is non-zero when any stage failed. The whole run
# keeps within $DEADLINE_S seconds (default 540, under the device tool's 10 minutes): the bench
# gets what is left, and the suite writes its JSON after each case, so a cut-off run keeps the
# cases it finished.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-$PWD/gpu-check-out}"
PY="${PYTHON:-python3}"
REPEATS="${REPEATS:-30}"
WARMUP="${WARMUP:-10}"
DEADLINE_S="${DEADLINE_S:-540}"
TEST_TIMEOUT_S="${TEST_TIMEOUT_S:-150}"  # each of the two pytest runs
MODEL_DIR="${MODEL_DIR:-/tmp/tgraph-bench-models}"
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
START=$SECONDS
declare -a SUMMARY=()
FAILED=0

say() { echo "[gpu_check $((SECONDS - START))s] $*" | tee -a "$LOG"; }

left() { echo $((DEADLINE_S - (SECONDS - START))); }

# run_stage NAME COMMAND...: time it, log it, record its status; never exits the script.
run_stage() {
    local name="$1"
    shift
    local t0=$SECONDS
    say "stage $name: $*"
    "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    SUMMARY+=("$name: rc=$rc, $((SECONDS - t0)) s")
    [ "$rc" -eq 0 ] || FAILED=1
    say "stage $name finished: rc=$rc in $((SECONDS - t0)) s"
}

stage_install() {
    "$PY" -m pip install --no-deps --no-build-isolation --no-index -q -e .
}

stage_info() {
    "$PY" - <<'EOF'
import platform
import torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda)
print("cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu:", p.name, f"{p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs")
for name in ("triton", "onnxruntime", "transformers"):
    try:
        module = __import__(name)
        print(name, module.__version__)
    except ImportError as e:
        print(name, "missing:", e)
import onnxruntime
print("onnxruntime providers:", onnxruntime.get_available_providers())
from tgraph.backends import torch_ops
kernels = torch_ops.ops_for(torch.device("cuda"))
print("triton epilogues:", sorted(k for k, f in kernels.items() if f.__name__.startswith("triton_")))
EOF
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu \
        --format=csv 2>/dev/null || true
}

stage_tests() {
    local rc=0
    # The kernels on the GPU, and ORT's one-line refusal of cuda without onnxruntime-gpu.
    timeout "$TEST_TIMEOUT_S" "$PY" -m pytest -q -rs -p no:cacheprovider \
        tests/test_triton_kernels.py \
        tests/test_backend_ort.py::test_cuda_without_gpu_provider_is_a_clear_error || rc=1
    timeout "$TEST_TIMEOUT_S" "$PY" -m pytest -q -rs -p no:cacheprovider -m cuda tests || rc=1
    return $rc
}

bench_cases() {
    if [ -n "${CASES:-}" ]; then
        echo "--cases $CASES"
    else
        echo "--suite gpu-fp16"
    fi
}

stage_bench() {
    local budget
    budget=$(left)
    if [ "$budget" -lt 60 ]; then
        echo "only ${budget}s left of DEADLINE_S=$DEADLINE_S: skipping the bench"
        return 1
    fi
    # shellcheck disable=SC2046 # bench_cases prints flags to split
    timeout "$budget" "$PY" tools/bench_suite.py $(bench_cases) --device cuda --dtype fp16 \
        --repeats "$REPEATS" --warmup "$WARMUP" --model-dir "$MODEL_DIR" \
        --out "$OUT/gpu-fp16.json"
    local rc=$?
    [ "$rc" -eq 124 ] && echo "the bench ran out of its ${budget}s; the JSON holds the cases done"
    if [ -f "$OUT/gpu-fp16.json" ]; then
        "$PY" tools/bench_suite.py --table "$OUT/gpu-fp16.json" | tee "$OUT/gpu-fp16.md"
    fi
    return $rc
}

stage_triton_off() {
    local budget
    budget=$(left)
    # shellcheck disable=SC2046
    TGRAPH_TRITON=0 timeout "$budget" "$PY" tools/bench_suite.py $(bench_cases) --device cuda \
        --dtype fp16 --contenders eager,tgraph-torch --repeats "$REPEATS" --warmup "$WARMUP" \
        --model-dir "$MODEL_DIR" --out "$OUT/gpu-fp16-triton-off.json"
}

STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(install info tests bench)
say "stages: ${STAGES[*]}; OUT=$OUT; deadline ${DEADLINE_S}s"
for stage in "${STAGES[@]}"; do
    case "$stage" in
        install) run_stage install stage_install ;;
        info) run_stage info stage_info ;;
        tests) run_stage tests stage_tests ;;
        bench) run_stage bench stage_bench ;;
        triton-off) run_stage triton-off stage_triton_off ;;
        *) say "unknown stage $stage (install info tests bench triton-off)"; FAILED=1 ;;
    esac
done
say "summary (total $((SECONDS - START)) s):"
for line in "${SUMMARY[@]}"; do say "  $line"; done
exit $FAILED
