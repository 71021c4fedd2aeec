"""Weight-only quantisation: round-to-nearest int8 / int4 and the linear modules that hold the result.

    qmodel = quantize_model(model, QuantConfig(bits=4, group_size=128))   # swaps the block linears in place
    qmodel = quantize_model(model, QuantConfig(bits=4, method="gptq"), calib=ids)   # gptq.py
    qmodel = quantize_model(model, QuantConfig(bits=4, method="awq"), calib=ids)    # awq.py

Formats (the tensors a quantised module keeps, and what `save_model_dir` writes):

- int8, per output channel, symmetric: w[n, k] ~ scale[n] * q[n, k], q in [-127, 127] (int8), scale =
  max_k |w[n, k]| / 127. -128 is never used so the grid is symmetric around 0.
- int4, groups of `group_size` consecutive inputs of a row, asymmetric: w ~ scale * (q - zero), q in
  [0, 15], scale = (max - min) / 15 and an integer zero point zero = round(-min / scale) in [0, 15] (so 0.0
  is exactly representable), one (scale, zero) per (row, group). Two values per byte: in each group, byte
  j holds element j in its low nibble and element j + group_size / 2 in its high nibble (contiguous halves,
  as llama.cpp's Q4 blocks, so an unpacking loop reads both halves with unit stride).

The modules' reference path dequantises on the fly (dequantise, then `F.linear`). Fast paths, each tested
against it: on CPU with fp32 activations of 1..8 rows (decode) the compiled GEMV `kernels/quant_gemv.py`
reads the packed bytes (4x / ~7x fewer weight bytes than fp32); on CUDA the Triton kernel
`kernels/quant_matmul_triton.py` dequantises in registers. What is saved is the quantised form only; the
activations stay in the model's dtype (weight-only quantisation).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scratchlm.errors import InvalidArgument, ScratchLMError

METHODS = ("rtn", "gptq", "awq")


@dataclass
class QuantConfig:
    bits: int = 8  # 8 (per output channel) | 4 (group-wise)
    group_size: int = 128  # int4 only: inputs per (scale, zero) pair; 32 / 64 / 128 are usual
    # rtn: round to nearest | gptq: second-order error compensation (gptq.py) | awq: activation-aware
    # input-channel scales folded into the previous op, then round to nearest (awq.py)
    method: str = "rtn"
    include: str = ""  # regex over module names (e.g. "blocks.3.ffn"); "" = every linear in the blocks
    quantize_head: bool = False  # also the output head (untied from the embedding, which stays as it is)
    # GPTQ
    damp: float = 0.01  # fraction of mean(diag H) added to the diagonal
    block: int = 128  # columns updated together (lazy batch updates)
    # columns in order of decreasing diag(H): on SmolLM2 int4-g64 this is what makes GPTQ beat round to nearest
    # (~40% of RTN's bits/byte loss removed; without it no better: benchmarks/results/gptq.md)
    act_order: bool = True
    # AWQ
    awq_grid: int = 20  # points of the scale exponent alpha in [0, 1] (and clip ratios 1, 1 - 1/grid, ... > 0.5)
    awq_clip: bool = True  # int4: also search each group's range shrink (weight clipping)

    def validate(self) -> None:
        if self.bits not in (4, 8):
            raise InvalidArgument(f"quantisation bits must be 4 or 8, got {self.bits}")
        if self.bits == 4 and (self.group_size < 2 or self.group_size % 2):
            raise InvalidArgument(f"int4 group_size must be an even number >= 2, got {self.group_size}")
        if self.method not in METHODS:
            raise InvalidArgument(f"quantisation method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not 0 <= self.damp < 1 or self.block < 1:
            raise InvalidArgument(f"GPTQ damp must be in [0, 1) and block >= 1, got {self.damp}, {self.block}")
        if self.awq_grid < 2:
            raise InvalidArgument(f"AWQ awq_grid must be >= 2 points, got {self.awq_grid}")

    def to_json(self) -> dict:
        return {"bits": self.bits, "group_size": self.group_size if self.bits == 4 else 0, "method": self.method}


# ---------------------------------------------------------------------------------------------- int8
def quantize_int8(w: Tensor) -> tuple[Tensor, Tensor]:
    """w (N, K) float -> q (N, K) int8, scale (N,) float32: w ~ scale[:, None] * q."""
    w = w.detach().float()
    scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127  # an all-zero row gets any positive scale: q = 0
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: Tensor, scale: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    return (q.to(dtype) * scale.to(dtype)[:, None]).contiguous()


# ---------------------------------------------------------------------------------------------- int4
def check_groups(k: int, group_size: int) -> None:
    if group_size < 2 or group_size % 2 or k % group_size:
        raise InvalidArgument(
            f"int4 group_size {group_size} must be even and divide the input dimension {k} (try a divisor of {k})"
        )


def int4_params(w: Tensor) -> tuple[Tensor, Tensor]:
    """Scale and integer zero point of each row of `w` (..., g): the min..max range on 16 levels, 0 exact."""
    lo = w.amin(dim=-1).clamp(max=0.0)  # the range includes 0, so zero lands on the grid
    hi = w.amax(dim=-1).clamp(min=0.0)
    scale = ((hi - lo) / 15).clamp_min(1e-12)
    zero = torch.round(-lo / scale).clamp_(0, 15)
    return scale, zero


def round_int4(w: Tensor, scale: Tensor, zero: Tensor) -> Tensor:
    """Levels q in [0, 15] of w (..., g) with per-row scale/zero (...)."""
    return torch.round(w / scale[..., None] + zero[..., None]).clamp_(0, 15)


def pack_int4(q: Tensor, group_size: int) -> Tensor:
    """Levels (N, K) in [0, 15] -> (N, K / 2) uint8: in each group, byte j = q[j] | q[j + g/2] << 4."""
    n, k = q.shape
    g = q.to(torch.uint8).view(n, k // group_size, 2, group_size // 2)
    return (g[:, :, 0] | (g[:, :, 1] << 4)).reshape(n, k // 2)


def unpack_int4(packed: Tensor, group_size: int) -> Tensor:
    """(N, K / 2) uint8 -> levels (N, K) uint8, the inverse of `pack_int4`."""
    n, half = packed.shape
    p = packed.view(n, (2 * half) // group_size, group_size // 2)
    return torch.stack([p & 15, p >> 4], dim=2).reshape(n, 2 * half)


def quantize_int4(w: Tensor, group_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """w (N, K) -> packed (N, K/2) uint8, scale (N, K/g) float32, zero (N, K/g) uint8 (round to nearest)."""
    n, k = w.shape
    check_groups(k, group_size)
    wg = w.detach().float().view(n, k // group_size, group_size)
    scale, zero = int4_params(wg)
    q = round_int4(wg, scale, zero).view(n, k)
    return pack_int4(q, group_size), scale, zero.to(torch.uint8)


def dequantize_int4(packed: Tensor, scale: Tensor, zero: Tensor, group_size: int, dtype=torch.float32) -> Tensor:
    n = packed.shape[0]
    q = unpack_int4(packed, group_size).view(n, -1, group_size).to(dtype)
    w = (q - zero.to(dtype)[..., None]) * scale.to(dtype)[..., None]  # (N, K/g, g)
    return w.reshape(n, -1)


# ---------------------------------------------------------------------------------------------- modules
def quant_fast_path(x: Tensor, qweight: Tensor, bits: int, scale, zero, group_size: int, bias) -> Tensor | None:
    """The compiled kernel's output where it applies, else None (the caller dequantises: the reference).

    CPU fp32 with 1..8 rows: `kernels/quant_gemv.py` (C, reads the packed bytes); CUDA: the Triton kernel
    (`kernels/quant_matmul_triton.py`). `kernels.use_backend("torch")` forces the reference."""
    from scratchlm.kernels import dispatch

    if dispatch._forced and dispatch._forced[-1] == "torch":
        return None
    if bias is not None and bias.requires_grad and torch.is_grad_enabled():
        return None  # training through the bias: keep autograd's path
    if x.device.type == "cpu":
        from scratchlm.kernels.quant_gemv import cpu_unsupported, quant_linear_cpu

        if cpu_unsupported(x, qweight):
            return None
        return quant_linear_cpu(x, bits, qweight, scale, zero, group_size, bias)
    if x.is_cuda:
        from scratchlm.kernels.quant_matmul_triton import quant_matmul, triton_unsupported

        if triton_unsupported(x, qweight, bits, group_size):
            return None
        return quant_matmul(x, bits, qweight, scale, zero, group_size, bias)
    return None


def cpu_bound_path(m: nn.Module, x: Tensor) -> Tensor | None:
    """Int8Linear / Int4Linear `m` on CPU: the compiled kernel bound to m's weights once (rebound when they
    change), so a decode step pays ~2 us of Python per linear instead of `quant_fast_path`'s ~15; None
    where it does not apply (the caller tries `quant_fast_path`, then the reference)."""
    from scratchlm.kernels import dispatch
    from scratchlm.kernels.quant_gemv import BoundGemv

    if dispatch._forced and dispatch._forced[-1] == "torch":
        return None
    buffers = m._buffers  # plain dict reads: Module.__getattr__ costs ~0.3 us an attribute
    bias, zero = m._parameters["bias"], buffers["zero"] if m.bits == 4 else None
    if bias is not None and bias.requires_grad and torch.is_grad_enabled():
        return None  # training through the bias: keep autograd's path
    gemv = m._gemv
    if gemv is None or not gemv.bound_to(buffers["qweight"], buffers["scale"], zero, bias):
        try:
            gemv = m._gemv = BoundGemv(m.bits, buffers["qweight"], buffers["scale"], zero, m.group_size, bias)
        except ScratchLMError:  # no extension, or weights not in the kernel's layout: the general path
            m._gemv = None
            return None
    return gemv(x)


class Int8Linear(nn.Module):
    """y = x (scale * q)^T + b with q int8 (out, in), one scale per output channel."""

    bits, group_size = 8, 0

    def __init__(self, d_in: int, d_out: int, bias: bool = False):
        super().__init__()
        self.in_features, self.out_features = d_in, d_out
        self._gemv = None  # the CPU kernel bound to the weights (cpu_bound_path)
        self.register_buffer("qweight", torch.zeros(d_out, d_in, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(d_out))
        self.register_parameter("bias", nn.Parameter(torch.zeros(d_out)) if bias else None)

    @classmethod
    def from_weight(cls, w: Tensor, bias: Tensor | None = None) -> Int8Linear:
        m = cls(w.shape[1], w.shape[0], bias is not None).to(w.device)
        m.qweight, m.scale = quantize_int8(w)
        if bias is not None:
            m.bias.data.copy_(bias.detach())
        return m

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return dequantize_int8(self.qweight, self.scale, dtype)

    @property
    def weight(self) -> Tensor:
        """The dequantised (out, in) fp32 matrix, for code that reads a head's matrix (eval's fused head + loss)."""
        return self.dequantize()

    def forward(self, x: Tensor) -> Tensor:
        fast = cpu_bound_path(self, x) if x.device.type == "cpu" else None
        if fast is None:
            fast = quant_fast_path(x, self.qweight, 8, self.scale, None, 0, self.bias)
        return fast if fast is not None else F.linear(x, self.dequantize(x.dtype), self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, int8 per channel, bias={self.bias is not None}"


class Int4Linear(nn.Module):
    """y = x (scale * (q - zero))^T + b with q 4-bit in groups of `group_size` inputs, two per byte."""

    bits = 4

    def __init__(self, d_in: int, d_out: int, group_size: int, bias: bool = False):
        super().__init__()
        check_groups(d_in, group_size)
        self.in_features, self.out_features, self.group_size = d_in, d_out, group_size
        self._gemv = None  # the CPU kernel bound to the weights (cpu_bound_path)
        groups = d_in // group_size
        self.register_buffer("qweight", torch.zeros(d_out, d_in // 2, dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(d_out, groups))
        self.register_buffer("zero", torch.zeros(d_out, groups, dtype=torch.uint8))
        self.register_parameter("bias", nn.Parameter(torch.zeros(d_out)) if bias else None)

    @classmethod
    def from_levels(cls, q: Tensor, scale: Tensor, zero: Tensor, group_size: int, bias=None) -> Int4Linear:
        """From levels q (N, K) in [0, 15] and per-group scale / zero (N, K/g): what GPTQ produces."""
        m = cls(q.shape[1], q.shape[0], group_size, bias is not None).to(q.device)
        m.qweight = pack_int4(q, group_size)
        m.scale, m.zero = scale.float().contiguous(), zero.to(torch.uint8).contiguous()
        if bias is not None:
            m.bias.data.copy_(bias.detach())
        return m

    @classmethod
    def from_weight(cls, w: Tensor, group_size: int, bias: Tensor | None = None) -> Int4Linear:
        m = cls(w.shape[1], w.shape[0], group_size, bias is not None).to(w.device)
        m.qweight, m.scale, m.zero = quantize_int4(w, group_size)
        if bias is not None:
            m.bias.data.copy_(bias.detach())
        return m

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return dequantize_int4(self.qweight, self.scale, self.zero, self.group_size, dtype)

    @property
    def weight(self) -> Tensor:
        """The dequantised (out, in) fp32 matrix, for code that reads a head's matrix (eval's fused head + loss)."""
        return self.dequantize()

    def forward(self, x: Tensor) -> Tensor:
        fast = cpu_bound_path(self, x) if x.device.type == "cpu" else None
        if fast is None:
            fast = quant_fast_path(x, self.qweight, 4, self.scale, self.zero, self.group_size, self.bias)
        return fast if fast is not None else F.linear(x, self.dequantize(x.dtype), self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, int4 group {self.group_size}, bias={self.bias is not None}"


QUANT_MODULES = (Int8Linear, Int4Linear)


# ---------------------------------------------------------------------------------------------- models
def target_linears(model: nn.Module, cfg: QuantConfig) -> dict[str, nn.Linear]:
    """{name: linear} that `cfg` quantises: the linears inside the blocks (and the head if asked)."""
    pattern = re.compile(cfg.include) if cfg.include else None
    out = {}
    for name, m in model.named_modules():
        if not isinstance(m, nn.Linear):
            continue
        in_blocks = name.startswith("blocks.")
        if not (in_blocks or (cfg.quantize_head and name == "head")):
            continue
        if pattern is not None and not pattern.search(name):
            continue
        out[name] = m
    if not out:
        raise InvalidArgument(
            "the model has no linear layer to quantise"
            + (f" matching include={cfg.include!r}" if cfg.include else " (looked inside model.blocks)")
        )
    return out


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def quantized(linear: nn.Linear, cfg: QuantConfig) -> nn.Module:
    if cfg.bits == 8:
        return Int8Linear.from_weight(linear.weight, linear.bias)
    return Int4Linear.from_weight(linear.weight, cfg.group_size, linear.bias)


def quantize_model(model: nn.Module, cfg: QuantConfig | None = None, calib: Tensor | None = None) -> nn.Module:
    """Swap the target linears of `model` for quantised modules, in place; returns the model.

    Round to nearest needs no data; GPTQ and AWQ need `calib` (S, T) token ids. Everything is checked (config,
    group sizes of every target, calibration data) before the first module is swapped."""
    cfg = cfg or QuantConfig()
    cfg.validate()
    targets = target_linears(model, cfg)
    if cfg.bits == 4:
        for name, m in targets.items():
            try:
                check_groups(m.in_features, cfg.group_size)
            except InvalidArgument as e:
                raise InvalidArgument(f"{name}: {e}") from None
    if cfg.method == "gptq":
        from scratchlm.compress.gptq import gptq_quantize

        gptq_quantize(model, cfg, calib, targets)
    elif cfg.method == "awq":
        from scratchlm.compress.awq import awq_quantize

        awq_quantize(model, cfg, calib, targets)
    else:
        with torch.no_grad():
            for name, m in targets.items():
                set_module(model, name, quantized(m, cfg))
    model.quantization = {**cfg.to_json(), "modules": sorted(targets)}
    return model


def empty_quantized(model: nn.Module, spec: dict) -> nn.Module:
    """Swap the modules `spec` names (a saved model's quantisation record) for empty quantised modules of
    the right shapes, so its state dict loads."""
    bits, g = spec.get("bits"), spec.get("group_size", 0)
    if bits not in (4, 8):
        raise InvalidArgument(f"saved quantisation has bits {bits!r}; this scratchlm reads 4 or 8")
    for name in spec.get("modules", []):
        try:
            m = model.get_submodule(name)
        except AttributeError:
            raise InvalidArgument(f"saved quantisation names {name!r}, which the model config does not have") from None
        has_bias = getattr(m, "bias", None) is not None
        q = (
            Int8Linear(m.in_features, m.out_features, has_bias)
            if bits == 8
            else Int4Linear(m.in_features, m.out_features, g, has_bias)
        )
        set_module(model, name, q)
    model.quantization = dict(spec)
    return model


def model_bytes(model: nn.Module) -> int:
    """Bytes of the model's distinct tensors (parameters and buffers; a tied weight counted once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.device, t.untyped_storage().data_ptr())
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total
