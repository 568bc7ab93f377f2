#!/usr/bin/env bash
# One command for a CUDA machine without network: the gpu-marked tests, then benchmarks/paper_scale.py on the GPU,
# within 8 minutes in all. Writes OUTPUT_DIR/paper_scale_cuda.json (the measurements) and OUTPUT_DIR/gpu_check.json
# (what ran, its budget and exit codes), then prints the README table rows to paste.
#
#   benchmarks/gpu_check.sh [OUTPUT_DIR]      # default OUTPUT_DIR: benchmarks/results
#   PYTHON=/path/to/python benchmarks/gpu_check.sh
#
# Budget (seconds): tests 120 + paper_scale 330 + start-up and rows ~30 = 480. To fit, paper_scale times 128 new
# tokens per caption (extrapolated to the paper's 1024: labelled in its JSON and rows), captioning batches 1 and 16,
# 2 repeats of the speed comparisons; everything else at the paper's settings (fp16, full depth, 512 px).
# The real-shape models (~16 GB of fp16 safetensors) are built on the first run into the vldd cache.
set -uo pipefail

PYTHON=${PYTHON:-python}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/benchmarks/results}
TESTS_S=120
SCALE_S=330
SCALE_ARGS=(--device cuda --decode-tokens 128 --caption-batches 1,16 --repeats 2)
SCALE_REDUCED="decode timed over 128 new tokens, extrapolated to 1024; captioning at batches 1 and 16 only; 2 repeats of the speed comparisons"

if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check.sh: no CUDA device (torch.cuda.is_available() is False for $PYTHON); run it on a machine with an NVIDIA GPU" >&2
    exit 2
fi

# Offline, as on a machine without network: nothing is fetched from the Hub.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 GRADIO_ANALYTICS_ENABLED=False
mkdir -p "$OUT"
cd "$ROOT" || exit 1

start=$SECONDS
echo "== gpu-marked tests (at most ${TESTS_S} s)"
timeout "$TESTS_S" "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider
tests_rc=$?
tests_s=$((SECONDS - start))

start=$SECONDS
echo "== benchmarks/paper_scale.py ${SCALE_ARGS[*]} (at most ${SCALE_S} s)"
timeout "$SCALE_S" "$PYTHON" benchmarks/paper_scale.py "${SCALE_ARGS[@]}" --output "$OUT/paper_scale_cuda.json"
scale_rc=$?
scale_s=$((SECONDS - start))

"$PYTHON" - "$OUT/gpu_check.json" "$tests_rc" "$tests_s" "$TESTS_S" "$scale_rc" "$scale_s" "$SCALE_S" \
    "${SCALE_ARGS[*]}" "$SCALE_REDUCED" <<'EOF'
import json, os, sys
path, tests_rc, tests_s, tests_budget, scale_rc, scale_s, scale_budget, scale_args, reduced = sys.argv[1:]
summary = {"budget_s": 480,
           "tests": {"command": "python -m pytest -m gpu", "exit_code": int(tests_rc), "seconds": int(tests_s),
                     "timeout_s": int(tests_budget)},
           "paper_scale": {"command": f"python benchmarks/paper_scale.py {scale_args}", "exit_code": int(scale_rc),
                           "seconds": int(scale_s), "timeout_s": int(scale_budget),
                           "result": "paper_scale_cuda.json", "reduced": reduced}}
with open(path + ".tmp", "w") as f:
    json.dump(summary, f, indent=1)
os.replace(path + ".tmp", path)  # atomic
EOF

echo "== README rows (README.md 'Cost at the paper's scale'; benchmarks/README.md projections)"
rows_rc=1
if [ -f "$OUT/paper_scale_cuda.json" ]; then
    "$PYTHON" benchmarks/paper_scale.py --rows "$OUT/paper_scale_cuda.json"
    rows_rc=$?
fi
echo "wrote $OUT/paper_scale_cuda.json and $OUT/gpu_check.json"
echo "tests: exit ${tests_rc} in ${tests_s} s; paper_scale: exit ${scale_rc} in ${scale_s} s (124 = ran out of its budget)"
[ "$tests_rc" -eq 0 ] && [ "$scale_rc" -eq 0 ] && [ "$rows_rc" -eq 0 ]
