#!/usr/bin/env bash
# DiLoCo quality on the bundled corpus: one replica at 4x batch (baseline)
# against 4 replicas x H inner steps x R rounds on the same tokens,
# uncompressed and through the kernels' compression (chunked top-k + 8-bit,
# error feedback) at a few densities.
# Usage: bash scripts/diloco-quality.sh [extra args for every run]
#   Defaults: --inner-steps 10 --rounds 50 (arguments given here win, e.g.
#   `--inner-steps 50 --rounds 10` for the reference's setup).
# Prints each run's validation loss every 10 rounds, then a table.
# ~6 min per run on 2 cores.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release -q -p p2ptrain-trainer --example diloco
bin=target/release/examples/diloco
defaults=(--inner-steps 10 --rounds 50 --eval-every 10)
declare -a names results
log=$(mktemp)
trap 'rm -f "$log"' EXIT
run() {
  local name=$1 mode=$2; shift 2
  echo "== $name: $mode $*"
  # The last occurrence of a flag wins, so the caller's arguments go last.
  "$bin" "$mode" "${defaults[@]}" "$@" "${extra[@]}" | tee "$log"
  local out; out=$(grep '^RESULT' "$log")
  names+=("$name"); results+=("${out##*final_val_loss=}")
}
extra=("$@")
run "baseline (1 replica, 4x batch)" baseline
run "DiLoCo, no compression" diloco
for density in 0.5 0.25 0.05; do
  run "DiLoCo, top-$density + 8-bit, EF" diloco --density "$density" --bits 8
done
base=${results[0]}; dil=${results[1]}
printf '\n%-40s %10s %14s %16s\n' run val_loss vs_baseline vs_uncompressed
for i in "${!names[@]}"; do
  awk -v n="${names[$i]}" -v l="${results[$i]}" -v b="$base" -v d="$dil" \
    'BEGIN { printf "%-40s %10.4f %+13.2f%% %+15.2f%%\n", n, l, 100*(l/b-1), 100*(l/d-1) }'
done
