#!/usr/bin/env bash
# DiLoCo quality on the bundled corpus: one replica at 4x batch (baseline)
# against 4 replicas x H=50 x 10 rounds, uncompressed and through the kernels'
# compression (top-k + 8-bit, error feedback) at a few densities.
# Usage: bash scripts/diloco-quality.sh [extra args for every diloco run]
# Prints each run's per-round validation loss, then a table. ~5 min per run on 2 cores.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release -q -p p2ptrain-trainer --example diloco
bin=target/release/examples/diloco
declare -a names results
log=$(mktemp)
trap 'rm -f "$log"' EXIT
run() {
  local name=$1; shift
  echo "== $name: $*"
  "$bin" "$@" | tee "$log"
  local out; out=$(grep '^RESULT' "$log")
  names+=("$name"); results+=("${out##*final_val_loss=}")
}
run "baseline (1 replica, 4x batch)" baseline "${@}"
run "DiLoCo, no compression" diloco "${@}"
for density in 0.1 0.05 0.01; do
  run "DiLoCo, top-$density + 8-bit, EF" diloco --density "$density" --bits 8 "${@}"
done
base=${results[0]}; dil=${results[1]}
printf '\n%-40s %10s %14s %16s\n' run val_loss vs_baseline vs_uncompressed
for i in "${!names[@]}"; do
  awk -v n="${names[$i]}" -v l="${results[$i]}" -v b="$base" -v d="$dil" \
    'BEGIN { printf "%-40s %10.4f %+13.2f%% %+15.2f%%\n", n, l, 100*(l/b-1), 100*(l/d-1) }'
done
