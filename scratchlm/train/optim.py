"""Optimizers written out (AdamW, Muon, SOAP), the parameter-grouping rule, and grad clipping.

    optimizer = build_optimizer(model, cfg.optim)   # one Optimizer: one .step() / .zero_grad() / .state_dict()
    grad_norm = clip_grad_norm(model.parameters(), cfg.optim.grad_clip)

Grouping rule (`param_groups`): the model says what each parameter is (`model.param_roles()`, see
`scratchlm/model/roles.py`); the optimizer maps roles to groups:

- "matrix": roles "matrix" (a `Linear.weight`) and "expert" (a MoE expert's (E, out, in) weights: E
  independent matrices): weight decay, and Muon / SOAP when chosen;
- "embeddings": roles "embedding" and "head": lookup tables and the classifier are not hidden
  matrices (Muon's own rule, Jordan et al. 2024); decayed only if `decay_embeddings`;
- "no_decay": roles "norm_bias" (norm gains, every bias) and "ssm" (the S4D system: dynamics of a
  state-space system, not feature maps; S4D trains A and dt without weight decay, Gu et al. 2022).

All three optimizers are one `Optimizer` subclass each that can also host AdamW groups: every
param group names its `algorithm` ("adamw", "muon" or "soap") and `step()` dispatches per group
(Keller Jordan's `MuonWithAuxAdam` pattern). State is per parameter, plain tensors and ints, so it
survives `state_dict()` / `load_state_dict()` and `torch.load(weights_only=True)`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from scratchlm.errors import ScratchLMError
from scratchlm.model.roles import param_roles as infer_param_roles
from scratchlm.train.config import OptimConfig

MATRIX = "matrix"  # name of the param group that gets Muon / SOAP
# parameter role (scratchlm.model.roles) -> param group; "other" = a module type the model does not know
ROLE_GROUPS = {
    "matrix": MATRIX,
    "expert": MATRIX,
    "embedding": "embeddings",
    "head": "embeddings",
    "norm_bias": "no_decay",
    "ssm": "no_decay",
    "other": "no_decay",
}


# ---------------------------------------------------------------------------------------------
# per-parameter updates: f(p, grad, state, group), grad not modified


def adamw_update(p: Tensor, grad: Tensor, state: dict, group: dict) -> None:
    """AdamW (Loshchilov & Hutter 2019), op for op torch.optim.AdamW's single-tensor path:

    p <- p (1 - lr wd);  m <- lerp(m, g, 1 - b1);  v <- b2 v + (1 - b2) g^2
    p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    """
    if not state:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(p)
        state["exp_avg_sq"] = torch.zeros_like(p)
    beta1, beta2 = group["betas"]
    lr, wd = group["lr"], group["weight_decay"]
    state["step"] += 1
    t = state["step"]
    if wd != 0:
        p.mul_(1 - lr * wd)
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    step_size = lr / (1 - beta1**t)
    denom = (exp_avg_sq.sqrt() / (1 - beta2**t) ** 0.5).add_(group["eps"])
    p.addcdiv_(exp_avg, denom, value=-step_size)


NS_COEFFS = (3.4445, -4.7750, 2.0315)  # quintic maximising the slope at 0 (Jordan et al. 2024)


def newton_schulz(G: Tensor, steps: int = 5, dtype: torch.dtype = torch.float32) -> Tensor:
    """Approximate orthogonalisation U V^T of G = U S V^T over the last two dims (leading dims batch).

    The quintic X <- a X + b (X X^T) X + c (X X^T)^2 X maps each singular value s to
    p(s) = a s + b s^3 + c s^5; its coefficients trade exactness for speed: after 5 steps every
    singular value of a well-conditioned input lands in roughly [0.7, 1.2] rather than at 1,
    which does not hurt training (Jordan et al. 2024). Scaling by the Frobenius norm first puts
    all singular values in [0, 1], where the iteration converges.
    """
    a, b, c = NS_COEFFS
    X = G.to(dtype)
    tall = G.size(-2) > G.size(-1)
    if tall:  # iterate on the wide orientation: X X^T is the smaller Gram matrix
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT  # (..., rows, rows)
        B = b * A + c * A @ A
        X = a * X + B @ X
    return X.mT if tall else X


def muon_update(p: Tensor, grad: Tensor, state: dict, group: dict) -> None:
    """Muon (Jordan et al. 2024, kellerjordan.github.io/posts/muon; reference `muon.py`):

    m <- lerp(m, g, 1 - mu);  u <- lerp(g, m, mu) (Nesterov) or m
    p <- p (1 - lr wd) - lr * max(1, rows / cols)^0.5 * NS5(u)

    A 3-D expert tensor (E, out, in) is orthogonalised per expert slice (NS5 is batched). The
    iteration runs in bf16 on CUDA and fp32 elsewhere (`ns_dtype` "auto"), or as the group says.
    Differences from the reference: the gradient is not overwritten (it computes the Nesterov
    blend in place into p.grad), and a parameter without a gradient is skipped (the reference
    steps it with a zero gradient), as torch optimizers do.
    """
    if p.ndim < 2:
        raise ValueError(f"Muon needs matrices (ndim >= 2), got a parameter of shape {tuple(p.shape)}")
    if not state:
        state["momentum_buffer"] = torch.zeros_like(p)
    buf, mu = state["momentum_buffer"], group["momentum"]
    buf.lerp_(grad, 1 - mu)
    update = grad.lerp(buf, mu) if group["nesterov"] else buf
    ns_dtype = group["ns_dtype"]
    if ns_dtype == "auto":
        ns_dtype = "bf16" if p.is_cuda else "fp32"
    update = newton_schulz(update, group["ns_steps"], {"bf16": torch.bfloat16, "fp32": torch.float32}[ns_dtype])
    update = update * max(1.0, p.size(-2) / p.size(-1)) ** 0.5  # same RMS update for tall matrices
    lr = group["lr"]
    p.mul_(1 - lr * group["weight_decay"])
    p.add_(update.to(p.dtype), alpha=-lr)


def soap_update(p: Tensor, grad: Tensor, state: dict, group: dict) -> None:
    """SOAP (Vyas et al. 2024, arXiv 2409.11321; reference github.com/nikhilvyas/SOAP): Adam run in
    the eigenbasis of Shampoo's preconditioner.

    For a matrix G (m, n): L <- lerp(L, G G^T, 1 - sb), R <- lerp(R, G^T G, 1 - sb) (sb =
    `shampoo_beta`, default beta2); Q_L, Q_R their eigenbases (eigenvalues descending). Per step:
    G' = Q_L^T G Q_R; Adam moments m, v of G' (both kept in the rotated basis); p <- p - lr
    sqrt(1 - b2^t) / (1 - b1^t) * Q_L (m / (sqrt(v) + eps)) Q_R^T, then p <- p (1 - lr wd).
    Every `precondition_frequency` steps the bases are refreshed by one power-iteration step
    Q <- QR(L Q) (columns first sorted by the Rayleigh quotients diag(Q^T L Q), v permuted to
    match), the first time by a full eigendecomposition; m is rotated into the new basis.

    Like the reference: the first step only builds L, R and the eigenbases (no update: the
    current gradient never preconditions itself); eps is added to sqrt(v) before the bias
    correction; weight decay comes after the update. A side whose size exceeds
    `max_precond_dim` (default 8192: one fp32 factor is then 256 MiB) keeps the identity basis.
    Deviations: leading dims are batch dims (a MoE expert tensor (E, out, in) gets per-expert
    factors, where the reference would add an E x E factor mixing experts); a tensor with no
    preconditioned side (1-D, or both sides over the cap) is plain Adam with SOAP's formulas and
    updates from the first step; m is rotated only when the basis changes (the reference rotates
    back and forth every step: same value, more rounding); no `merge_dims` / `normalize_grads` /
    `precondition_1d` options.
    """
    if not state:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(p)
        state["exp_avg_sq"] = torch.zeros_like(p)
        if p.ndim >= 2:
            for side, size in (("L", p.size(-2)), ("R", p.size(-1))):
                if size <= group["max_precond_dim"]:
                    state[side] = p.new_zeros(*p.shape[:-2], size, size)
        if "L" in state or "R" in state:
            _soap_accumulate(grad, state, group)
            for side in ("L", "R"):
                if side in state:
                    state["Q_" + side] = _eigenbasis(state[side])
            return
    beta1, beta2 = group["betas"]
    g = _rotate(grad, state)  # (..., m, n) in the eigenbasis
    state["step"] += 1
    t = state["step"]
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    exp_avg.mul_(beta1).add_(g, alpha=1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    denom = exp_avg_sq.sqrt().add_(group["eps"])
    lr = group["lr"]
    step_size = lr * (1 - beta2**t) ** 0.5 / (1 - beta1**t)
    p.add_(_rotate(exp_avg / denom, state, back=True), alpha=-step_size)
    if group["weight_decay"] > 0:
        p.mul_(1 - lr * group["weight_decay"])
    if "L" in state or "R" in state:
        _soap_accumulate(grad, state, group)
        if t % group["precondition_frequency"] == 0:
            m = _rotate(exp_avg, state, back=True)  # to the parameter basis
            _refresh_bases(state)
            state["exp_avg"] = _rotate(m, state)  # into the new basis


def _rotate(x: Tensor, state: dict, back: bool = False) -> Tensor:
    """x -> Q_L^T x Q_R (into the eigenbasis) or Q_L x Q_R^T (back); a missing side is the identity."""
    QL, QR = state.get("Q_L"), state.get("Q_R")
    if QL is not None:
        x = QL @ x if back else QL.mT @ x
    if QR is not None:
        x = x @ QR.mT if back else x @ QR
    return x


def _soap_accumulate(grad: Tensor, state: dict, group: dict) -> None:
    sb = group["betas"][1] if group["shampoo_beta"] is None else group["shampoo_beta"]
    if "L" in state:
        state["L"].lerp_(grad @ grad.mT, 1 - sb)  # (..., m, m)
    if "R" in state:
        state["R"].lerp_(grad.mT @ grad, 1 - sb)  # (..., n, n)


def _eigenbasis(M: Tensor) -> Tensor:
    """Eigenvectors of the symmetric M (..., k, k), eigenvalues descending; fp32 (fp64 if that fails)."""
    M32 = M.float()
    eye = torch.eye(M.size(-1), device=M.device)
    try:
        _, Q = torch.linalg.eigh(M32 + 1e-30 * eye)
    except torch.linalg.LinAlgError:
        _, Q = torch.linalg.eigh(M32.double() + 1e-30 * eye.double())
    return Q.flip(-1).to(M.dtype)


def _refresh_bases(state: dict) -> None:
    """One power-iteration step per side, Q <- QR(M Q), after sorting Q's columns (and v) by
    their estimated eigenvalues, as the reference's `get_orthogonal_matrix_QR`."""
    v = state["exp_avg_sq"]  # (..., m, n)
    for side, dim in (("L", -2), ("R", -1)):
        if side not in state:
            continue
        M, Q = state[side].float(), state["Q_" + side].float()  # (..., k, k)
        est = torch.diagonal(Q.mT @ M @ Q, dim1=-2, dim2=-1)  # (..., k) Rayleigh quotients
        order = est.argsort(dim=-1, descending=True)  # (..., k)
        Q = Q.gather(-1, order.unsqueeze(-2).expand_as(Q))  # columns in that order
        v = v.gather(dim, (order.unsqueeze(-1) if dim == -2 else order.unsqueeze(-2)).expand_as(v))
        Q, _ = torch.linalg.qr(M @ Q)
        state["Q_" + side] = Q.to(state[side].dtype)
    state["exp_avg_sq"] = v


