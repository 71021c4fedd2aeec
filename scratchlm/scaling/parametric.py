"""Approach 3: the parametric loss L(N, D) = E + A / N^alpha + B / D^beta.

Fitted as Hoffmann et al. (2022, Chinchilla, appendix D.2) and the replication of Besiroglu et al.
(2024, "Chinchilla Scaling: A replication attempt"): minimise the Huber loss (delta = 1e-3) of the
residuals in log space,

    log L_hat_i = LSE(a - alpha log N_i, b - beta log D_i, e),   A = e^a, B = e^b, E = e^e
    objective   = sum_i w_i Huber_delta(log L_hat_i - log L_i)

(the log-sum-exp form keeps A, B, E positive and the problem well scaled), with L-BFGS from every
point of the paper's grid: alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1}, a, b in
{0, 5, ..., 25} (4,500 starts). The gradient is analytic and all starts run at once
(`lbfgs.batched_lbfgs`); the best few distinct end points are then polished with SciPy's L-BFGS-B
(analytic gradient, tight tolerances) and the lowest objective wins (`fit_parametric`). The
objective is a sum over runs, as Hoffmann et al. write it (not a mean); the LSE is evaluated as the
log of the plain sum of the three terms (see `_terms`).

Parameter vectors are ordered THETA = (a, b, e, alpha, beta), as in the paper.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from scratchlm.errors import ScratchLMError
from scratchlm.scaling.lbfgs import batched_lbfgs

THETA = ("a", "b", "e", "alpha", "beta")
HUBER_DELTA = 1e-3  # Hoffmann et al. 2022, appendix D.2


def paper_grid() -> np.ndarray:
    """The 4,500 initialisations of Hoffmann et al. / Besiroglu et al., rows (a, b, e, alpha, beta)."""
    alphas = betas = np.arange(0.0, 2.01, 0.5)
    es = np.arange(-1.0, 1.01, 0.5)
    abs_ = np.arange(0.0, 25.01, 5.0)
    return np.array([(a, b, e, al, be) for al, be, e, a, b in itertools.product(alphas, betas, es, abs_, abs_)])


def huber(r: np.ndarray, delta: float = HUBER_DELTA) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss and its derivative: r^2 / 2 inside |r| <= delta, delta (|r| - delta / 2) outside.
    With c = clip(r, -delta, delta) (the derivative), the value is c r - c^2 / 2 in both regions."""
    c = np.clip(r, -delta, delta)
    return c * (r - 0.5 * c), c


def log_predict(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray) -> np.ndarray:
    """log L_hat (S, n) for parameter rows theta (S, 5) at points log N, log D (n,)."""
    return np.log(_terms(theta, log_n, log_d)[2])


def _terms(theta, log_n, log_d):
    """A / N^alpha, B / D^beta and L_hat = their sum + E, each (S, n). The log-sum-exp is taken as
    the log of the plain sum: at any sensible point the terms are far from overflow (e^25 at the
    grid's largest a), and a trial step that overflows gets an infinite objective, which the line
    search rejects. The softmax weights of the LSE are p_A = A / N^alpha / L_hat, p_B likewise."""
    a, b, e, alpha, beta = (theta[:, i, None] for i in range(5))  # each (S, 1)
    x_a = np.exp(a - alpha * log_n)  # (S, n)
    x_b = np.exp(b - beta * log_d)  # (S, n)
    return x_a, x_b, x_a + x_b + np.exp(e)


BLOCK_ELEMENTS = 16384  # rows x points per block: keeps the (rows, n) temporaries in cache (~3x faster)


