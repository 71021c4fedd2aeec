"""Paged attention: the PyTorch reference against dense SDPA on the same keys/values scattered over shuffled
physical blocks; the Triton decode kernel (and cache-write kernel) against the reference under the Triton
interpreter, in a subprocess (this file run as a script); store_kv and gather_kv round trips; the dispatch.
Errors are max abs differences, printed (pytest -s) and held under a per-dtype tolerance.

    TRITON_INTERPRET=1 PYTHONPATH=. python tests/kernels/test_paged_attention.py    # the interpreter cases
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from scratchlm.errors import ScratchLMError
from scratchlm.kernels import use_backend
from scratchlm.kernels.paged_attention import (
    cpu_unsupported,
    gather_kv,
    paged_attention,
    paged_attention_cpu,
    paged_attention_reference,
    paged_attention_tiled,
    paged_attention_triton,
    store_kv,
)

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]
F64 = torch.float64
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Max abs error allowed against a float64 computation on the same (rounded) inputs: fp32 math; bf16 outputs
# are rounded to bf16 (2^-9 relative, outputs here are below ~3).
TOL = {"fp32": 1e-5, "bf16": 2e-2}
# Kernel vs reference: both accumulate in fp32, so they differ by summation order (and one bf16 rounding).
KERNEL_TOL = {"fp32": 1e-5, "bf16": 2e-2}


def lengths_for(bs: int) -> list[int]:
    return [1, bs, bs + 1, 5 * bs + 3]  # one token, one full block, one past it, many blocks with a partial one


def make_case(lengths, K, G, Dh, bs, dtype, window=0, seed=0, spare_blocks=3):
    """Keys/values of sequences of the given lengths, written with store_kv into a NaN-filled pool whose
    physical blocks are shuffled (and some never used), so a read of a slot outside a sequence shows up.
    With a window, the blocks wholly before it are released (-1 in the table), as the block manager does."""
    g = torch.Generator().manual_seed(seed)
    B, H = len(lengths), K * G
    dense_k = [torch.randn(L, K, Dh, generator=g).to(dtype) for L in lengths]
    dense_v = [torch.randn(L, K, Dh, generator=g).to(dtype) for L in lengths]
    nblocks = [math.ceil(L / bs) for L in lengths]
    total = sum(nblocks) + spare_blocks
    perm = torch.randperm(total, generator=g)
    k_cache = torch.full((total, bs, K, Dh), float("nan"), dtype=dtype)
    v_cache = torch.full_like(k_cache, float("nan"))
    tables = torch.full((B, max(nblocks) + 1), -1, dtype=torch.int32)  # one column of padding
    used, slots = 0, []
    for b, (L, n) in enumerate(zip(lengths, nblocks)):
        tables[b, :n] = perm[used : used + n].to(torch.int32)
        used += n
        t = torch.arange(L)
        slots.append(tables[b, t // bs].long() * bs + t % bs)
    store_kv(torch.cat(dense_k), torch.cat(dense_v), k_cache, v_cache, torch.cat(slots), backend="reference")
    if window:
        for b, L in enumerate(lengths):
            out = max(0, L - window) // bs  # blocks whose positions are all < L - window
            tables[b, :out] = -1
    q = torch.randn(B, H, Dh, generator=g).to(dtype)
    ctx = torch.tensor(lengths, dtype=torch.int32)
    return dict(q=q, k_cache=k_cache, v_cache=v_cache, block_tables=tables, context_lens=ctx), dense_k, dense_v


def dense_sdpa(q, dense_k, dense_v, window=0, scale=None):
    """Each sequence on its own, in float64, through torch's SDPA with GQA: (B, H, Dh)."""
    outs = []
    for b, (k, v) in enumerate(zip(dense_k, dense_v)):
        L = k.shape[0]
        mask = None
        if window:
            mask = (torch.arange(L) >= L - window)[None, None, None, :]  # (1, 1, 1, L)
        o = F.scaled_dot_product_attention(
            q[b].to(F64)[None, :, None, :],  # (1, H, 1, Dh)
            k.to(F64).transpose(0, 1)[None],  # (1, K, L, Dh)
            v.to(F64).transpose(0, 1)[None],
            attn_mask=mask,
            scale=scale,
            enable_gqa=True,
        )
        outs.append(o[0, :, 0])
    return torch.stack(outs)


