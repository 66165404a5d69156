"""PyTorch eager reference for scripts/bench-gpu.sh: the same GPT-2 as
p2ptrain's trainer (pre-norm blocks, tanh GELU, tied embedding head, fp32
parameters), the same batch, AdamW with gradient clipping, timed per step.

    python3 scripts/bench_gpu_torch.py [--preset gpt2] [--batch 8] [--steps 10] [--tf32] [--sdpa]

Without --sdpa the attention is written out (scores, mask, softmax, values)
as the trainer's is; with it, PyTorch's fused scaled_dot_product_attention.
Prints one line: tokens/s at the median step time.
"""
import argparse
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {"tiny": (96, 64, 2, 4, 128), "small": (256, 256, 6, 6, 384), "gpt2": (50257, 1024, 12, 12, 768)}


class Block(nn.Module):
    def __init__(self, d, heads, sdpa):
        super().__init__()
        self.heads, self.sdpa = heads, sdpa
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.c_attn, self.attn_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.c_fc, self.mlp_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def attention(self, x, mask):
        b, t, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            scores = q @ k.transpose(-2, -1) * (1.0 / math.sqrt(d // self.heads)) + mask[:t, :t]
            y = scores.softmax(dim=-1) @ v
        return self.attn_proj(y.transpose(1, 2).reshape(b, t, d))

    def forward(self, x, mask):
        x = x + self.attention(self.ln_1(x), mask)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class Gpt(nn.Module):
    def __init__(self, vocab, context, layers, heads, d, sdpa):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(context, d)
        self.blocks = nn.ModuleList(Block(d, heads, sdpa) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        mask = torch.full((context, context), float("-inf")).triu(1)
        self.register_buffer("mask", mask)
        for name, p in self.named_parameters():  # GPT-2's initialization
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif "ln" in name:
                nn.init.ones_(p)
            else:
                nn.init.normal_(p, std=0.02)

    def forward(self, ids, targets):
        x = self.wte(ids) + self.wpe.weight[: ids.shape[1]]
        for block in self.blocks:
            x = block(x, self.mask)
        logits = self.ln_f(x) @ self.wte.weight.t()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="gpt2", choices=PRESETS)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--tf32", action="store_true")
    parser.add_argument("--sdpa", action="store_true")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    vocab, context, layers, heads, d = PRESETS[args.preset]
    torch.manual_seed(0)
    model = Gpt(vocab, context, layers, heads, d, args.sdpa).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=4e-4, betas=(0.9, 0.95), weight_decay=0.1)
    times = []
    for step in range(3 + args.steps):
        ids = torch.randint(0, vocab, (args.batch, context + 1), device="cuda")
        torch.cuda.synchronize()
        started = time.perf_counter()
        loss = model(ids[:, :-1], ids[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_value = loss.item()
        torch.cuda.synchronize()
        if step >= 3:
            times.append(time.perf_counter() - started)
    times.sort()
    median = times[len(times) // 2]
    tokens = args.batch * context
    attention = "sdpa" if args.sdpa else "written-out attention"
    precision = "tf32" if args.tf32 else "fp32"
    print(
        f"pytorch {torch.__version__} eager {args.preset} {precision} {attention} batch {args.batch}x{context}: "
        f"median {median * 1e3:.1f} ms/step -> {tokens / median:.0f} tok/s (loss {loss_value:.3f})"
    )


if __name__ == "__main__":
    main()