def objective(
    theta: np.ndarray,
    log_n: np.ndarray,
    log_d: np.ndarray,
    log_loss: np.ndarray,
    weights: np.ndarray | None = None,
    delta: float = HUBER_DELTA,
) -> tuple[np.ndarray, np.ndarray]:
    """Huber objective and its analytic gradient for parameter rows theta (S, 5).

    weights: None, (n,) or (S, n) per-point multiplicities (a bootstrap resample is a weight
    vector of counts). Returns f (S,) and grad (S, 5). With r_i the residual, h_i = Huber'(r_i) and
    p_A, p_B, p_E the log-sum-exp's softmax weights (they sum to 1):
    d r / d a = p_A, d r / d b = p_B, d r / d e = p_E, d r / d alpha = -p_A log N, d r / d beta = -p_B log D.
    """
    theta = np.atleast_2d(theta)
    S = theta.shape[0]
    f, grad = np.empty(S, dtype=theta.dtype), np.empty((S, 5), dtype=theta.dtype)
    ones_n = np.stack([np.ones_like(log_n), log_n], axis=1)  # (n, 2): sum and log N-weighted sum in one matmul
    ones_d = np.stack([np.ones_like(log_d), log_d], axis=1)
    per_row = weights is not None and np.ndim(weights) == 2
    block = max(1, BLOCK_ELEMENTS // len(log_n))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # a far-out trial point: f = inf, rejected
        for lo in range(0, S, block):
            rows = slice(lo, lo + block)
            x_a, x_b, total = _terms(theta[rows], log_n, log_d)
            value, dh = huber(np.log(total) - log_loss, delta)  # (s, n)
            if weights is not None:
                w = weights[rows] if per_row else weights
                value, dh = value * w, dh * w
            f[rows] = value.sum(1)
            dh_inv = dh / total
            s_a, s_b = (dh_inv * x_a) @ ones_n, (dh_inv * x_b) @ ones_d  # (s, 2): [sum h p, sum h p log x]
            grad[rows, 0], grad[rows, 3] = s_a[:, 0], -s_a[:, 1]
            grad[rows, 1], grad[rows, 4] = s_b[:, 0], -s_b[:, 1]
            grad[rows, 2] = dh.sum(1) - s_a[:, 0] - s_b[:, 0]  # p_E = 1 - p_A - p_B
    return f, grad


@dataclass
class ParametricFit:
    theta: np.ndarray  # (5,) a, b, e, alpha, beta
    objective: float
    starts: int
    candidates: np.ndarray  # (K, 5) the polished distinct end points, best first (the bootstrap restarts there)
    candidate_objectives: np.ndarray  # (K,)

    @property
    def params(self) -> dict[str, float]:
        a, b, e, alpha, beta = self.theta
        return {"E": float(np.exp(e)), "A": float(np.exp(a)), "B": float(np.exp(b)), "alpha": alpha, "beta": beta}


def _polish(theta0: np.ndarray, log_n, log_d, log_loss, weights) -> tuple[np.ndarray, float]:
    """SciPy L-BFGS-B with the analytic gradient from one start, tolerances near machine precision."""
    from scipy.optimize import minimize

    def fun(t):
        f, g = objective(t[None], log_n, log_d, log_loss, weights)
        return float(f[0]), g[0]

    res = minimize(fun, theta0, jac=True, method="L-BFGS-B", options={"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-12})
    return res.x, float(res.fun)


def fit_parametric(
    log_n: np.ndarray,
    log_d: np.ndarray,
    loss: np.ndarray,
    starts: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    explore_iter: int = 60,
    keep: int = 100,
    polish: int = 3,
) -> ParametricFit:
    """Fit L(N, D) by Huber regression on log-loss from every start (default: the paper's grid).

    Three stages: `explore_iter` iterations of batched L-BFGS from every start (enough to tell the
    basins apart); the `keep` lowest rows continue to convergence (up to 500 iterations, cheap for
    100 rows); the `polish` best distinct end points are refined with SciPy L-BFGS-B and the lowest
    objective wins.
    """
    starts = paper_grid() if starts is None else np.atleast_2d(np.asarray(starts, dtype=np.float64))
    log_loss = np.log(loss)

    def fun(x, rows):
        return objective(x, log_n, log_d, log_loss, weights)

    # Exploration in float32 (~1.7x faster; its ~1e-7 resolution is plenty to rank basins), then the
    # kept rows converge in float64.
    data32 = [a if a is None else np.asarray(a, dtype=np.float32) for a in (log_n, log_d, log_loss, weights)]

    def fun32(x, rows):
        return objective(x, *data32)

    x, f, _ = batched_lbfgs(fun32, starts.astype(np.float32), max_iter=explore_iter)
    best = np.argsort(f)[:keep]
    x, f, _ = batched_lbfgs(fun, x[best].astype(np.float64), max_iter=500)
    picked: list[np.ndarray] = []
    for i in np.argsort(f):  # distinct end points: many starts land in the same basin
        if not np.isfinite(f[i]) or len(picked) >= polish:
            break
        if all(np.abs(x[i] - p).max() > 0.05 for p in picked):  # 0.05 in log A, log B, e or an exponent
            picked.append(x[i])
    if not picked:
        raise ScratchLMError("Approach 3: the objective is not finite at any start (check the runs table)")
    polished = sorted((_polish(p, log_n, log_d, log_loss, weights) for p in picked), key=lambda xf: xf[1])
    cand, cand_f = np.array([p[0] for p in polished]), np.array([p[1] for p in polished])
    return ParametricFit(cand[0].copy(), float(cand_f[0]), len(starts), cand, cand_f)


def predict_loss(params: dict[str, float], n: np.ndarray, d: np.ndarray) -> np.ndarray:
    """L(N, D) = E + A / N^alpha + B / D^beta."""
    return params["E"] + params["A"] / np.power(n, params["alpha"]) + params["B"] / np.power(d, params["beta"])


def allocation(params: dict[str, float]) -> dict[str, float]:
    """Compute-optimal allocation implied by L(N, D) under C = 6 N D (Hoffmann et al. 2022, eq. 4):

        N_opt(C) = G (C / 6)^a,  D_opt(C) = G^-1 (C / 6)^b,
        a = beta / (alpha + beta),  b = alpha / (alpha + beta),  G = (alpha A / (beta B))^(1 / (alpha + beta)).
    Also as N_opt = k_N C^a, D_opt = k_D C^b (the form every approach reports)."""
    alpha, beta, A, B = params["alpha"], params["beta"], params["A"], params["B"]
    a, b = beta / (alpha + beta), alpha / (alpha + beta)
    G = (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))
    return {"a": a, "b": b, "G": G, "k_N": G * 6.0**-a, "k_D": 6.0**-b / G}
