#!/usr/bin/env bash
# A local swarm of four real `p2pnode` processes on 127.0.0.1, on the bundled
# defaults (the tiny model, the bundled Shakespeare, each node its own shard):
# they find each other through the first node, train, exchange compressed
# updates, agree on a checkpoint every round, and the run ends with
# `p2pnode verify` replaying the chain from genesis in one node's directory.
#
#   bash scripts/demo.sh            # ROUNDS=6 NODES=4 INNER_STEPS=30 by default
#
# A GPU peer and a CPU peer in one run, with a binary built with
# `--features cuda`:
#
#   BIN=path/to/p2pnode NODES=2 DEVICES="cuda:0 cpu" bash scripts/demo.sh
#
# DEVICES lists where each node trains (`--device`), repeated over the nodes
# (default: cpu). BIN is a prebuilt p2pnode (default: built here, debug).
# Everything lands in demo-out/ (OUT; removed and made again at each run);
# each node's log is demo-out/<name>.log.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROUNDS=${ROUNDS:-6}
NODES=${NODES:-4}
INNER_STEPS=${INNER_STEPS:-30}
OUT=${OUT:-demo-out}
read -ra devices <<<"${DEVICES:-cpu}"
[[ ${#devices[@]} -gt 0 ]] || devices=(cpu)

if [[ -z "${BIN:-}" ]]; then
  echo "building p2pnode…"
  cargo build -q -p p2ptrain-node --bin p2pnode
  BIN=target/debug/p2pnode
fi
rm -rf "$OUT" && mkdir -p "$OUT"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

names=(a b c d e f g h)
node_devices=()
first=""
for ((i = 0; i < NODES; i++)); do
  name=${names[$i]}
  "$BIN" init --dir "$OUT/$name" --inner-steps "$INNER_STEPS" --min-contributors "$NODES" --deadline-ms 20000 >/dev/null 2>&1
  device=${devices[$((i % ${#devices[@]}))]}
  node_devices+=("$device")
  args=(join --dir "$OUT/$name" --key "$OUT/$name.key" --no-mdns --listen /ip4/127.0.0.1/tcp/0 --rounds "$ROUNDS" --device "$device")
  [[ -n "$first" ]] && args+=(--bootstrap "$first")
  "$BIN" "${args[@]}" >"$OUT/$name.out" 2>"$OUT/$name.log" &
  pids+=($!)
  if [[ -z "$first" ]]; then
    for _ in $(seq 100); do
      first=$(sed -n 's/^listening on //p' "$OUT/$name.log" | head -1)
      [[ -n "$first" ]] && break
      sleep 0.1
    done
    [[ -n "$first" ]] || { echo "node a did not start:"; cat "$OUT/a.log"; exit 1; }
    echo "node a listening on $first; nodes b..${names[$((NODES - 1))]} dial it"
  fi
done

echo "training $ROUNDS rounds of $INNER_STEPS steps on $NODES nodes (node a's view):"
tail -n +1 -f "$OUT/a.out" --pid "${pids[0]}" &
tailer=$!
# The first node to fail ends the demo (the others would wait for it).
status=0
for _ in "${pids[@]}"; do
  wait -n "${pids[@]}" 2>/dev/null || { status=$?; break; }
done
kill "$tailer" 2>/dev/null || true
[[ $status -eq 0 ]] || { echo "a node failed (exit $status); logs in $OUT/"; exit "$status"; }
pids=()

echo
echo "checkpoint of the last round on each node:"
for ((i = 0; i < NODES; i++)); do
  printf '  %s (%s)  %s\n' "${names[$i]}" "${node_devices[$i]}" \
    "$(grep "^round $((ROUNDS - 1)):" "$OUT/${names[$i]}.out" | awk '{print $4}')"
done
echo
"$BIN" verify "$OUT/a"
