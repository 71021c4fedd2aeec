"""The Triton kernels under the Triton interpreter, on CPU: run by test_triton_interpreted.py in a subprocess.

TRITON_INTERPRET=1 must be set before triton is imported and then holds for the whole process, so
these cases run in their own process (the pytest process keeps compiled kernels for GPU tests and
its environment untouched). Prints one JSON object: case name -> {quantity: relative error
||out - ref|| / ||ref|| against a float64 reference}. The thresholds live in the test file.

    TRITON_INTERPRET=1 PYTHONPATH=. python tests/kernels/interpreted_cases.py [case ...]
"""

from __future__ import annotations

import json
import sys
import time

import torch

from scratchlm.kernels import attention_with_lse, linear_cross_entropy, rms_norm, swiglu, use_backend
from scratchlm.kernels.flash_ref import naive_attention

F64 = torch.float64
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# name -> (B, H, K, T, S, Dh, causal, dtype, layout). "bthd": q/k/v are (B, T, H, Dh) tensors viewed as
# (B, H, T, Dh), as the model passes them (strided, read in place).
ATTENTION = {
    "fp32 causal T=37 (partial tiles)": (2, 2, 2, 37, 37, 16, True, "fp32", "bhtd"),
    "fp32 non-causal T=20 S=45 GQA 4/2": (1, 4, 2, 20, 45, 32, False, "fp32", "bhtd"),
    "fp32 causal MQA 4/1 Dh=24": (1, 4, 1, 33, 33, 24, True, "fp32", "bhtd"),
    "fp32 causal strided (B,T,H,Dh) view GQA": (1, 4, 2, 29, 29, 16, True, "fp32", "bthd"),
    "fp32 causal Dh=128": (1, 1, 1, 18, 18, 128, True, "fp32", "bhtd"),
    "bf16 causal T=37": (1, 2, 1, 37, 37, 16, True, "bf16", "bhtd"),
    "fp16 non-causal T=30": (1, 2, 2, 30, 30, 32, False, "fp16", "bhtd"),
}


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.to(F64) - ref).norm() / ref.norm()).item()


def _heads(B, heads, T, Dh, layout, dtype):
    x = torch.randn(B, heads, T, Dh, dtype=F64)
    if layout == "bthd":
        x = x.transpose(1, 2).contiguous().transpose(1, 2)  # (B, T, H, Dh) memory, (B, H, T, Dh) view
    return x


def attention_case(B, H, K, T, S, Dh, causal, dtype, layout) -> dict:
    torch.manual_seed(0)
    q, k, v = _heads(B, H, T, Dh, layout, F64), _heads(B, K, S, Dh, layout, F64), _heads(B, K, S, Dh, layout, F64)
    do = torch.randn(B, H, T, Dh, dtype=F64)
    dt = DTYPES[dtype]
    # Low-precision inputs: the reference sees the same rounded inputs, so only the kernel's error is measured.
    q, k, v = q.to(dt).to(F64), k.to(dt).to(F64), v.to(dt).to(F64)
    leaves = [t.to(dt).requires_grad_() for t in (q, k, v)]
    if layout == "bthd":
        assert not leaves[0].is_contiguous() and leaves[0].stride(-1) == 1
    o, lse = attention_with_lse(*leaves, causal=causal, backend="triton")
    grads = torch.autograd.grad(o, leaves, do.to(dt))
    ref_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    o_ref = naive_attention(*ref_leaves, causal=causal)
    ref_grads = torch.autograd.grad(o_ref, ref_leaves, do)
    G = H // K
    scores = (q.view(B, K, G, T, Dh) @ k.unsqueeze(2).transpose(-1, -2)) / Dh**0.5
    if causal:
        scores = scores.masked_fill(torch.ones(T, S, dtype=torch.bool).triu(1), float("-inf"))
    lse_ref = torch.logsumexp(scores, -1).reshape(B, H, T)
    out = {"out": rel(o, o_ref), "lse": rel(lse, lse_ref)}
    out.update({f"d{n}": rel(g, r) for n, g, r in zip("qkv", grads, ref_grads)})
    return out


def rmsnorm_case(dtype: str) -> dict:
    torch.manual_seed(1)
    x, w, b = torch.randn(3, 5, 40, dtype=F64), torch.randn(40, dtype=F64), torch.randn(40, dtype=F64)
    dy = torch.randn(3, 5, 40, dtype=F64)
    dt = DTYPES[dtype]
    x = x.to(dt).to(F64)
    leaves = [x.to(dt).requires_grad_(), w.float().requires_grad_(), b.float().requires_grad_()]
    y = rms_norm(*leaves, eps=1e-5, backend="triton")
    grads = torch.autograd.grad(y, leaves, dy.to(dt))
    ref_leaves = [t.clone().requires_grad_() for t in (x, w.float().to(F64), b.float().to(F64))]
    xr, wr, br = ref_leaves
    y_ref = xr * torch.rsqrt(xr.pow(2).mean(-1, keepdim=True) + 1e-5) * wr + br
    ref_grads = torch.autograd.grad(y_ref, ref_leaves, dy)
    return {"out": rel(y, y_ref), **{f"d{n}": rel(g, r) for n, g, r in zip(("x", "w", "b"), grads, ref_grads)}}


