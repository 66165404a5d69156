#!/usr/bin/env bash
# Round sync of 4 peers on loopback with a 25M-parameter model, p2ptrain beside
# Hivemind's all-reduce of the same size (shared/reference/
# bench_hivemind_allreduce.py, 4 peers, uint8), back to back on this machine.
#
# p2ptrain: node/examples/bench_round_sync.rs (4 full nodes, TCP + TLS +
# yamux on 127.0.0.1; compress, announce, fetch, verify, aggregate, commit;
# from the first peer starting to compress to the last holding the agreed
# checkpoint). Hivemind: trigger to result, max over peers, matchmaking apart.
# Prints the medians and the ratios (target: p2ptrain >= 10x faster): the
# exchange alone (from the last peer's update being ready to the last peer
# holding the agreed checkpoint), and the round with compression first.
#
# Needs the reference venv: set PYTHON (default $REF_DIR/venv/bin/python; make
# it with `REF_DIR=... bash shared/reference/setup_env.sh`) and REF (default
# ../shared/reference). ROUNDS (default 6) sets the rounds of each.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REF_DIR=${REF_DIR:-$HOME/.cache/p2ptrain-ref}
PYTHON=${PYTHON:-$REF_DIR/venv/bin/python}
REF=${REF:-../shared/reference}
ROUNDS=${ROUNDS:-6}
if [ ! -x "$PYTHON" ]; then
  echo "no Python with hivemind at $PYTHON: run REF_DIR=$REF_DIR bash $REF/setup_env.sh" >&2
  exit 1
fi
cargo build --release -q -p p2ptrain-node --example bench_round_sync
ours=$(target/release/examples/bench_round_sync --rounds "$ROUNDS" | tee /dev/stderr | grep '^SUMMARY')
theirs=$("$PYTHON" "$REF/bench_hivemind_allreduce.py" --peers 4 --compression uint8 --rounds "$((ROUNDS - 1))" 2>/dev/null | tee /dev/stderr | grep '^SUMMARY')
o=$(sed -n 's/.*round sync median \([0-9.]*\)s.*/\1/p' <<<"$ours")
x=$(sed -n 's/.*exchange median \([0-9.]*\)s.*/\1/p' <<<"$ours")
t=$(sed -n 's/.*allreduce median \([0-9.]*\)s.*/\1/p' <<<"$theirs")
awk -v o="$o" -v x="$x" -v t="$t" 'BEGIN {
  printf "Hivemind %.3f s per all-reduce (trigger to result)\n", t
  printf "p2ptrain %.3f s announce to commit (announce, fetch, verify, aggregate, commit): %.2fx faster (target >= 10x)\n", x, t/x
  printf "p2ptrain %.3f s with compression on the CPU first: %.2fx faster\n", o, t/o
}'
