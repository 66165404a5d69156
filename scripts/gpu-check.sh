#!/usr/bin/env bash
# On a GPU machine: the CPU-vs-GPU tests and the benchmark, from the
# binaries scripts/build-gpu.sh made elsewhere (target/gpu/, or packed in
# target/gpu.tar.xz). The CUDA 13 libraries are taken from the Python
# environment that holds PyTorch (which scripts/bench-gpu.sh needs anyway).
#
#   bash scripts/gpu-check.sh            # logs in $OUT, or target/gpu-logs
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-target/gpu-logs}
mkdir -p "$OUT" target/gpu
[[ -f target/gpu.tar.xz ]] && tar xJf target/gpu.tar.xz -C target/gpu
PYTHON=${PYTHON:-python3}
NV=$("$PYTHON" -c 'import nvidia, os; print(":".join(os.path.join(p, "cu13", "lib") for p in nvidia.__path__))')
export LD_LIBRARY_PATH="$NV${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
status=0
for test in gpu_kernels update cuda; do
  timeout 300 "target/gpu/$test" --test-threads 1 > "$OUT/$test.log" 2>&1
  rc=$?
  echo "$test: $(grep -E '^test result' "$OUT/$test.log" || echo "exit $rc")"
  grep -E -A3 '^---- |panicked' "$OUT/$test.log" | head -20
  [[ $rc == 0 ]] || status=1
done
BENCH_BIN=target/gpu/bench_gpu bash scripts/bench-gpu.sh > "$OUT/bench.log" 2>&1 || status=1
grep -vE '^\s*$' "$OUT/bench.log" | tail -24
exit $status