UPDATES: dict[str, Callable[[Tensor, Tensor, dict, dict], None]] = {
    "adamw": adamw_update,
    "muon": muon_update,
    "soap": soap_update,
}


# ---------------------------------------------------------------------------------------------
# optimizers


class _GroupedOptimizer(torch.optim.Optimizer):
    """step() applies to each param group the update its "algorithm" names; subclasses fix which."""

    algorithms: tuple[str, ...] = ()

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        algorithm = self.param_groups[-1]["algorithm"]
        if algorithm not in self.algorithms:
            raise ValueError(f"{type(self).__name__} cannot run algorithm {algorithm!r}: expected {self.algorithms}")

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            update = UPDATES[group["algorithm"]]
            for p in group["params"]:
                if p.grad is not None:
                    update(p, p.grad, self.state[p], group)
        return loss


class AdamW(_GroupedOptimizer):
    """AdamW, matching torch.optim.AdamW (non-amsgrad) with the same defaults; see `adamw_update`."""

    algorithms = ("adamw",)

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2):
        defaults = dict(algorithm="adamw", lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)


class Muon(_GroupedOptimizer):
    """Muon for matrix groups; groups with algorithm="adamw" are AdamW (betas, eps from here)."""

    algorithms = ("muon", "adamw")

    def __init__(
        self,
        params,
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        ns_dtype: str = "auto",  # "auto" (bf16 on CUDA, else fp32), "bf16" or "fp32"
        weight_decay: float = 0.0,
        betas=(0.9, 0.95),
        eps: float = 1e-8,
    ):
        if ns_dtype not in ("auto", "bf16", "fp32"):
            raise ValueError(f"ns_dtype must be auto, bf16 or fp32, got {ns_dtype!r}")
        defaults = dict(
            algorithm="muon",
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            ns_steps=ns_steps,
            ns_dtype=ns_dtype,
            weight_decay=weight_decay,
            betas=tuple(betas),
            eps=eps,
        )
        super().__init__(params, defaults)


