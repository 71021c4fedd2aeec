"""Training-step speed of the scratchlm Transformer against the same architecture built from stock
torch.nn modules and F.scaled_dot_product_attention; and tokens/s of each sequence mixer as T grows.

    python -m benchmarks.bench_model              # full run (~10 minutes on 2 CPU cores)
    python -m benchmarks.bench_model --quick      # smoke test (< 1 minute)

Table 1: forward + backward (+ loss) tokens/s, eager and torch.compile, same config, same weights
(checked: logits equal before timing), same inputs; ratio scratchlm / stock (target >= 1.0).
Table 2: forward + backward tokens/s per mixer at T = 256, 1024, 4096 with B*T fixed, to show where
linear attention, sliding window and the SSM overtake full attention.
Results: benchmarks/results/model_speed.{md,json}.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import RESULTS, markdown_table, save_report
from scratchlm.model import ModelConfig, TransformerLM
from scratchlm.train.losses import LMLoss

# tinystories-17m's shape, narrowed to fit a CPU benchmark: RoPE, RMSNorm, SwiGLU, tied, pre-norm.
BENCH = dict(vocab_size=10_000, context_length=256, d_model=256, n_layers=4, n_heads=8, n_kv_heads=4)


# ------------------------------------------------------------------------------- stock reference
class StockRoPE(nn.Module):
    def __init__(self, dim: int, max_len: int, theta: float):
        super().__init__()
        inv = 1.0 / theta ** (torch.arange(0, dim, 2).float() / dim)
        ang = torch.outer(torch.arange(max_len).float(), inv)
        self.register_buffer("cos", torch.cat([ang.cos(), ang.cos()], -1), persistent=False)
        self.register_buffer("sin", torch.cat([ang.sin(), ang.sin()], -1), persistent=False)

    def forward(self, x):  # (B, H, T, Dh), rotate-half layout
        T, h = x.shape[2], x.shape[-1] // 2
        rot = torch.cat([-x[..., h:], x[..., :h]], -1)
        return x * self.cos[:T] + rot * self.sin[:T]


class StockBlock(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.h, self.k, self.dh = c.n_heads, c.kv_heads, c.dh
        self.n1, self.n2 = nn.RMSNorm(c.d_model, eps=c.norm_eps), nn.RMSNorm(c.d_model, eps=c.norm_eps)
        self.q = nn.Linear(c.d_model, c.n_heads * c.dh, bias=False)
        self.kp = nn.Linear(c.d_model, c.kv_heads * c.dh, bias=False)
        self.v = nn.Linear(c.d_model, c.kv_heads * c.dh, bias=False)
        self.o = nn.Linear(c.n_heads * c.dh, c.d_model, bias=False)
        self.gate = nn.Linear(c.d_model, c.ff_dim, bias=False)
        self.up = nn.Linear(c.d_model, c.ff_dim, bias=False)
        self.down = nn.Linear(c.ff_dim, c.d_model, bias=False)
        self.rope = StockRoPE(c.dh, c.context_length, c.rope_theta)

    def forward(self, x):
        B, T, _ = x.shape
        h = self.n1(x)
        q = self.rope(self.q(h).view(B, T, self.h, self.dh).transpose(1, 2))
        k = self.rope(self.kp(h).view(B, T, self.k, self.dh).transpose(1, 2))
        v = self.v(h).view(B, T, self.k, self.dh).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.k != self.h)
        x = x + self.o(y.transpose(1, 2).reshape(B, T, -1))
        h = self.n2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class StockLM(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.emb = nn.Embedding(c.vocab_size, c.d_model)
        self.blocks = nn.ModuleList(StockBlock(c) for _ in range(c.n_layers))
        self.norm = nn.RMSNorm(c.d_model, eps=c.norm_eps)
        self.head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        x = self.emb(ids)
        for b in self.blocks:
            x = b(x)
        return self.head(self.norm(x))


def copy_weights(ours: TransformerLM, stock: StockLM) -> None:
    with torch.no_grad():
        stock.emb.weight.copy_(ours.embed.weight)
        stock.norm.weight.copy_(ours.norm.weight)
        for sb, ob in zip(stock.blocks, ours.blocks.values(), strict=True):
            m, f = ob.mixer, ob.mlp
            pairs = [(sb.q, m.q_proj), (sb.kp, m.k_proj), (sb.v, m.v_proj), (sb.o, m.o_proj)]
            pairs += [(sb.gate, f.gate), (sb.up, f.up), (sb.down, f.down)]
            for s, o in pairs:
                s.weight.copy_(o.weight)
            sb.n1.weight.copy_(ob.attn.norm_in.weight)
            sb.n2.weight.copy_(ob.ffn.norm_in.weight)


# ------------------------------------------------------------------------------- timing
def one_step(model: nn.Module, loss_fn, ids: torch.Tensor) -> float:
    """Seconds of one forward + loss + backward."""
    t = time.perf_counter()
    loss = loss_fn(model(ids[:, :-1]), ids[:, 1:])
    loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t


def step_time(model: nn.Module, loss_fn, ids: torch.Tensor, steps: int, warmup: int) -> float:
    """Median seconds of forward + loss + backward."""
    times = [one_step(model, loss_fn, ids) for _ in range(warmup + steps)]
    return statistics.median(times[warmup:])


def interleaved_step_times(runs: dict, ids: torch.Tensor, steps: int, warmup: int) -> dict[str, float]:
    """Median step time of each (model, loss_fn) in `runs`, alternating step by step so that
    machine noise and drift hit every model alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(warmup + steps):
        for name, (model, loss_fn) in runs.items():
            t = one_step(model, loss_fn, ids)
            if i >= warmup:
                times[name].append(t)
    return {name: statistics.median(ts) for name, ts in times.items()}


