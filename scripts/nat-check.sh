#!/usr/bin/env bash
# Three real p2pnode processes, two of them behind NATs, in Linux network
# namespaces on this machine:
#
#   pub (45.0.0.1) ──┬── the "internet" (a bridge) ──┬── nat-a (45.0.0.2) ── a (192.168.1.2)
#                    │                               └── nat-b (45.0.0.3) ── b (192.168.2.2)
#
# nat-a and nat-b masquerade their LAN behind their one public address and
# drop whatever arrives unasked (nftables), so `a` and `b` can dial out but
# nothing can dial in. `pub` starts a run; `a` and `b` bootstrap from it over
# QUIC (or TCP, below). What has to happen: AutoNAT finds `a` and `b` private, each listens
# through pub's relay, they meet through it, and DCUtR turns that into a
# direct connection; meanwhile every round is applied alike by all three.
#
# The script checks that all three ended every round on the same
# checkpoint, that `a` and `b` each reported a direct connection after hole
# punching (and that the relayed connection it replaces was closed), and
# that `p2pnode verify` passes on every data directory; it prints what each
# node said about reachability, dials and hole punching.
#
# Needs root (network namespaces), iproute2 and nftables (`apt-get install
# nftables`). `ROUNDS` (default 60, about a minute: AutoNAT's first probe
# waits 15 s and Kademlia's refresh comes every 30 s) sets the rounds;
# TRANSPORT (default quic; or tcp) what `a` and `b` listen and punch on;
# NAT (default cone: one public port per host port, as most home routers)
# or symmetric (a new random port for every destination, as carrier-grade
# NATs and some firewalls do: hole punching cannot work, so the check is
# then that the rounds still agree, through pub, and no direct connection
# is claimed);
# P2PNODE the binary (default target/release/p2pnode, built if missing).
# Logs land in nat-out/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROUNDS=${ROUNDS:-60}
TRANSPORT=${TRANSPORT:-quic}
NAT=${NAT:-cone}
case "$NAT" in
  cone) mapping= ;;
  symmetric) mapping=random ;;
  *) echo "NAT is cone or symmetric, not $NAT" >&2; exit 1 ;;
esac
case "$TRANSPORT" in
  # The hidden nodes reach the relay over the transport they punch on:
  # an address observed on one transport says nothing of another.
  quic) hidden=(--listen /ip4/0.0.0.0/udp/0/quic-v1) relay=udp/4001/quic-v1 ;;
  tcp) hidden=(--listen /ip4/0.0.0.0/tcp/0) relay=tcp/4001 ;;
  *) echo "TRANSPORT is quic or tcp, not $TRANSPORT" >&2; exit 1 ;;
esac
P2PNODE=${P2PNODE:-target/release/p2pnode}
OUT=${OUT:-nat-out}
NS=p2pt

for tool in ip nft; do
  command -v "$tool" >/dev/null || { echo "needs $tool (iproute2, nftables)" >&2; exit 1; }
done
if [ "$(id -u)" != 0 ]; then
  echo "needs root: network namespaces and NAT rules" >&2
  exit 1
fi
if [ ! -x "$P2PNODE" ]; then
  cargo build --release -q -p p2ptrain-node --bin p2pnode
fi
P2PNODE=$(realpath "$P2PNODE")

names=(net pub nat-a a nat-b b)
cleanup() {
  for pid in $(jobs -p); do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for n in "${names[@]}"; do ip netns del "$NS-$n" 2>/dev/null || true; done
}
trap cleanup EXIT
for n in "${names[@]}"; do
  ip netns del "$NS-$n" 2>/dev/null || true
  ip netns add "$NS-$n"
  ip -n "$NS-$n" link set lo up
done
inside() { local n=$1; shift; ip netns exec "$NS-$n" "$@"; }

# The internet: a bridge in its own namespace, one port per public host.
inside net ip link add br0 type bridge
inside net ip link set br0 up
wan_port() { # namespace address
  ip link add "$1-wan" netns "$NS-$1" type veth peer name "$1" netns "$NS-net"
  inside net ip link set "$1" master br0 up
  inside "$1" ip addr add "$2/24" dev "$1-wan"
  inside "$1" ip link set "$1-wan" up
}
wan_port pub 45.0.0.1
wan_port nat-a 45.0.0.2
wan_port nat-b 45.0.0.3

# Each NAT: a LAN with one host, forwarding, and masquerade out of its WAN.
lan() { # nat host lan-prefix
  ip link add "$2-lan" netns "$NS-$2" type veth peer name lan netns "$NS-$1"
  inside "$1" ip addr add "$3.1/24" dev lan
  inside "$1" ip link set lan up
  inside "$2" ip addr add "$3.2/24" dev "$2-lan"
  inside "$2" ip link set "$2-lan" up
  inside "$2" ip route add default via "$3.1"
  inside "$1" sysctl -qw net.ipv4.ip_forward=1
  inside "$1" nft -f - <<EOF
table ip nat {
  chain postrouting {
    type nat hook postrouting priority srcnat;
    oifname "$1-wan" masquerade $mapping
  }
}
table ip filter {
  chain input {
    type filter hook input priority filter; policy drop;
    ct state established,related accept
    iifname { "lo", "lan" } accept
  }
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "lan" accept
  }
}
EOF
}
lan nat-a a 192.168.1
lan nat-b b 192.168.2

