"""The quantised linears' CPU speed paths against the dequantise-then-F.linear reference (compress/quant.py).

Every instruction set the CPU runs (`_quant_gemv.isas()`: the portable loops, AVX2 + FMA, AVX-512F, each
with its tiles of several output rows) on int8 and int4 weights, 1..8 rows and passes of 8 up to
MAX_ROWS, output counts off the tile sizes, K off the 16 lanes, group halves off the lanes, one and two
threads; the modules' bound kernel (weights checked once) following every way the weights can change;
batch > 1 rows; the quantised head next to the fp32 embedding table.
Errors as max abs / (max |ref|), as tests/kernels/test_quant_kernels.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scratchlm.compress.quant import Int4Linear, Int8Linear, QuantConfig, quantize_model
from scratchlm.kernels import quant_gemv, use_backend
from scratchlm.kernels.quant_gemv import BoundGemv, quant_linear_cpu
from scratchlm.model.config import ModelConfig
from scratchlm.model.transformer import TransformerLM

needs_ext = pytest.mark.skipif(quant_gemv._quant_gemv is None, reason="scratchlm.kernels._quant_gemv is not built")
TOL = 2e-5  # fp32, another summation order than the reference GEMM
ISAS = quant_gemv._quant_gemv.isas() if quant_gemv._quant_gemv is not None else ()


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


def _reference(m, x):
    return F.linear(x, m.dequantize(torch.float32), m.bias)


def _module(bits: int, n: int, k: int, group: int, bias: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g) if bias else None
    return Int8Linear.from_weight(w, b) if bits == 8 else Int4Linear.from_weight(w, group, b)


@pytest.fixture
def isa():
    """Set the loops for one test, restored after."""
    chosen = []

    def use(name: str) -> None:
        chosen.append(quant_gemv._quant_gemv.set_isa(name))

    yield use
    if chosen:
        quant_gemv._quant_gemv.set_isa(chosen[0])


# (bits, group, N, K): N off the tiles of 4 and 2 rows; int8 K off the 16 lanes; int4 halves of 3 / 24 / 40
SHAPES = [(8, 0, 45, 384), (8, 0, 7, 1000), (8, 0, 66, 37), (4, 32, 45, 384), (4, 64, 13, 576), (4, 6, 9, 96),
          (4, 48, 31, 480), (4, 80, 6, 160)]  # fmt: skip


@needs_ext
@pytest.mark.parametrize("name", ISAS)
@pytest.mark.parametrize("bits,group,n,k", SHAPES, ids=lambda v: str(v))
def test_every_instruction_set_matches_reference(isa, name, bits, group, n, k):
    isa(name)
    m = _module(bits, n, k, group, bias=(n % 2 == 1), seed=n)
    torch.manual_seed(k)
    for rows in [*range(1, 9), 11, 17, quant_gemv.MAX_ROWS]:  # > 8: passes of 8 rows over blocks of weights
        x = torch.randn(rows, k)
        ref = _reference(m, x)
        for threads in (1, 2):
            zero = m.zero if bits == 4 else None
            out = quant_linear_cpu(x, bits, m.qweight, m.scale, zero, group, m.bias, threads=threads)
            rel = _rel(out, ref)
            assert rel < TOL, f"{name} bits={bits} g={group} {n}x{k} rows={rows} threads={threads}: rel {rel:.2e}"


@needs_ext
def test_instruction_sets_agree_and_bad_names_are_refused(isa):
    m = _module(4, 70, 256, 64, bias=True, seed=2)
    x = torch.randn(3, 256)
    outs = {}
    for name in ISAS:
        isa(name)
        outs[name] = quant_linear_cpu(x, 4, m.qweight, m.scale, m.zero, 64, m.bias)
    for name, out in outs.items():
        assert _rel(out, outs["generic"]) < TOL, name
    with pytest.raises(ValueError, match="not available"):
        quant_gemv._quant_gemv.set_isa("sse9")


@needs_ext
@pytest.mark.parametrize("bits", [8, 4])
def test_module_binds_once_and_matches_the_general_path(bits):
    m = _module(bits, 50, 128, 32, bias=True, seed=4)
    x = torch.randn(2, 3, 128)  # batch 2 x 3 positions = 6 rows
    with torch.no_grad():
        out = m(x)
        gemv = m._gemv
        assert isinstance(gemv, BoundGemv)
        assert m(x) is not out and m._gemv is gemv  # bound once
        zero = m.zero if bits == 4 else None
        assert torch.equal(out, quant_linear_cpu(x, bits, m.qweight, m.scale, zero, m.group_size, m.bias))
        with use_backend("torch"):
            ref = m(x)
        assert torch.equal(ref, _reference(m, x))
        assert _rel(out, ref) < TOL
        many = torch.randn(7, 7, 128)  # 49 rows, more than the kernel takes: the reference GEMM
        assert 49 > quant_gemv.MAX_ROWS
        assert torch.equal(m(many), _reference(m, many))
        xt = torch.randn(128, 4).t()  # non-contiguous (4, 128)
        assert _rel(m(xt), _reference(m, xt)) < TOL


@needs_ext
@pytest.mark.parametrize("bits", [8, 4])
def test_bound_kernel_follows_changed_weights(bits):
    m = _module(bits, 40, 128, 32, bias=True, seed=6)
    other = _module(bits, 40, 128, 32, bias=True, seed=7)
    x = torch.randn(1, 128)
    with torch.no_grad():
        m(x)
        m.load_state_dict(other.state_dict())  # copied in place: the bound pointers see the new values
        assert _rel(m(x), _reference(other, x)) < TOL
        m.qweight, m.scale = other.qweight.clone(), other.scale * 2  # new tensors: bound again
        assert _rel(m(x), _reference(m, x)) < TOL
        m.bias.data = torch.randn(40)  # same Parameter, new storage
        assert _rel(m(x), _reference(m, x)) < TOL
        m.scale = torch.stack([m.scale, m.scale], -1)[..., 0]  # non-contiguous: the general path copies it
        assert not m.scale.is_contiguous()
        assert m(x).shape == (1, 40) and _rel(m(x), _reference(m, x)) < TOL
    m.bias.requires_grad_(True)
    y = m(torch.randn(2, 128))  # training through the bias: autograd's path
    y.sum().backward()
    assert m.bias.grad is not None


@needs_ext
@pytest.mark.parametrize("bits", [8, 4])
def test_quantised_head_beside_the_fp32_embedding(bits):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=200, context_length=64, d_model=64, n_layers=2, n_heads=4, d_ff=128)
    model = TransformerLM(cfg).eval()
    assert model.head.weight is model.embed.weight  # tied
    table = model.embed.weight.detach().clone()
    ids = torch.randint(0, 200, (2, 5))
    with torch.no_grad():
        fp_logits = model(ids)
        quantize_model(model, QuantConfig(bits=bits, group_size=32, quantize_head=True))
        assert isinstance(model.head, Int8Linear if bits == 8 else Int4Linear)
        assert torch.equal(model.embed.weight, table)  # the lookups still read the fp32 table
        h = model(ids, output="hidden")[:, -1:]  # (2, 1, D): a decode step's rows, through the kernel
        fast = model.head(h)
        assert isinstance(model.head._gemv, BoundGemv)
        assert _rel(fast, _reference(model.head, h)) < TOL
        drift = _rel(model(ids), fp_logits)
        assert torch.equal(model.head.weight, model.head.dequantize())  # what a fused head + loss reads
    assert drift < (0.02 if bits == 8 else 0.3), f"logits moved by {drift:.3f} of their max"
