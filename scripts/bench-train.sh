#!/usr/bin/env bash
# Training throughput of the tiny model on the CPU, candle beside the PyTorch
# reference (shared/reference/chargpt_diloco.py speed), back to back on the
# same machine: 2 layers, d_model 128, 4 heads, context 64, vocab 96, batch 32x64,
# AdamW, on the same text (the bundled corpus).
# Needs a Python with torch: set PYTHON (default $REF_DIR/venv/bin/python, see
# shared/reference/README.md) and REF (default ../shared/reference).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REF_DIR=${REF_DIR:-$HOME/.cache/p2ptrain-ref}
PYTHON=${PYTHON:-$REF_DIR/venv/bin/python}
REF=${REF:-../shared/reference}
STEPS=${STEPS:-100}
cargo build --release -q -p p2ptrain-trainer --example train_speed
candle=$(target/release/examples/train_speed --vocab 96 --batch 32 --steps "$STEPS")
echo "$candle"
torch=$(OMP_WAIT_POLICY=PASSIVE "$PYTHON" "$REF/chargpt_diloco.py" speed --data trainer/corpus/shakespeare.txt --steps "$STEPS" 2>/dev/null | tail -1)
echo "pytorch $torch"
c=$(grep -o '[0-9]* tok/s' <<<"$candle" | head -1 | tr -dc 0-9)
t=$(grep -o '[0-9,]* tok/s' <<<"$torch" | head -1 | tr -dc 0-9)
awk -v c="$c" -v t="$t" 'BEGIN { printf "candle %d tok/s, PyTorch %d tok/s: ratio %.2fx (target >= 1.0x)\n", c, t, c/t }'
