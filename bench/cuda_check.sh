#!/usr/bin/env bash
# The GPU check, in one call (about 1.5 minutes on an H100, plus the machine's start): build
# attnkit with the CUDA backend for sm_90; then, side by side on the GPU, tests/test_cuda.py,
# every oracle test of the shared backend fixture on its cuda entry (tests/test_sdpa.py,
# test_ops.py, test_mha.py, test_errors.py -k cuda), and compute-sanitizer memcheck and racecheck
# on a small run of every kernel path (bench/cuda_sanitize.py); then, alone on the GPU, the CUDA
# benchmark. Logs under $OUT (default ./cuda-logs); a short summary is printed last.
# CUDA_CHECK_SKIP_BENCH=1 leaves the bench out.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/cuda-logs}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
ARCH=${ATTNKIT_CUDA_ARCH:-90}
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start ))s] $*"; }

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv > "$OUT/gpu.txt" 2>&1
stamp "build (sm_$ARCH)"
rm -rf /tmp/ak-site
CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) python3 -m pip install --no-build-isolation --no-deps -q --target /tmp/ak-site . \
  -Ccmake.define.ATTNKIT_CUDA=ON -Ccmake.define.CMAKE_CUDA_ARCHITECTURES="$ARCH" -Cbuild-dir=/tmp/ak-build \
  > "$OUT/build.log" 2>&1
build_rc=$?
export PYTHONPATH=/tmp/ak-site
python3 -c "import attnkit; print('why_unavailable:', attnkit.cuda.why_unavailable()); print(attnkit.cuda.get_device_properties(0))" \
  >> "$OUT/build.log" 2>&1
tail -3 "$OUT/build.log"

stamp "tests + fixture tests + memcheck + racecheck, side by side"
PYTEST="python3 -m pytest -q -p no:cacheprovider -rfE --tb=short"
timeout 140 $PYTEST tests/test_cuda.py > "$OUT/tests.log" 2>&1 &
p_tests=$!
timeout 140 $PYTEST -n 6 tests/test_sdpa.py tests/test_ops.py tests/test_mha.py tests/test_errors.py -k cuda \
  > "$OUT/fixture.log" 2>&1 &
p_fix=$!
timeout 140 compute-sanitizer --tool memcheck --error-exitcode 9 python3 bench/cuda_sanitize.py > "$OUT/memcheck.log" 2>&1 &
p_mem=$!
timeout 140 compute-sanitizer --tool racecheck --error-exitcode 9 python3 bench/cuda_sanitize.py > "$OUT/racecheck.log" 2>&1 &
p_race=$!
wait $p_tests; tests_rc=$?
wait $p_fix; fix_rc=$?
wait $p_mem; mem_rc=$?
wait $p_race; race_rc=$?

bench_rc=skipped
if [ -z "${CUDA_CHECK_SKIP_BENCH:-}" ]; then
  stamp "bench"
  timeout 150 python3 -m attnkit.bench --device cuda --json "$OUT/bench.json" > "$OUT/bench.txt" 2>&1
  bench_rc=$?
fi

echo "================ summary ================"
cat "$OUT/gpu.txt"
echo "build rc=$build_rc"
echo "test_cuda rc=$tests_rc: $(tail -1 "$OUT/tests.log")"
echo "fixture (-k cuda) rc=$fix_rc: $(tail -1 "$OUT/fixture.log")"
grep -hE "^(FAILED|ERROR) " "$OUT/tests.log" "$OUT/fixture.log" | cut -c1-220 | head -40
echo "memcheck rc=$mem_rc: $(grep -E 'ERROR SUMMARY|BAD' "$OUT/memcheck.log" | tr '\n' ' ')"
echo "racecheck rc=$race_rc: $(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY|BAD' "$OUT/racecheck.log" | tr '\n' ' ')"
echo "bench rc=$bench_rc"
[ -f "$OUT/bench.txt" ] && grep -E "^#|prefill|decode" "$OUT/bench.txt" | grep -vE "naive" | awk '{$NF=$NF; print}' | cut -c1-120
stamp "done"
