#!/usr/bin/env python3
"""Checks that Hugging Face transformers loads a p2ptrain export and computes
the same logits as candle, then records transformers' logits as the fixture
that the Rust test `trainer/tests/hf_logits.rs` compares against.

Usage:
  cargo run --release -p p2ptrain-trainer --example hf_fixture      # writes the folder
  python3 scripts/check_hf_export.py [DIR]                           # needs torch, transformers
DIR defaults to trainer/tests/fixtures/hf-gpt2-micro. Writes DIR/logits.json.
"""
import json
import sys

import torch
import transformers
from transformers import GPT2LMHeadModel

TEXT = b"To be, or not to be, that is the"  # 32 bytes = the model's context


def main():
    folder = sys.argv[1] if len(sys.argv) > 1 else "trainer/tests/fixtures/hf-gpt2-micro"
    model = GPT2LMHeadModel.from_pretrained(folder)
    model.eval()
    ids = list(TEXT)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    # The head must be tied to the token embedding, as p2ptrain's is.
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    out = {
        "input_ids": ids,
        "logits": [[round(float(v), 7) for v in row] for row in logits],
        "produced_by": f"transformers {transformers.__version__}, torch {torch.__version__}",
    }
    with open(f"{folder}/logits.json", "w") as f:
        json.dump(out, f)
    print(f"{folder}: transformers loaded it; logits {tuple(logits.shape)} written to logits.json "
          f"(mean {logits.mean():.5f}, std {logits.std():.5f})")


if __name__ == "__main__":
    main()
