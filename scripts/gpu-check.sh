#!/usr/bin/env bash
# On a GPU machine: the CPU-vs-GPU tests, a swarm of GPU and CPU nodes, and
# the benchmark, from the binaries scripts/build-gpu.sh made elsewhere
# (target/gpu/, or packed in target/gpu.tar.xz). The CUDA 13 libraries are
# taken from the Python environment that holds PyTorch (which
# scripts/bench-gpu.sh needs anyway).
#
#   bash scripts/gpu-check.sh               # all three; logs in $OUT, or target/gpu-logs
#   bash scripts/gpu-check.sh tests swarm   # only those
#
# The swarm is scripts/demo.sh with the CUDA p2pnode: four nodes, the first
# and third training on the GPU, the others on the CPU (SWARM_ROUNDS
# rounds, default 4), ending with `p2pnode verify`.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-target/gpu-logs}
mkdir -p "$OUT" target/gpu
[[ -f target/gpu.tar.xz ]] && tar xJf target/gpu.tar.xz -C target/gpu
PYTHON=${PYTHON:-python3}
NV=$("$PYTHON" -c 'import nvidia, os; print(":".join(os.path.join(p, "cu13", "lib") for p in nvidia.__path__))')
export LD_LIBRARY_PATH="$NV${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
stages=("$@")
[[ ${#stages[@]} -gt 0 ]] || stages=(tests swarm bench)
status=0
for stage in "${stages[@]}"; do
  case $stage in
    tests)
      for test in gpu_kernels update cuda; do
        timeout 300 "target/gpu/$test" --test-threads 1 > "$OUT/$test.log" 2>&1
        rc=$?
        echo "$test: $(grep -E '^test result' "$OUT/$test.log" || echo "exit $rc")"
        grep -E -A3 '^---- |panicked' "$OUT/$test.log" | head -20
        [[ $rc == 0 ]] || status=1
      done
      ;;
    swarm)
      BIN=target/gpu/p2pnode NODES=4 DEVICES="cuda:0 cpu" ROUNDS=${SWARM_ROUNDS:-4} \
        OUT="$OUT/swarm" timeout 400 bash scripts/demo.sh > "$OUT/swarm.log" 2>&1 || status=1
      tail -16 "$OUT/swarm.log"
      ;;
    bench)
      BENCH_BIN=target/gpu/bench_gpu bash scripts/bench-gpu.sh > "$OUT/bench.log" 2>&1 || status=1
      grep -vE '^\s*$' "$OUT/bench.log" | tail -24
      ;;
    *)
      echo "unknown stage $stage (tests, swarm or bench)" >&2
      status=1
      ;;
  esac
done
exit $status