# The loss the trainer uses (`scratchlm.train.losses.build_loss`: torch's fused cross-entropy with ops="torch").
_LM_LOSS = LMLoss()


def ours_loss(logits, targets):
    return _LM_LOSS(logits, targets)[0]


def stock_loss(logits, targets):
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def bench_vs_stock(batch: int, seq: int, steps: int, warmup: int, compile_too: bool) -> list[dict]:
    cfg = ModelConfig(**{**BENCH, "context_length": seq})
    torch.manual_seed(0)
    ours = TransformerLM(cfg)
    stock = StockLM(cfg)
    copy_weights(ours, stock)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq + 1))
    with torch.no_grad():
        diff = (ours(ids[:, :-1]) - stock(ids[:, :-1])).abs().max().item()
    assert diff < 1e-4, f"stock model is not the same architecture: max logit diff {diff}"
    rows = []
    modes = ["eager", "compile"] if compile_too else ["eager"]
    for mode in modes:
        compiled = mode == "compile"
        runs = {
            "scratchlm": (torch.compile(ours) if compiled else ours, ours_loss),
            "stock torch.nn": (torch.compile(stock) if compiled else stock, stock_loss),
        }
        result = interleaved_step_times(runs, ids, steps, warmup + (2 if compiled else 0))
        tokens = batch * seq
        for name, t in result.items():
            rows.append(
                dict(
                    mode=mode,
                    impl=name,
                    params=ours.num_params,
                    batch=batch,
                    seq=seq,
                    median_step_s=t,
                    tokens_per_s=tokens / t,
                    ratio=result["stock torch.nn"] / t,
                    max_logit_diff=diff,
                )
            )
    return rows


MIXER_VARIANTS = {
    "full softmax (L)": dict(),
    "sliding window 128 (S)": dict(layer_pattern="S", window=128),
    "linear attention": dict(attention="linear"),
    "MLA (latent 64)": dict(attention="mla"),
    "S4D state space (M)": dict(layer_pattern="M"),
}