def swiglu_case(dtype: str) -> dict:
    torch.manual_seed(2)
    dt = DTYPES[dtype]
    g, u, dh = (torch.randn(7, 33, dtype=F64).to(dt).to(F64) for _ in range(3))
    leaves = [g.to(dt).requires_grad_(), u.to(dt).requires_grad_()]
    h = swiglu(*leaves, backend="triton")
    grads = torch.autograd.grad(h, leaves, dh.to(dt))
    ref_leaves = [g.clone().requires_grad_(), u.clone().requires_grad_()]
    h_ref = torch.nn.functional.silu(ref_leaves[0]) * ref_leaves[1]
    ref_grads = torch.autograd.grad(h_ref, ref_leaves, dh)
    return {"out": rel(h, h_ref), "dgate": rel(grads[0], ref_grads[0]), "dup": rel(grads[1], ref_grads[1])}


def linear_ce_case() -> dict:
    torch.manual_seed(3)
    h, W = torch.randn(2, 9, 16, dtype=F64), torch.randn(300, 16, dtype=F64) * 0.3
    targets = torch.randint(0, 300, (2, 9))
    targets[0, 3] = targets[1, 0] = -100  # ignored positions
    leaves = [h.float().requires_grad_(), W.float().requires_grad_()]
    loss = linear_cross_entropy(*leaves, targets, chunk=4, backend="triton")  # 18 rows: 5 chunks, the last partial
    grads = torch.autograd.grad(loss * 1.7, leaves)
    ref_leaves = [h.float().to(F64).requires_grad_(), W.float().to(F64).requires_grad_()]
    loss_ref = torch.nn.functional.cross_entropy(
        (ref_leaves[0] @ ref_leaves[1].T).reshape(-1, 300), targets.reshape(-1)
    )
    ref_grads = torch.autograd.grad(loss_ref * 1.7, ref_leaves)
    return {"loss": rel(loss, loss_ref), "dh": rel(grads[0], ref_grads[0]), "dW": rel(grads[1], ref_grads[1])}


def model_case() -> dict:
    """A tiny model with every kernel switch on (Triton attention, fused RMSNorm / SwiGLU / loss, all
    forced to Triton) against the same weights unfused in float64: loss and every parameter gradient."""
    from scratchlm.model import ModelConfig, TransformerLM

    base = dict(vocab_size=300, context_length=24, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1)
    torch.manual_seed(4)
    fused = TransformerLM(
        ModelConfig(**base, attn_backend="triton", norm="rmsnorm_fused", fused_swiglu=True, fused_loss=True)
    )
    plain = TransformerLM(ModelConfig(**base)).to(F64)
    plain.load_state_dict({k: v.to(F64) for k, v in fused.state_dict().items()})
    ids = torch.randint(0, 300, (2, 21))
    with use_backend("triton"):
        loss = loss_of(fused, ids[:, :-1], ids[:, 1:])
    loss.backward()
    loss_ref = loss_of(plain, ids[:, :-1], ids[:, 1:])
    loss_ref.backward()
    out = {"loss": rel(loss.detach(), loss_ref.detach())}
    ref_params = dict(plain.named_parameters())
    out["grads (worst parameter)"] = max(rel(p.grad, ref_params[n].grad) for n, p in fused.named_parameters())
    return out


def refusals_case() -> dict:
    """Inputs the kernels do not take are a ScratchLMError naming the reason (1.0 = not refused as expected)."""
    from scratchlm.errors import ScratchLMError
    from scratchlm.kernels import attention

    def refused(match: str, *tensors) -> float:
        try:
            attention(*tensors, causal=True, backend="triton")
        except ScratchLMError as e:
            return 0.0 if match in str(e) else 1.0
        return 1.0

    big, f64 = torch.randn(1, 1, 8, 160), torch.randn(1, 1, 8, 16, dtype=F64)
    return {"head dim 160": refused("head dim 160", big, big, big), "float64": refused("float64", f64, f64, f64)}


def cases() -> dict:
    table = {f"attention {name}": (attention_case, args) for name, args in ATTENTION.items()}
    table.update({f"rms_norm {d}": (rmsnorm_case, (d,)) for d in ("fp32", "bf16")})
    table.update({f"swiglu {d}": (swiglu_case, (d,)) for d in ("fp32", "bf16")})
    table["linear_cross_entropy fp32"] = (linear_ce_case, ())
    table["model with every kernel switch fp32"] = (model_case, ())
    table["bad input refused (fp32 kernels)"] = (refusals_case, ())
    return table


def main(names: list[str]) -> None:
    from scratchlm.kernels import INTERPRET

    assert INTERPRET, "set TRITON_INTERPRET=1 (before triton is imported: in the environment) to run these cases"
    torch.set_num_threads(1)
    table = cases()
    results = {}
    for name in names or table:
        fn, args = table[name]
        t = time.perf_counter()
        results[name] = fn(*args)
        results[name]["seconds"] = time.perf_counter() - t
    json.dump(results, sys.stdout)


def loss_of(m, x, y):
    """The training loss of model `m` (fused head + loss when its config says so), as `train_step` computes it."""
    from scratchlm.train.losses import FusedLMLoss, LMLoss

    fn = FusedLMLoss() if m.config.fused_loss else LMLoss()
    return fn(m(x, output=fn.needs), y, m)[0]


if __name__ == "__main__":
    main(sys.argv[1:])