class SOAP(_GroupedOptimizer):
    """SOAP for matrix groups; groups with algorithm="adamw" are AdamW. Defaults: the paper's."""

    algorithms = ("soap", "adamw")

    def __init__(
        self,
        params,
        lr: float = 3e-3,
        betas=(0.95, 0.95),
        shampoo_beta: float | None = None,  # EMA of the Kronecker factors; None = betas[1]
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        precondition_frequency: int = 10,
        max_precond_dim: int = 8192,
    ):
        if precondition_frequency < 1:
            raise ValueError(f"precondition_frequency must be >= 1, got {precondition_frequency}")
        defaults = dict(
            algorithm="soap",
            lr=lr,
            betas=tuple(betas),
            shampoo_beta=shampoo_beta,
            eps=eps,
            weight_decay=weight_decay,
            precondition_frequency=precondition_frequency,
            max_precond_dim=max_precond_dim,
        )
        super().__init__(params, defaults)


OPTIMIZERS = {"adamw": AdamW, "muon": Muon, "soap": SOAP}


# ---------------------------------------------------------------------------------------------
# grouping and building


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """The trainable parameters in groups "embeddings", "no_decay", "matrix" (empty ones left out),
    each {"name", "params", "weight_decay"}, from the model's parameter roles (module docstring); a
    module without `param_roles` gets the roles `scratchlm.model.roles` infers. Tied weights appear
    once, in the order of `named_parameters` (so optimizer states saved before keep their slots).
    Asserts that every trainable parameter is in exactly one group."""
    roles = model.param_roles() if hasattr(model, "param_roles") else infer_param_roles(model)
    params = dict(model.named_parameters())  # the same order and the same dedup of tied weights as roles
    members: dict[str, list[Tensor]] = {"embeddings": [], "no_decay": [], MATRIX: []}
    for name, role in roles.items():
        if params[name].requires_grad:
            members[ROLE_GROUPS[role]].append(params[name])
    decay = {"embeddings": cfg.weight_decay if cfg.decay_embeddings else 0.0, "no_decay": 0.0, MATRIX: cfg.weight_decay}
    groups = [{"name": k, "params": v, "weight_decay": decay[k]} for k, v in members.items() if v]

    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    grouped = [id(p) for g in groups for p in g["params"]]
    assert len(grouped) == len(set(grouped)) and set(grouped) == trainable, "param groups must partition the params"
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """One optimizer over `param_groups(model, cfg)`: AdamW for all (adamw), or Muon (lr =
    `muon_lr`) / SOAP (lr = `lr`) for the matrix group and AdamW for the others. Each group's
    starting lr is also stored as "initial_lr", which `schedules.Schedule` scales."""
    if cfg.name not in OPTIMIZERS:
        raise ScratchLMError(f"unknown optimizer {cfg.name!r}: expected one of {', '.join(OPTIMIZERS)}")
    groups = param_groups(model, cfg)
    for g in groups:
        is_matrix = g["name"] == MATRIX
        g["algorithm"] = cfg.name if is_matrix else "adamw"
        g["lr"] = g["initial_lr"] = cfg.muon_lr if is_matrix and cfg.name == "muon" else cfg.lr
    betas = tuple(cfg.betas)
    if cfg.name == "adamw":
        return AdamW(groups, lr=cfg.lr, betas=betas, eps=cfg.eps)
    if cfg.name == "muon":
        return Muon(groups, momentum=cfg.muon_momentum, ns_steps=cfg.muon_ns_steps, betas=betas, eps=cfg.eps)
    return SOAP(groups, betas=betas, eps=cfg.eps, precondition_frequency=cfg.soap_precondition_frequency)


