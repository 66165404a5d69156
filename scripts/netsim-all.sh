#!/usr/bin/env bash
# Runs every shipped netsim scenario at full size (release build), plus the
# byzantine scenario without its adversaries for comparison, and prints one
# table. Results go to netsim-out/<scenario>/.
#
#   bash scripts/netsim-all.sh            # all scenarios
#   bash scripts/netsim-all.sh wan churn  # some
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -q -p p2ptrain-netsim
bin=target/release/netsim
scenarios=("$@")
if [ ${#scenarios[@]} -eq 0 ]; then
    scenarios=(quickstart wan stragglers churn partition-heal byzantine equivocation scale-1000)
fi

runs=()
for name in "${scenarios[@]}"; do
    echo "running $name ..." >&2
    "$bin" run "netsim/scenarios/$name.toml" --out "netsim-out/$name" --quiet > /dev/null
    runs+=("$name")
    if [ "$name" = byzantine ]; then
        echo "running byzantine without adversaries ..." >&2
        "$bin" run netsim/scenarios/byzantine.toml --without-adversaries \
            --out netsim-out/byzantine-clean --quiet > /dev/null
        runs+=(byzantine-clean)
    fi
done

python3 - "${runs[@]}" <<'PY'
import json, sys
rows = [("scenario", "peers", "rounds", "agree", "honest rej", "rejected", "utilization",
         "MB/peer/round", "final loss", "baseline", "virtual s", "wall s")]
summaries = {}
for name in sys.argv[1:]:
    s = json.load(open(f"netsim-out/{name}/summary.json"))
    summaries[name] = s
    loss = lambda v: "-" if v is None else f"{v:.4f}"
    rows.append((name, s["peers"], s["rounds_completed"], s["honest_replicas_agree"],
                 s["honest_rejected"], sum(s["rejected"].values()),
                 f'{s["compute_utilization"]:.3f}',
                 f'{s["bytes_sent_per_peer_per_round"] / 1e6:.2f}',
                 loss(s["final_val_loss"]), loss(s["baseline_val_loss"]),
                 f'{s["virtual_seconds"]:.0f}', f'{s["wall_seconds"]:.1f}'))
widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
for r in rows:
    print("  ".join(str(v).rjust(w) for v, w in zip(r, widths)))
if "byzantine" in summaries and "byzantine-clean" in summaries:
    a = summaries["byzantine"]["final_val_loss"]
    b = summaries["byzantine-clean"]["final_val_loss"]
    adv = summaries["byzantine"]["adversarial"]
    print(f"\nbyzantine: final loss {a:.4f} vs {b:.4f} without adversaries ({100 * (a / b - 1):+.2f}%); "
          f"malicious contributions sent {adv['sent']}, rejected {adv['rejected']}, "
          f"applied within bounds {adv['applied']}; rejected by reason {summaries['byzantine']['rejected']}")
if "equivocation" in summaries and "byzantine-clean" in summaries:
    s = summaries["equivocation"]
    b = summaries["byzantine-clean"]["final_val_loss"]
    a = s["final_val_loss"]
    print(f"equivocation: final loss {a:.4f} vs {b:.4f} without adversaries ({100 * (a / b - 1):+.2f}%); "
          f"keys ignored {s['banned']} (honest: {s['honest_banned']}); forks resolved {s['forks_resolved']}; "
          f"rejected by reason {s['rejected']}")
ok = all(s["honest_replicas_agree"] and s["honest_rejected"] == 0 and s["honest_banned"] == 0
         for s in summaries.values())
print("\nevery scenario: honest replicas agree, no honest contribution rejected, no honest peer ignored:", ok)
sys.exit(0 if ok else 1)
PY