# Behind its NAT, `a` cannot be dialed from the internet; `pub` can.
if inside pub timeout 2 bash -c 'exec 3<>/dev/tcp/45.0.0.2/9' 2>/dev/null; then
  echo "nat-a let an inbound connection through: the NAT is not set up" >&2
  exit 1
fi

rm -rf "$OUT" && mkdir -p "$OUT"
OUT=$(realpath "$OUT")
"$P2PNODE" init --dir "$OUT/pub-data" --inner-steps 2 --batch-size 2 \
  --min-contributors 3 --deadline-ms 20000 --commit-window-ms 500 >/dev/null
for n in a b; do cp -r "$OUT/pub-data" "$OUT/$n-data"; done

start() { # node rounds extra-args...
  local n=$1 rounds=$2; shift 2
  # `ip netns exec` becomes the node, so $! is the node's own pid.
  ip netns exec "$NS-$n" "$P2PNODE" join --dir "$OUT/$n-data" --key "$OUT/$n.key" --no-mdns \
    --rounds "$rounds" --log-format json "$@" >"$OUT/$n.jsonl" 2>"$OUT/$n.log" &
}
# pub runs until the other two are done: it is the one peer both reach.
start pub 0 --listen /ip4/0.0.0.0/tcp/4001 --listen /ip4/0.0.0.0/udp/4001/quic-v1
pub_pid=$!
# pub's first `listening` event names its peer id (read as it is written).
peer=$(timeout 30 tail -n +1 -f "$OUT/pub.jsonl" | grep -m1 -o '"peer_id":"[^"]*"' | cut -d'"' -f4 || true)
if [ -z "$peer" ]; then
  echo "pub did not start listening within 30 s (see $OUT/pub.log)" >&2
  exit 1
fi
start a "$ROUNDS" "${hidden[@]}" --bootstrap "/ip4/45.0.0.1/$relay/p2p/$peer"
a_pid=$!
start b "$ROUNDS" "${hidden[@]}" --bootstrap "/ip4/45.0.0.1/$relay/p2p/$peer"
b_pid=$!

status=0
finish() { # name pid
  local code=0
  wait "$2" || code=$?
  if [ "$code" != 0 ]; then
    echo "$1 exited with status $code (see $OUT/$1.log)" >&2
    status=1
  fi
}
finish a "$a_pid"
finish b "$b_pid"
kill -TERM "$pub_pid"
finish pub "$pub_pid"
trap - EXIT
cleanup

python3 - "$OUT" "$ROUNDS" "$NAT" <<'PY' || status=1
import json, sys
out, rounds, nat = sys.argv[1], int(sys.argv[2]), sys.argv[3]
finals = {}
for n in ["pub", "a", "b"]:
    events = [json.loads(l) for l in open(f"{out}/{n}.jsonl") if l.startswith("{")]
    said = {}
    for e in events:
        kind = e["event"]
        if kind in ("reachability", "hole_punch", "dial_failed", "peer_connected", "peer_left"):
            key = kind + (f" public={e['public']}" if kind == "reachability" else "")
            key += f" direct={e['direct']}" if kind == "hole_punch" else ""
            said[key] = said.get(key, 0) + 1
    print(f"== {n}: " + ", ".join(f"{k} x{v}" for k, v in sorted(said.items())))
    finals[n] = {e["round"]: e["checkpoint"] for e in events if e["event"] == "finalized"}
agree = True
for r in range(rounds):
    seen = [finals[n].get(r) for n in ["pub", "a", "b"]]
    same = seen[0] is not None and len(set(seen)) == 1
    agree &= same
    print(f"round {r}: " + " ".join((c or "none")[:16] for c in seen) + ("" if same else "  <- differ"))
print("every round agreed" if agree else "the nodes did not agree on every round")
punched = [n for n in ["a", "b"] if any(
    e["event"] == "hole_punch" and e["direct"]
    for e in map(json.loads, filter(lambda l: l.startswith("{"), open(f"{out}/{n}.jsonl"))))]
print(f"direct after hole punching: {' '.join(punched) or 'none'} (of a b)")
# The direct connection replaces the relayed one: one side closes it (the
# other may see it closed first).
closed = sum(e.get("relayed_closed", 0) for n in ["a", "b"]
             for e in map(json.loads, filter(lambda l: l.startswith("{"), open(f"{out}/{n}.jsonl")))
             if e["event"] == "hole_punch")
print(f"relayed connections closed for direct ones: {closed}")
# Behind symmetric NATs the peer's port cannot be predicted: a and b stay
# relayed, and their rounds go through pub.
expected = 2 if nat == "cone" else 0
sys.exit(0 if agree and len(punched) == expected and (closed > 0) == (expected > 0) else 1)
PY
for n in pub a b; do
  "$P2PNODE" verify "$OUT/$n-data" || status=1
done
echo "logs in $OUT"
exit "$status"