def bench_mixers(lengths: list[int], tokens: int, steps: int, warmup: int) -> list[dict]:
    rows = []
    for T in lengths:
        batch = max(1, tokens // T)
        for name, kw in MIXER_VARIANTS.items():
            cfg = ModelConfig(**{**BENCH, "n_layers": 2, "context_length": T, **kw})
            torch.manual_seed(0)
            try:
                model = TransformerLM(cfg)
            except Exception as e:  # a mixer not available in this build: report, don't hide
                rows.append(dict(variant=name, seq=T, batch=batch, tokens_per_s=None, note=f"{type(e).__name__}: {e}"))
                continue
            ids = torch.randint(0, cfg.vocab_size, (batch, T + 1))
            t = step_time(model, ours_loss, ids, steps, warmup)
            rows.append(dict(variant=name, seq=T, batch=batch, tokens_per_s=batch * T / t, note=""))
            print(f"  {name:28s} T={T:5d} {batch * T / t:9.0f} tok/s", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny run for smoke testing")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--out", type=str, default=str(RESULTS))
    args = ap.parse_args()
    steps, warmup = (2, 1) if args.quick else (args.steps, 3)
    t0 = time.time()
    print("scratchlm vs stock torch.nn ...", flush=True)
    speed = bench_vs_stock(4 if args.quick else 8, 128 if args.quick else 256, steps, warmup, not args.no_compile)
    print("mixers ...", flush=True)
    lengths = [64, 128] if args.quick else [256, 1024, 4096]
    mixers = bench_mixers(lengths, 512 if args.quick else 8192, steps if args.quick else 3, 1)

    info = dict(
        date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        python=platform.python_version(),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        cpu_count=os.cpu_count(),
        loadavg=os.getloadavg(),
    )
    md = ["# Model training-step speed: scratchlm vs stock torch.nn", ""]
    md.append(
        f"- {info['date']}, python {info['python']}, torch {info['torch']}, {info['threads']} threads, "
        f"load average at end {info['loadavg'][0]:.2f}; device CPU (no GPU measured)"
    )
    md.append("- rerun: `python -m benchmarks.bench_model` (from the repository root, venv active)")
    md.append(f"- config: {BENCH} (RoPE, RMSNorm, SwiGLU, GQA, tied), fp32; median of {steps} steps")
    md += ["", "## scratchlm vs the same architecture from stock modules (forward + loss + backward)", ""]
    md.append(
        markdown_table(
            ["mode", "implementation", "params", "batch x seq", "median step s", "tokens/s", "stock time / this time"],
            [
                [
                    r["mode"],
                    r["impl"],
                    r["params"],
                    f"{r['batch']}x{r['seq']}",
                    r["median_step_s"],
                    r["tokens_per_s"],
                    r["ratio"],
                ]
                for r in speed
            ],
        )
    )
    md.append(f"\nLogits of the two models on the same weights differ by at most {speed[0]['max_logit_diff']:.1e}.")
    md += ["", "## Sequence mixers: forward + backward tokens/s as T grows (2 layers, B*T fixed)", ""]
    variants = list(MIXER_VARIANTS)
    header = ["T", *variants]
    table = []
    for T in lengths:
        row = [T]
        for v in variants:
            r = next(r for r in mixers if r["variant"] == v and r["seq"] == T)
            row.append(f"{r['tokens_per_s']:.0f}" if r["tokens_per_s"] else "n/a")
        table.append(row)
    md.append(markdown_table(header, table))
    notes = [f"- {r['variant']}: {r['note']}" for r in mixers if r["note"]]
    if notes:
        md += ["", "Not measured:", *sorted(set(notes))]
    md.append(f"\nTotal benchmark time {time.time() - t0:.0f} s.")
    save_report(Path(args.out), "model_speed", "\n".join(md) + "\n", dict(info=info, speed=speed, mixers=mixers))


if __name__ == "__main__":
    main()
