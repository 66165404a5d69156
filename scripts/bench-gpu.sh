#!/usr/bin/env bash
# GPU benchmark: candle training throughput and MFU for the gpt2 preset
# (124M) at batch 8x1024 beside PyTorch eager on the same GPU, same model and
# batch; and device compression of a 124M f32 pseudo-gradient beside a
# device-to-device copy of the same buffer (with a bit-for-bit check of the
# device payload against the CPU's).
#
#   bash scripts/bench-gpu.sh            # builds with --features cuda (needs nvcc)
#   BENCH_BIN=path/to/bench_gpu bash scripts/bench-gpu.sh   # a prebuilt binary
#
# PYTHON (default python3) must have torch with CUDA. STEPS sets the timed
# steps (default 10).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
STEPS=${STEPS:-10}
if [[ -z "${BENCH_BIN:-}" ]]; then
  cargo build --release -q --features cuda -p p2ptrain-trainer --example bench_gpu
  BENCH_BIN=target/release/examples/bench_gpu
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

rate() { grep -o '[0-9]* tok/s' <<<"$1" | head -1 | tr -dc 0-9; }
compare() { # label candle-line torch-line
  awk -v c="$(rate "$2")" -v t="$(rate "$3")" -v l="$1" \
    'BEGIN { printf "%s: candle %d tok/s, PyTorch eager %d tok/s -> %.2fx (target >= 0.7x)\n", l, c, t, c/t }'
}

summary=()
for precision in fp32 tf32; do
  flag=(); [[ $precision == tf32 ]] && flag=(--tf32)
  only=(); [[ $precision == tf32 ]] && only=(--train-only)
  out=$("$BENCH_BIN" --preset gpt2 --batch 8 --steps "$STEPS" "${flag[@]}" "${only[@]}")
  echo "$out"
  candle=$(grep '^candle' <<<"$out")
  torch=$("$PYTHON" scripts/bench_gpu_torch.py --preset gpt2 --batch 8 --steps "$STEPS" "${flag[@]}")
  echo "$torch"
  sdpa=$("$PYTHON" scripts/bench_gpu_torch.py --preset gpt2 --batch 8 --steps "$STEPS" --sdpa "${flag[@]}")
  echo "$sdpa"
  summary+=("$(compare "gpt2 $precision, same attention" "$candle" "$torch")")
  summary+=("$(compare "gpt2 $precision, PyTorch with fused SDPA" "$candle" "$sdpa")")
done
echo
printf '%s\n' "${summary[@]}"