# ---------------------------------------------------------------------------------------------
# clipping


@torch.no_grad()
def clip_grad_norm(parameters: Iterable[Tensor] | Tensor, max_norm: float) -> Tensor:
    """Scale all gradients by min(1, max_norm / (total + 1e-6)), total = the L2 norm of all of them
    as one vector; returns total (before clipping). Same results as torch.nn.utils.clip_grad_norm_.

    Like torch (error_if_nonfinite=False) the scaling is always applied, without a host sync: a
    non-finite total is returned as is and leaves non-finite gradients (inf total: finite entries
    become 0, inf ones NaN; NaN total: all NaN). The caller should check the returned norm (or the
    loss) and skip the step. No gradients: returns tensor(0.).
    """
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    from torch.distributed.tensor import DTensor

    if any(isinstance(g, DTensor) for g in grads):  # sharded (FSDP2 / tensor parallel): torch's DTensor-aware path
        total = torch.nn.utils.get_total_norm(grads, foreach=False)
        total = total.full_tensor() if isinstance(total, DTensor) else total  # the norm over all shards
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total, foreach=False)
        return total
    device = grads[0].device
    norms = [torch.linalg.vector_norm(g).to(device) for g in grads]  # per-tensor norms, as torch
    total = torch.linalg.vector_norm(torch.stack(norms))
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef.to(g.device))
    return total
