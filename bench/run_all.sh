#!/usr/bin/env sh
# Full benchmark suites once per usable attnkit ISA, into bench/results/ (ignored by git).
# Usage: bench/run_all.sh [extra options for python -m attnkit.bench, e.g. --threads 1]
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
mkdir -p bench/results
for isa in $($PY -c "import attnkit; print(' '.join(attnkit.get_config()['usable_isas']))"); do
    echo "== isa $isa"
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $PY -m attnkit.bench --isa "$isa" "$@" \
        --json "bench/results/$isa.json" --plot "bench/results/$isa.png" | tee "bench/results/$isa.txt"
done
