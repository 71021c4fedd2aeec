"""S4D: a diagonal state-space sequence mixer (layer kind "M"), position-free, O(T log T) to train
and O(1) memory per generated token.

Gu, Gupta, Goel, Re 2022, 'On the Parameterization and Initialization of Diagonal State Space
Models' (arXiv 2206.11893). Each of the H = D channels is a continuous-time linear system

    s'(t) = A s(t) + B u(t),   y(t) = Re(C s(t)) + D u(t),   A diagonal complex, N states

discretised with zero-order hold (ZOH) at a learned step dt:

    s_t = exp(dt A) s_{t-1} + (exp(dt A) - 1) / A * B u_t,      y_t = 2 Re(sum_n C_n s_t,n) + D u_t

The N states come in N/2 complex-conjugate pairs, so only one of each pair is stored and the sum
is doubled (2 Re). Unrolled, y = K * u + D u, a causal convolution with the kernel

    K_l = 2 Re(sum_n C_n (exp(dt A_n) - 1) / A_n B_n exp(dt A_n l)),   l = 0 .. T-1

(a Vandermonde product), applied with an FFT of length 2T (zero padding makes it linear, not
circular). The same parameters give the recurrence above for generation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scratchlm.model.cache import LayerCache
from scratchlm.model.config import ModelConfig
from scratchlm.model.context import StepContext
from scratchlm.model.primitives import Linear, activation


class SSMState(LayerCache):
    """Generation state of one S4D layer: the complex state of every channel, (B, H, N/2).

    Its size does not grow with the number of tokens (`max_len` is accepted for the mixer
    interface and ignored). Complex64 for fp32/bf16/fp16 models (the SSM runs in fp32), complex128
    for fp64.
    """

    def __init__(self, batch: int, channels: int, half_state: int, device, dtype):
        cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        self.state = torch.zeros(batch, channels, half_state, device=device, dtype=cdtype)
        self.length = 0  # tokens seen


class DiagonalSSM(nn.Module):
    """The S4D kernel (H channels, N/2 conjugate pairs of states each) and its three forms:
    `kernel` (the Vandermonde product), `conv` (training: FFT convolution) and `chunk`
    (generation: convolution inside the chunk plus the carried state, returning the new state).

    Parameters (s4d.py parameterisation; all real tensors so optimisers and checkpoints need no
    complex support): log_dt (H,), log_A_real (H, N/2), A_imag (H, N/2), C (H, N/2, 2) = (re, im),
    D (H,). B is fixed to 1 (S4D: B is redundant with C for a diagonal SSM). S4D trains A and dt
    with lr 1e-3 and no weight decay; a trainer may group the `ssm.log_dt`, `ssm.log_A_real` and
    `ssm.A_imag` parameters accordingly.
    """

    def __init__(self, channels: int, state_dim: int, dt_min: float, dt_max: float):
        super().__init__()
        self.dt_min, self.dt_max = dt_min, dt_max
        H, N2 = channels, state_dim // 2
        self.log_dt = nn.Parameter(torch.empty(H))
        self.log_A_real = nn.Parameter(torch.empty(H, N2))
        self.A_imag = nn.Parameter(torch.empty(H, N2))
        self.C = nn.Parameter(torch.empty(H, N2, 2))
        self.D = nn.Parameter(torch.empty(H))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """S4D-Lin init (S4D paper, section 4): A_n = -1/2 + i pi n; dt log-uniform in
        [dt_min, dt_max] per channel; C ~ complex normal CN(0, 1) (re and im each N(0, 1/2)); D ~ N(0, 1)."""
        H, N2 = self.A_imag.shape
        self.log_dt.copy_(torch.rand(H) * (math.log(self.dt_max) - math.log(self.dt_min)) + math.log(self.dt_min))
        self.log_A_real.fill_(math.log(0.5))
        self.A_imag.copy_(math.pi * torch.arange(N2, dtype=torch.float32).expand(H, N2))
        self.C.copy_(torch.randn(H, N2, 2) * math.sqrt(0.5))
        self.D.copy_(torch.randn(H))

    def discretise(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """ZOH at step dt: (dt A, dB, C), each complex (H, N/2); `dtype` is the real compute dtype.

        exp(dt A) is the state decay per token, dB = (exp(dt A) - 1) / A * B (B = 1) the input weight.
        """
        A = torch.complex(-torch.exp(self.log_A_real.to(dtype)), self.A_imag.to(dtype))  # Re A < 0: stable
        dtA = A * torch.exp(self.log_dt.to(dtype))[:, None]  # (H, N/2)
        return dtA, torch.expm1(dtA) / A, torch.view_as_complex(self.C.to(dtype).contiguous())

    def kernel(self, T: int, dtype: torch.dtype) -> Tensor:
        """K: (H, T), K_l = 2 Re(sum_n C_n dB_n exp(dt A_n l)) via the (H, N/2, T) Vandermonde matrix."""
        dtA, dB, C = self.discretise(dtype)
        vander = torch.exp(dtA[:, :, None] * torch.arange(T, device=dtA.device, dtype=dtype))  # (H, N/2, T)
        return 2 * torch.einsum("hn,hnl->hl", C * dB, vander).real

    def conv(self, u: Tensor) -> Tensor:
        """Training form, zero initial state: u (B, H, T) real -> y (B, H, T) = K * u + D u, O(T log T)."""
        T = u.shape[-1]
        k = self.kernel(T, u.dtype)  # (H, T)
        # Zero-pad both to 2T so the FFT's circular convolution equals the linear (causal) one on [0, T).
        y = torch.fft.irfft(torch.fft.rfft(u, n=2 * T) * torch.fft.rfft(k, n=2 * T), n=2 * T)[..., :T]
        return y + self.D.to(u.dtype)[:, None] * u

    def chunk(self, u: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """Generation form: continue from `state` s_0 (B, H, N/2) over a chunk u (B, H, T).

        Closed form of the recurrence over the chunk (t = 0 .. T-1, a = exp(dt A)):
            s_t = a^(t+1) s_0 + sum_{j<=t} a^(t-j) dB u_j
            y_t = 2 Re(sum_n C_n a_n^(t+1) s_0,n) + (K * u)_t + D u_t
        so the tokens of the chunk go through the FFT convolution (prefill is O(T log T), no Python
        loop over T) and the carried state adds one Vandermonde term; the new state s_{T-1} is
        another Vandermonde contraction. For T = 1 this is exactly one recurrence step.
        Returns (y (B, H, T), new state (B, H, N/2)).
        """
        T = u.shape[-1]
        dtA, dB, C = self.discretise(u.dtype)
        steps = torch.arange(T + 1, device=u.device, dtype=u.dtype)
        ahead = torch.exp(dtA[:, :, None] * steps[1:])  # (H, N/2, T): a^(t+1)
        behind = torch.exp(dtA[:, :, None] * steps[:-1].flip(0))  # (H, N/2, T): a^(T-1-j)
        y = self.conv(u) + 2 * torch.einsum("hn,bhn,hnt->bht", C, state, ahead).real  # (B, H, T)
        new_state = ahead[:, :, -1] * state + dB * torch.einsum("bht,hnt->bhn", u.to(behind.dtype), behind)
        return y, new_state


class S4DMixer(nn.Module):
    """The S4D block as a sequence mixer: (B, T, D) -> (B, T, D), causal, ignores positions.

        u = in_proj(x)                      D -> D: mixes channels before the per-channel SSM
        y = SSM(u) + D u                    H = D independent channels
        y = dropout(GELU(y))                dropout p = cfg.dropout_attn (the mixer's inner dropout)
        out = GLU(out_proj(y))              D -> 2D, then a * sigmoid(b)

    The tail is S4D's standalone block (s4d.py: SSM, GELU, dropout, Conv1d(H, 2H, 1), GLU). The
    input projection is added because the block sits in a pre-norm residual branch instead of
    behind S4D's encoder; out_proj is the branch's last projection (residual_out=True), so
    `init_weights` scales it down with depth.
    """

    def __init__(self, cfg: ModelConfig, layer: int, window: int | None = None):
        super().__init__()
        self.layer = layer
        self.gelu = activation("gelu", cfg.ops)
        D = cfg.d_model
        self.in_proj = Linear(D, D, cfg.bias)
        self.ssm = DiagonalSSM(D, cfg.ssm.state_dim, cfg.ssm.dt_min, cfg.ssm.dt_max)
        self.out_proj = Linear(D, 2 * D, cfg.bias, residual_out=True)
        self.dropout = cfg.dropout_attn

    def new_cache(self, batch: int, max_len: int, device, dtype) -> SSMState:
        H, N2 = self.ssm.A_imag.shape
        return SSMState(batch, H, N2, device, dtype)

    def forward(self, x: Tensor, ctx: StepContext) -> Tensor:
        # The SSM runs in fp32 (or fp64) whatever the model dtype: complex bf16 does not exist and
        # exp(dt A l) over long T wants the precision.
        u = self.in_proj(x).transpose(1, 2)  # (B, D, T): channels first for the per-channel conv
        u = u.to(torch.promote_types(u.dtype, torch.float32))
        if ctx.padded:  # zero input at padding tokens: a zero state stays zero, and the conv adds nothing
            u = u * ctx.valid[:, None, :].to(u.dtype)
        cache = ctx.layer_cache(self.layer)
        if cache is None:
            y = self.ssm.conv(u)  # (B, D, T)
        else:
            y, cache.state = self.ssm.chunk(u, cache.state)
            cache.length += x.shape[1]
        y = F.dropout(self.gelu(y.transpose(1, 2).to(x.dtype)), self.dropout, self.training)  # (B, T, D)
        a, b = self.out_proj(y).chunk(2, dim=-1)  # (B, T, D) each
        return a * torch.sigmoid(b)
