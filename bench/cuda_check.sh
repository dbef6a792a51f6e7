#!/usr/bin/env bash
# The GPU check, in one call (about 6 minutes on an H100): build attnkit with the CUDA backend
# for sm_90, run tests/test_cuda.py, compute-sanitizer memcheck and racecheck on a small run of
# every kernel path (bench/cuda_sanitize.py), and the CUDA benchmark. Logs under $OUT (default
# ./cuda-logs); a short summary is printed last.
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
python3 -m pip install --no-build-isolation --no-deps -q --target /tmp/ak-site . \
  -Ccmake.define.ATTNKIT_CUDA=ON -Ccmake.define.CMAKE_CUDA_ARCHITECTURES="$ARCH" -Cbuild-dir=/tmp/ak-build \
  > "$OUT/build.log" 2>&1
build_rc=$?
export PYTHONPATH=/tmp/ak-site
python3 -c "import attnkit; print('why_unavailable:', attnkit.cuda.why_unavailable()); print(attnkit.cuda.get_device_properties(0))" \
  >> "$OUT/build.log" 2>&1
tail -3 "$OUT/build.log"

stamp "tests"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py -x --maxfail=5 > "$OUT/tests.log" 2>&1
tests_rc=$?
tail -15 "$OUT/tests.log"

stamp "compute-sanitizer memcheck"
timeout 100 compute-sanitizer --tool memcheck --error-exitcode 9 python3 bench/cuda_sanitize.py > "$OUT/memcheck.log" 2>&1
mem_rc=$?
stamp "compute-sanitizer racecheck"
timeout 100 compute-sanitizer --tool racecheck --error-exitcode 9 python3 bench/cuda_sanitize.py > "$OUT/racecheck.log" 2>&1
race_rc=$?

stamp "bench"
timeout 150 python3 -m attnkit.bench --device cuda --json "$OUT/bench.json" > "$OUT/bench.txt" 2>&1
bench_rc=$?

echo "================ summary ================"
cat "$OUT/gpu.txt"
echo "build rc=$build_rc; tests rc=$tests_rc: $(tail -1 "$OUT/tests.log")"
echo "memcheck rc=$mem_rc: $(grep -E 'ERROR SUMMARY|sanitize subset' "$OUT/memcheck.log" | tr '\n' ' ')"
echo "racecheck rc=$race_rc: $(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY|sanitize subset' "$OUT/racecheck.log" | tr '\n' ' ')"
echo "bench rc=$bench_rc"
cat "$OUT/bench.txt"
stamp "done"