def max_abs(a, b) -> float:
    return (a.to(F64) - b.to(F64)).abs().max().item()


# ---------------------------------------------------------------------- the reference
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("window", [0, 3, 11])
@pytest.mark.parametrize("G", [1, 2, 4])
@pytest.mark.parametrize("bs", [4, 16])
def test_reference_matches_dense_sdpa(bs, G, window, dtype):
    args, dk, dv = make_case(lengths_for(bs), K=2, G=G, Dh=16, bs=bs, dtype=DTYPES[dtype], window=window)
    out = paged_attention_reference(**args, window=window)
    assert out.shape == args["q"].shape and out.dtype == DTYPES[dtype]
    err = max_abs(out, dense_sdpa(args["q"], dk, dv, window))
    print(f"reference vs SDPA bs={bs} G={G} window={window} {dtype}: max abs err {err:.2e}")
    assert err <= TOL[dtype], err


def test_reference_scale_and_empty_rows():
    args, dk, dv = make_case([7, 1, 20], K=1, G=3, Dh=8, bs=4, dtype=torch.float32)
    err = max_abs(paged_attention_reference(**args, scale=0.3), dense_sdpa(args["q"], dk, dv, scale=0.3))
    assert err <= 1e-5
    args["context_lens"][1] = 0  # a padding row: zeros, and the other rows are unaffected
    out = paged_attention_reference(**args)
    assert torch.equal(out[1], torch.zeros_like(out[1])) and torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("window", [0, 3, 11])
@pytest.mark.parametrize("G", [1, 4])
@pytest.mark.parametrize("bs", [4, 16])
@pytest.mark.parametrize("tile_bytes", [1, 2**30])  # one block per tile (rows drop out, windows skip) / one tile
def test_tiled_matches_dense_sdpa(bs, G, window, dtype, tile_bytes):
    lengths = lengths_for(bs) + [2 * bs, 3]
    args, dk, dv = make_case(lengths, K=2, G=G, Dh=16, bs=bs, dtype=DTYPES[dtype], window=window)
    out = paged_attention_tiled(**args, window=window, tile_bytes=tile_bytes)
    assert out.shape == args["q"].shape and out.dtype == DTYPES[dtype]
    err = max_abs(out, dense_sdpa(args["q"], dk, dv, window))
    print(f"tiled vs SDPA bs={bs} G={G} window={window} {dtype} tile_bytes={tile_bytes}: max abs err {err:.2e}")
    assert err <= TOL[dtype], err


@pytest.mark.parametrize("window", [0, 3, 11])
@pytest.mark.parametrize("G", [1, 3, 4])
@pytest.mark.parametrize("bs", [1, 4, 16])
@pytest.mark.parametrize("Dh", [16, 20])
def test_compiled_cpu_kernel_matches_dense_sdpa(bs, G, window, Dh, monkeypatch):
    from scratchlm.kernels import paged_attention_tiled as tiled

    monkeypatch.setattr(tiled, "CPU_TOKENS_PER_THREAD", 0)  # small cases too: 2 threads share the rows
    if cpu_unsupported(*make_case([3], K=1, G=1, Dh=8, bs=4, dtype=torch.float32)[0].values()):
        pytest.skip("the compiled kernel scratchlm.kernels._paged_decode is not built here")
    lengths = lengths_for(bs) + [2 * bs, 3, 0]
    args, dk, dv = make_case(lengths[:-1] + [1], K=2, G=G, Dh=Dh, bs=bs, dtype=torch.float32, window=window)
    args["context_lens"][-1] = 0  # a padding row: zeros
    prev = torch.get_num_threads()
    torch.set_num_threads(2)  # rows shared by 2 threads here, by 1 below: the same result
    try:
        out = paged_attention(**args, window=window, backend="cpu")
    finally:
        torch.set_num_threads(prev)
    assert out.shape == args["q"].shape
    err = max_abs(out[:-1], dense_sdpa(args["q"][:-1], dk[:-1], dv[:-1], window))
    print(f"compiled vs SDPA bs={bs} G={G} Dh={Dh} window={window}: max abs err {err:.2e}")
    assert err <= 1e-5, err
    assert torch.equal(out[-1], torch.zeros_like(out[-1]))
    torch.set_num_threads(1)
    try:
        assert torch.equal(paged_attention(**args, window=window, backend="cpu"), out)
    finally:
        torch.set_num_threads(prev)


def test_compiled_cpu_kernel_refuses_what_it_cannot_take():
    args, _, _ = make_case([5, 9], K=2, G=2, Dh=8, bs=4, dtype=torch.bfloat16)
    with pytest.raises(ScratchLMError, match="backend 'cpu' cannot run here"):
        paged_attention(**args, backend="cpu")
    args, _, _ = make_case([5, 9], K=2, G=2, Dh=8, bs=4, dtype=torch.float32)
    if not cpu_unsupported(*args.values()):
        args["context_lens"][0] = 99  # past the tables: an error, not a read outside the pool
        with pytest.raises(ValueError, match="exceeds the block tables"):
            paged_attention(**args, backend="cpu")


def test_tiled_scale_and_empty_rows():
    args, dk, dv = make_case([7, 1, 20], K=1, G=3, Dh=8, bs=4, dtype=torch.float32)
    err = max_abs(paged_attention_tiled(**args, scale=0.3, tile_bytes=1), dense_sdpa(args["q"], dk, dv, scale=0.3))
    assert err <= 1e-5
    args["context_lens"][1] = 0  # a padding row: zeros, and the other rows are unaffected
    out = paged_attention_tiled(**args, tile_bytes=1)
    assert torch.equal(out[1], torch.zeros_like(out[1])) and torch.isfinite(out).all()
    assert max_abs(out[[0, 2]], paged_attention_reference(**args)[[0, 2]]) <= 1e-5


def test_dispatch():
    args, _, _ = make_case([5, 9], K=2, G=2, Dh=8, bs=4, dtype=torch.float32)
    want = paged_attention_reference(**args)
    auto = paged_attention_cpu if not cpu_unsupported(*args.values()) else paged_attention_tiled
    assert torch.equal(paged_attention(**args), auto(**args))  # auto on CPU: the compiled kernel where built
    assert torch.equal(paged_attention(**args, backend="reference"), want)
    from scratchlm.kernels import INTERPRET

    if not INTERPRET:  # the kernel needs CUDA (or the interpreter): asking for it is a clear error
        with pytest.raises(ScratchLMError, match="cannot run here"):
            paged_attention(**args, backend="triton")
        with use_backend("triton"), pytest.raises(ScratchLMError, match="cannot run here"):
            paged_attention(**args)
    with pytest.raises(ScratchLMError, match="unknown paged_attention backend"):
        paged_attention(**args, backend="flash")
    bad_heads = dict(args, q=torch.randn(2, 3, 8))  # 3 query heads over 2 kv heads
    with pytest.raises(ScratchLMError, match="multiple of kv heads"):
        paged_attention(**bad_heads)
    with pytest.raises(ScratchLMError, match="window"):
        paged_attention(**args, window=-1)
    with pytest.raises(ScratchLMError, match="block_tables"):
        paged_attention(**dict(args, block_tables=args["block_tables"][:1]))


# ---------------------------------------------------------------------- cache write and gather
@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.bfloat16])
def test_store_kv_round_trip_with_skipped_slots(cache_dtype):
    g = torch.Generator().manual_seed(3)
    num_blocks, bs, K, Dh, N = 6, 4, 2, 8, 15
    k_cache = torch.full((num_blocks, bs, K, Dh), float("nan"), dtype=cache_dtype)
    v_cache = torch.full_like(k_cache, float("nan"))
    slots = torch.randperm(num_blocks * bs, generator=g)[:N]
    slots[[2, 7, 11]] = -1  # padding tokens: not written
    k, v = torch.randn(N, K, Dh, generator=g), torch.randn(N, K, Dh, generator=g)
    store_kv(k, v, k_cache, v_cache, slots)
    keep = slots >= 0
    flat_k, flat_v = k_cache.view(-1, K, Dh), v_cache.view(-1, K, Dh)
    assert torch.equal(flat_k[slots[keep]], k[keep].to(cache_dtype))
    assert torch.equal(flat_v[slots[keep]], v[keep].to(cache_dtype))
    written = torch.zeros(num_blocks * bs, dtype=torch.bool)
    written[slots[keep]] = True
    assert flat_k[~written].isnan().all() and flat_v[~written].isnan().all()  # nothing else touched
    with pytest.raises(ScratchLMError, match="store_kv"):
        store_kv(k[:, :1], v[:, :1], k_cache, v_cache, slots)


def test_gather_kv_is_dense_and_zero_padded():
    args, dk, dv = make_case([5, 1, 12], K=2, G=1, Dh=8, bs=4, dtype=torch.float32)
    k, v = gather_kv(args["k_cache"], args["v_cache"], args["block_tables"], args["context_lens"])
    assert k.shape == (3, 12, 2, 8) and v.shape == k.shape
    for b, L in enumerate([5, 1, 12]):
        assert torch.equal(k[b, :L], dk[b]) and torch.equal(v[b, :L], dv[b])
        assert not k[b, L:].any() and not v[b, L:].any()  # zeros past the end (the pool holds NaN there)
    k16, _ = gather_kv(args["k_cache"], args["v_cache"], args["block_tables"], args["context_lens"], max_len=16)
    assert k16.shape[1] == 16 and torch.equal(k16[:, :12], k)
    released = args["block_tables"].clone()
    released[2, 0] = -1  # a block released by a window reads as zeros
    k_rel, _ = gather_kv(args["k_cache"], args["v_cache"], released, args["context_lens"])
    assert not k_rel[2, :4].any() and torch.equal(k_rel[2, 4:], k[2, 4:])


# ---------------------------------------------------------------------- the Triton kernels (interpreter)
# name -> (bs, K, G, Dh, dtype, window, num_splits, q layout)
KERNEL_CASES = {
    f"bs={bs} G={G} window={w} splits={s} {d}": (bs, 2, G, 16, d, w, s, "contiguous")
    for bs in (4, 16)
    for G in (1, 2, 4)
    for w in (0, 11)
    for s in (1, 3)
    for d in ("fp32", "bf16")
    if (bs == 4 or (s == 1 and d == "fp32"))
}
KERNEL_CASES["bs=8 MQA G=6 Dh=24 window=5 splits=2 strided q fp32"] = (8, 1, 6, 24, "fp32", 5, 2, "strided")
KERNEL_CASES["bs=4 G=2 bf16 q, fp32 cache"] = (4, 2, 2, 16, "bf16+fp32", 0, 1, "contiguous")


def kernel_case(bs, K, G, Dh, dtype, window, num_splits, layout) -> dict:
    q_name, _, cache_name = dtype.partition("+")  # "bf16+fp32": bf16 queries over an fp32 cache
    q_dtype, cache_dtype = DTYPES[q_name], DTYPES[cache_name or q_name]
    lengths = lengths_for(bs) + [0]  # with a padding row (context 0)
    args, dk, dv = make_case(lengths, K, G, Dh, bs, cache_dtype, window=window, seed=bs + G + window)
    args["q"] = args["q"].to(q_dtype)
    if layout == "strided":  # q a view of a wider (B, 2H, Dh) tensor: batch stride 2 H Dh
        wide = torch.randn(len(lengths), 2 * K * G, Dh).to(q_dtype)
        wide[:, : K * G] = args["q"]
        args["q"] = wide[:, : K * G]
    out = paged_attention_triton(**args, window=window, num_splits=num_splits)
    ref = paged_attention_reference(**args, window=window)
    expected = dense_sdpa(args["q"][:-1], dk[:-1], dv[:-1], window)
    return {
        "kernel vs reference": max_abs(out, ref),
        "kernel vs dense SDPA (fp64)": max_abs(out[:-1], expected),
        "padding row": out[-1].abs().max().item(),  # 0: no context, zeros
    }


def store_case(dtype) -> dict:
    from scratchlm.kernels.paged_attention import store_kv_reference, store_kv_triton

    g = torch.Generator().manual_seed(5)
    k_ref = torch.full((5, 4, 3, 12), float("nan"), dtype=DTYPES[dtype])
    v_ref, k_tri, v_tri = k_ref.clone(), k_ref.clone(), k_ref.clone()
    slots = torch.randperm(20, generator=g)[:9]
    slots[[0, 4]] = -1
    # Inputs in the cache's dtype, as the model writes them: the interpreter rounds fp32 -> bf16 toward zero
    # (compiled Triton and torch round to nearest even), so a converting store would differ in the last bit.
    k = torch.randn(9, 2 * 3, 12, generator=g).to(DTYPES[dtype])[:, ::2]  # (N, K, Dh) with a head stride of 2 Dh
    v = torch.randn(9, 3, 12, generator=g).to(DTYPES[dtype])
    store_kv_reference(k, v, k_ref, v_ref, slots)
    store_kv_triton(k, v, k_tri, v_tri, slots)
    same = torch.equal(k_ref.nan_to_num(7.0), k_tri.nan_to_num(7.0)) and torch.equal(
        v_ref.nan_to_num(7.0), v_tri.nan_to_num(7.0)
    )
    return {"kernel vs reference (0 = identical, NaN slots untouched)": 0.0 if same else 1.0}


def interpreted_cases() -> dict:
    from scratchlm.kernels import INTERPRET

    assert INTERPRET, "set TRITON_INTERPRET=1 in the environment (before triton is imported)"
    torch.set_num_threads(1)
    results = {f"paged_attention {name}": kernel_case(*args) for name, args in KERNEL_CASES.items()}
    results.update({f"store_kv {d}": store_case(d) for d in ("fp32", "bf16")})
    return results


@pytest.fixture(scope="module")
def interpreted() -> dict:
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed (optional extra: pip install 'scratchlm[triton]')")
    env = {
        **os.environ,
        "TRITON_INTERPRET": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run([sys.executable, str(HERE)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"interpreter run failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout)


@pytest.mark.parametrize("name", list(KERNEL_CASES))
def test_triton_decode_kernel_interpreted(interpreted, name):
    errors = interpreted[f"paged_attention {name}"]
    dtype = KERNEL_CASES[name][4].split("+")[0]
    print(f"paged_attention triton {name}: {errors}")
    assert errors["padding row"] == 0.0
    assert errors["kernel vs reference"] <= KERNEL_TOL[dtype], errors
    assert errors["kernel vs dense SDPA (fp64)"] <= TOL[dtype], errors


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_triton_store_kernel_interpreted(interpreted, dtype):
    assert all(v == 0.0 for v in interpreted[f"store_kv {dtype}"].values())


def test_kernel_cases_cover_the_issue():
    cases = list(KERNEL_CASES.values())
    assert {c[2] for c in cases} >= {1, 2, 4} and {c[5] > 0 for c in cases} == {True, False}
    assert {c[6] for c in cases} >= {1, 2, 3} and {"fp32", "bf16"} <= {c[4] for c in cases}
    assert 1 in lengths_for(4) and 4 in lengths_for(4) and 5 in lengths_for(4)


# ---------------------------------------------------------------------- the compiled kernel (GPU)
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("window", [0, 500])
@pytest.mark.parametrize("K, G, Dh, bs", [(8, 4, 128, 16), (3, 3, 64, 32), (2, 1, 96, 16)])
def test_triton_decode_kernel_cuda(K, G, Dh, bs, window, dtype):
    lengths = [1, bs, 777, 2048, 3001, 40, 1500, 0]  # with a padding row
    args, _, _ = make_case(lengths, K, G, Dh, bs, DTYPES[dtype], window=window, seed=1)
    args = {n: t.cuda() for n, t in args.items()}
    ref = paged_attention_reference(**args, window=window)
    for splits in (None, 1):  # the default split of the context over the GPU, and one program per (seq, kv head)
        out = paged_attention_triton(**args, window=window, num_splits=splits)
        err = max_abs(out, ref)
        print(f"cuda K={K} G={G} Dh={Dh} bs={bs} window={window} {dtype} splits={splits}: max abs err {err:.2e}")
        assert err <= KERNEL_TOL[dtype] and out[-1].abs().max().item() == 0.0
    assert torch.equal(paged_attention(**args, window=window), paged_attention_triton(**args, window=window))


if __name__ == "__main__":
    json.dump(interpreted_cases(), sys.stdout)
